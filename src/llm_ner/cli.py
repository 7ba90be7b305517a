"""`llm-ner` command line: thin — parses arguments and calls the modules. Errors in user input print one line
(`error: file:line: ...`) and exit with status 2, never a stack trace."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Turn a decoder LLM into a named-entity recogniser: train, evaluate, predict.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

Opt = typer.Option


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("llm_ner").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _user_errors():
    from .backbones import BackboneError
    from .config import ConfigError
    from .data import DataError
    from .model import ModelLoadError
    from .train import TrainError

    return (DataError, ConfigError, ModelLoadError, BackboneError, TrainError, FileNotFoundError)


def bundled_config(name: str) -> Path | None:
    ref = resources.files("llm_ner") / "configs" / f"{name}.yaml"
    return Path(str(ref)) if ref.is_file() else None


def _resolve_config(config: str | None) -> str | None:
    if config and not Path(config).exists() and bundled_config(config):
        return str(bundled_config(config))
    return config


@app.command()
def train(
    config: Annotated[str | None, Opt(help="YAML config file, or a bundled name (quickstart, conll2003)")] = None,
    model: Annotated[str | None, Opt(help="backbone: alias, hub id, dir or .gguf (model.backbone)")] = None,
    train_data: Annotated[str | None, Opt("--train", help="training data (file or conll2003:train)")] = None,
    dev: Annotated[str | None, Opt(help="dev data for model selection")] = None,
    test: Annotated[str | None, Opt(help="test data, evaluated at the end")] = None,
    output: Annotated[str | None, Opt(help="run directory")] = None,
    mode: Annotated[str | None, Opt(help="lora | full | frozen")] = None,
    max_steps: Annotated[int | None, Opt(help="stop after N optimizer steps (overrides epochs)")] = None,
    epochs: Annotated[float | None, Opt(help="training epochs")] = None,
    lr: Annotated[float | None, Opt(help="backbone learning rate")] = None,
    seed: Annotated[int | None, Opt(help="random seed")] = None,
    max_train_sentences: Annotated[int | None, Opt(help="use the first N training sentences")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="override a key: --set loss.label_smoothing=0.1")] = None,
    resume: Annotated[bool, Opt(help="continue from the last checkpoint in OUTPUT/checkpoints")] = False,
    progress: Annotated[bool, Opt(help="progress bars")] = True,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """Train a model from a config (+ overrides), keep the best on dev, evaluate on test."""
    _setup_logging(verbose)
    from .config import load_config, parse_set

    try:
        flags = {
            "model.backbone": model, "data.train": train_data, "data.dev": dev, "data.test": test, "output": output,
            "training.mode": mode, "training.max_steps": max_steps, "training.epochs": epochs,
            "training.learning_rate": lr, "training.seed": seed, "data.max_train_sentences": max_train_sentences,
        }
        overrides = {**{k: v for k, v in flags.items() if v is not None}, **parse_set(set_)}
        cfg = load_config(_resolve_config(config), overrides)
        from .train import train as run_train

        run_train(cfg, resume=resume, progress=progress)
    except _user_errors() as e:
        _fail(str(e))


baseline_app = typer.Typer(help="Baselines on the same split and scorer as the LLM model.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("encoder")
def baseline_encoder(
    config: Annotated[str | None, Opt(help="run config whose data section to reuse (e.g. quickstart)")] = "quickstart",
    model: Annotated[str | None, Opt(help="encoder: minilm-l6 (offline) or a hub id such as bert-base-cased")] = None,
    output: Annotated[str, Opt(help="run directory")] = "runs/encoder",
    epochs: Annotated[float | None, Opt()] = None,
    max_steps: Annotated[int | None, Opt()] = None,
    lr: Annotated[float | None, Opt()] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="override a key: --set data.max_train_sentences=2000")] = None,
    resume: Annotated[bool, Opt()] = False,
    progress: Annotated[bool, Opt()] = True,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """Fine-tune a BERT-style encoder token classifier (dropout + linear, cross-entropy) on the same data."""
    _setup_logging(verbose)
    from .baselines.encoder import encoder_config
    from .config import parse_set

    try:
        flags = {"model.backbone": model, "training.epochs": epochs, "training.max_steps": max_steps,
                 "training.learning_rate": lr, "output": output}
        cfg = encoder_config(_resolve_config(config),
                             {**{k: v for k, v in flags.items() if v is not None}, **parse_set(set_)})
        from .train import train as run_train

        run_train(cfg, resume=resume, progress=progress)
    except _user_errors() as e:
        _fail(str(e))


@baseline_app.command("prompt")
def baseline_prompt(
    config: Annotated[str | None, Opt(help="run config whose data section to use")] = "quickstart",
    provider: Annotated[str, Opt(help="openai | anthropic")] = "openai",
    model: Annotated[str | None, Opt(help="model id (default: the local server's model)")] = None,
    base_url: Annotated[str | None, Opt(help="OpenAI-compatible endpoint; none + no key = start a local one")] = None,
    k_shot: Annotated[int, Opt(help="examples from the training data in the prompt")] = 3,
    max_sentences: Annotated[int | None, Opt(help="first N test sentences (0 = all)")] = 100,
    output: Annotated[str, Opt(help="run directory")] = "runs/prompt",
    set_: Annotated[list[str] | None, Opt("--set", help="prompt settings: --set price_in_per_1m=0.15")] = None,
    progress: Annotated[bool, Opt()] = True,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """Prompt a chat LLM for the entities of each test sentence (JSON), align, score with the same scorer."""
    _setup_logging(verbose)
    from pydantic import ValidationError

    from .baselines import prompt as pb
    from .config import load_config, parse_set

    try:
        run_cfg = load_config(_resolve_config(config))
        opts = {"provider": provider, "base_url": base_url, "k_shot": k_shot, **parse_set(set_)}
        if model:
            opts["model"] = model
        pcfg = pb.PromptConfig(**opts)
        pb.run(run_cfg, pcfg, output, max_sentences or None, progress)
    except ValidationError as e:
        _fail(f"prompt settings: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")
    except (*_user_errors(), ValueError, RuntimeError) as e:
        _fail(str(e))


@app.command()
def quickstart(
    output: Annotated[str, Opt(help="run directory")] = "runs/quickstart",
    resume: Annotated[bool, Opt(help="continue an interrupted quickstart")] = False,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """Train -> evaluate on the offline default model (SmolLM2-135M) and bundled CoNLL-2003 subset (~10 min on CPU)."""
    _setup_logging(verbose)
    from .config import load_config

    try:
        cfg = load_config(bundled_config("quickstart"), {"output": output})
        typer.echo(f"llm-ner quickstart: {cfg.model.backbone}, {cfg.training.mode} fine-tuning on the first "
                   f"{cfg.data.max_train_sentences} sentences of {cfg.data.train}, test on {cfg.data.test}")
        from .train import train as run_train

        run_train(cfg, resume=resume, progress=True)
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def evaluate(
    model: Annotated[str, Opt(help="saved model dir")],
    data: Annotated[str, Opt(help="labelled data: file or bundled name (conll2003:test)")],
    output: Annotated[str | None, Opt(help="write metrics JSON (and predictions .conll beside it)")] = None,
    limit: Annotated[int | None, Opt(help="first N sentences only")] = None,
    batch_size: Annotated[int, Opt()] = 32,
    trust_remote_code: Annotated[bool, Opt(help="allow the backbone's own Python code to run")] = False,
    int8: Annotated[bool, Opt("--int8", help="int8 dynamic quantisation (CPU); see benchmarks/results.md")] = False,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """Score a saved model on labelled data: token accuracy, entity P/R/F1 (micro, macro, per type)."""
    _setup_logging(verbose)
    from .data import load_corpus, write_conll
    from .evaluate import compute_metrics, format_table
    from .predict import NERModel

    try:
        ner = NERModel.from_pretrained(model, batch_size=batch_size, trust_remote_code=trust_remote_code,
                                       quantize="int8" if int8 else None)
        sents = load_corpus(data, limit=limit)
        types = set(ner.labels.types)
        unknown = {t[2:] for s in sents for t in s.tags if t != "O" and t[2:] not in types}
        if unknown:
            typer.echo(f"warning: types {sorted(unknown)} in {data} are not in the model's labels", err=True)
        pred = ner.predict_sentences(sents, progress=True)
        m = compute_metrics([s.tags for s in sents], pred)
        typer.echo(format_table(m, f"{data}:"))
        if output:
            from .data import atomic_write_text

            atomic_write_text(Path(output), json.dumps(m, indent=2) + "\n")
            write_conll(Path(output).with_suffix(".conll"), sents, pred)
            typer.echo(f"wrote {output}")
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def score(
    gold: Annotated[str, typer.Argument(help="gold CoNLL file (tag in the last column)")],
    pred: Annotated[str, typer.Argument(help="predicted CoNLL file, same tokens")],
    output: Annotated[str | None, Opt(help="write metrics JSON here")] = None,
    as_json: Annotated[bool, Opt("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Score two aligned CoNLL files like conlleval (IOB1 or IOB2)."""
    from .evaluate import format_table, score_files

    try:
        m = score_files(gold, pred)
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(json.dumps(m, indent=2) if as_json else format_table(m))
    if output:
        Path(output).write_text(json.dumps(m, indent=2) + "\n")


@app.command()
def predict(
    model: Annotated[str, Opt(help="saved model dir")],
    text: Annotated[list[str] | None, Opt(help="text to tag (repeatable)")] = None,
    input: Annotated[str | None, Opt(help=".txt (one text per line), .jsonl ({'text': ...}) or CoNLL file")] = None,
    output: Annotated[str | None, Opt(help="output file (.jsonl of spans, or .conll for CoNLL input)")] = None,
    batch_size: Annotated[int, Opt()] = 16,
    trust_remote_code: Annotated[bool, Opt(help="allow the backbone's own Python code to run")] = False,
    int8: Annotated[bool, Opt("--int8", help="int8 dynamic quantisation (CPU); see benchmarks/results.md")] = False,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """Entity spans (character offsets, label, text, confidence) for raw text; CoNLL in -> CoNLL out."""
    _setup_logging(verbose)
    from .data import DataError, read_conll, write_conll
    from .predict import NERModel

    if not text and not input:
        _fail("give --text or --input")
    try:
        ner = NERModel.from_pretrained(model, batch_size=batch_size, trust_remote_code=trust_remote_code,
                                       quantize="int8" if int8 else None)
        if text:
            for t, ents in zip(text, ner.predict(list(text)), strict=True):
                typer.echo(json.dumps({"text": t, "entities": [e.to_dict() for e in ents]}, ensure_ascii=False))
        if input:
            path = Path(input)
            if path.suffix in (".txt", ".jsonl"):
                lines = path.read_text(encoding="utf-8").splitlines()
                if path.suffix == ".jsonl":
                    texts = []
                    for i, line in enumerate(lines, 1):
                        if line.strip():
                            try:
                                texts.append(json.loads(line)["text"])
                            except (json.JSONDecodeError, KeyError, TypeError):
                                raise DataError(f"{path}:{i}: expected a JSON object with a 'text' field") from None
                else:
                    texts = lines
                res = ner.predict(texts, progress=True)
                out = "".join(json.dumps({"text": t, "entities": [e.to_dict() for e in ents]}, ensure_ascii=False)
                              + "\n" for t, ents in zip(texts, res, strict=True))
                if output:
                    Path(output).write_text(out, encoding="utf-8")
                else:
                    sys.stdout.write(out)
            else:
                sents = read_conll(path)
                pred = ner.predict_sentences(sents, progress=True)
                write_conll(output or path.with_suffix(".pred.conll"), sents, pred)
            if output:
                typer.echo(f"wrote {output}", err=True)
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def analyze(
    predictions: Annotated[str, typer.Argument(help="'token gold pred' file, e.g. RUN/test_predictions.conll")],
    train_data: Annotated[str | None, Opt("--train", help="training data, for the seen/unseen split")] = None,
    output: Annotated[str | None, Opt(help="write the analysis JSON here")] = None,
    worst: Annotated[int, Opt(help="how many worst sentences to list")] = 10,
) -> None:
    """Error taxonomy, type confusion, confused surface forms, worst sentences, F1 by length and seen/unseen."""
    from .analyze import analyze as run_analysis
    from .analyze import read_predictions
    from .data import load_corpus

    try:
        sents, pred = read_predictions(predictions)
        a = run_analysis(sents, pred, load_corpus(train_data) if train_data else None, worst)
    except _user_errors() as e:
        _fail(str(e))
    if output:
        Path(output).write_text(json.dumps(a, indent=2) + "\n")
    typer.echo("errors by category: " + json.dumps(a["taxonomy_total"]))
    for t, c in a["taxonomy"].items():
        typer.echo(f"  {t:<10} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    typer.echo("most confused: " + "; ".join(f"{f['text']!r} {f['gold']}->{f['pred']} x{f['count']}"
                                            for f in a["confused_forms"][:8]))
    if a["seen_unseen"]:
        typer.echo("seen/unseen F1: " + ", ".join(f"{k} {v['f1']}" for k, v in a["seen_unseen"].items()))


@app.command()
def compare(
    config: Annotated[str, Opt(help="run config shared by all systems (data, split)")] = "quickstart",
    output: Annotated[str, Opt(help="directory for the runs and comparison.{md,json}")] = "runs/compare",
    prompt_sentences: Annotated[int, Opt(help="test sentences for the prompted baseline (a request each)")] = 100,
    systems: Annotated[str, Opt(help="comma-separated subset of llm,encoder,prompt")] = "llm,encoder,prompt",
    llm_run: Annotated[str | None, Opt(help="reuse this finished LLM run dir")] = None,
    encoder_run: Annotated[str | None, Opt(help="reuse this finished encoder run dir")] = None,
    prompt_run: Annotated[str | None, Opt(help="reuse this finished prompt run dir")] = None,
    rerun: Annotated[bool, Opt(help="re-run systems even if their run dir is finished")] = False,
    progress: Annotated[bool, Opt()] = True,
) -> None:
    """Train/evaluate (or reuse) the LLM model, the encoder and the prompted baseline; print one table."""
    from .compare import compare as run_compare

    try:
        run_compare(_resolve_config(config), output, prompt_sentences,
                    [s.strip() for s in systems.split(",") if s.strip()],
                    {"llm": llm_run, "encoder": encoder_run, "prompt": prompt_run}, rerun, progress)
    except (*_user_errors(), subprocess.CalledProcessError) as e:
        _fail(str(e))


@app.command()
def report(
    runs: Annotated[list[str], typer.Argument(help="run dirs (LLM first), or a compare dir")],
    output: Annotated[str, Opt(help="report directory (report.md, report.html, plots)")] = "runs/report",
    ablation: Annotated[str | None, Opt(help="ablation results.json (scripts/ablation.py)")] = None,
) -> None:
    """Markdown + self-contained HTML report with plots from finished runs."""
    from .report import write_report

    try:
        md, html = write_report(runs, output, ablation)
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(f"wrote {md} and {html}")


@app.command()
def systems(
    keep: Annotated[str, Opt(help="types system B keeps, comma-separated (e.g. PER,ORG,LOC,DIS,ANIM)")],
    config: Annotated[str, Opt(help="run config (data, model, training) shared by A and B")] = "quickstart",
    output: Annotated[str, Opt(help="directory for system_a/, system_b/ and systems_ab.{md,json}")] = "runs/ab",
    set_: Annotated[list[str] | None, Opt("--set", help="override a config key for both systems")] = None,
    rerun: Annotated[bool, Opt(help="retrain even if a finished run exists")] = False,
    progress: Annotated[bool, Opt()] = True,
) -> None:
    """System A (all entity types) vs system B (kept subset, others -> O) on the same test set and scorer."""
    from .config import load_config, parse_set
    from .systems import run_ab

    try:
        cfg = load_config(_resolve_config(config), parse_set(set_))
        run_ab(cfg, [k.strip() for k in keep.split(",") if k.strip()], output, rerun, progress)
    except (*_user_errors(), ValueError) as e:
        _fail(str(e))


@app.command()
def validate(
    data: Annotated[str, typer.Argument(help="span-annotated JSONL ({'text', 'entities'}) or any corpus")],
    schema: Annotated[str | None, Opt(help="label schema (JSON/YAML): every label must be one of its types")] = None,
    show: Annotated[int, Opt(help="print how the first N records' spans were tokenised")] = 5,
) -> None:
    """Check annotations (offsets, overlaps, spans that cut a word, unknown labels) and show their tokenisation."""
    from .data import DataError, load_corpus, read_jsonl_spans
    from .data import stats as corpus_stats
    from .labels import LabelSet

    try:
        report: list = []
        first = ""
        if data.endswith(".jsonl") and Path(data).is_file():
            with open(data, encoding="utf-8") as f:
                first = f.readline()
        sents = read_jsonl_spans(data, report) if '"text"' in first else load_corpus(data)
        if schema:
            allowed = set(LabelSet.load(schema).types)
            for s in sents:
                bad = {t[2:] for t in s.tags if t != "O" and t[2:] not in allowed}
                if bad:
                    raise DataError(f"{s.origin}: labels {sorted(bad)} are not in the schema {schema}")
    except _user_errors() as e:
        _fail(str(e))
    for rec in report[:show]:
        typer.echo(rec["record"] + ": " + "; ".join(f"{sp['label']} {sp['text']!r} -> {sp['tokens']}"
                                                    for sp in rec["spans"]))
    typer.echo("ok: " + json.dumps(corpus_stats(sents)))


@app.command()
def serve(
    model: Annotated[str, Opt(help="saved model dir")],
    host: Annotated[str, Opt()] = "127.0.0.1",
    port: Annotated[int, Opt()] = 8000,
    max_text_chars: Annotated[int, Opt(help="longer texts get 413")] = 100_000,
    max_batch: Annotated[int, Opt(help="more texts per request get 413")] = 64,
    batch_wait_ms: Annotated[float, Opt(help="micro-batching window")] = 5.0,
    trust_remote_code: Annotated[bool, Opt(help="allow the backbone's own Python code to run")] = False,
    int8: Annotated[bool, Opt("--int8", help="int8 dynamic quantisation (CPU); see benchmarks/results.md")] = False,
    verbose: Annotated[bool, Opt("--verbose", "-v")] = False,
) -> None:
    """HTTP service: POST /v1/entities, GET /v1/labels, GET /health, OpenAPI docs at /docs."""
    _setup_logging(verbose)
    from .model import LLMForTokenClassification  # noqa: F401  (fail fast on a broken install)
    from .serve import ServeConfig, run

    if not (Path(model) / "llm_ner_config.json").is_file():
        _fail(f"{model}: not an llm-ner model dir (llm_ner_config.json missing)")
    run(ServeConfig(model, max_text_chars, max_batch, batch_wait_ms, trust_remote_code=trust_remote_code,
                    quantize="int8" if int8 else None), host, port)


@app.command("batch-predict")
def batch_predict(
    model: Annotated[str, Opt(help="saved model dir")],
    input: Annotated[str, Opt(help=".jsonl ({'text': ...} per line, other fields kept) or .txt (a text per line)")],
    output: Annotated[str, Opt(help="output dir (JSON lines, one file per block)")],
    address: Annotated[str | None, Opt(help="Ray cluster address (ray://host:10001); default: local")] = None,
    concurrency: Annotated[int, Opt(help="model replicas (Ray actors)")] = 1,
    batch_size: Annotated[int, Opt()] = 64,
    threads: Annotated[int | None, Opt(help="torch threads per replica")] = None,
    int8: Annotated[bool, Opt("--int8", help="int8 dynamic quantisation (CPU)")] = False,
) -> None:
    """Predict a large corpus with Ray Data (pip install -e ".[scale]"): locally, or on a cluster with --address."""
    from .batch import ray_predict

    if not Path(input).exists():
        _fail(f"{input}: no such file")
    n = ray_predict(model, input, output, address, concurrency, batch_size, threads, int8)
    typer.echo(f"{n} texts -> {output}")


@app.command()
def export(
    model: Annotated[str, Opt(help="saved model dir")],
    output: Annotated[str, Opt(help="new model dir")],
    merge_lora: Annotated[bool, Opt("--merge-lora", help="fold LoRA adapters into the backbone weights")] = False,
) -> None:
    """Write a standalone copy of a model dir (safetensors); --merge-lora folds the adapters in (no peft at load)."""
    from .model import LLMForTokenClassification
    from .predict import load_tokenizer

    try:
        m = LLMForTokenClassification.from_pretrained(model)
        m.save_pretrained(output, tokenizer=load_tokenizer(model), merge_lora=merge_lora)
    except _user_errors() as e:
        _fail(str(e))
    saved = json.loads((Path(output) / "llm_ner_config.json").read_text())["backbone_saved"]
    typer.echo(f"wrote {output} (backbone: {saved})")


@app.command()
def stats(
    data: Annotated[str, typer.Argument(help="file or bundled corpus name")],
    scheme: Annotated[str, Opt()] = "auto",
    strict: Annotated[bool, Opt(help="strict IOB2 checking")] = False,
) -> None:
    """Read a corpus (validating it) and print its counts."""
    from .data import load_corpus
    from .data import stats as corpus_stats

    try:
        typer.echo(json.dumps(corpus_stats(load_corpus(data, scheme=scheme, strict=strict)), indent=2))
    except _user_errors() as e:
        _fail(str(e))


if __name__ == "__main__":
    app()
