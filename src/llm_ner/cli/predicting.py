"""Prediction commands: predict, select (active learning), batch-predict, export."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UserError
from .options import (
    BATCH_SIZE,
    BatchSize,
    InputFormat,
    MinScore,
    ModelDir,
    Opt,
    Precision,
    Review,
    Runtime,
    TrustRemoteCode,
    Verbose,
    command,
    outputs_help,
    setup_logging,
)


@command()
def predict(
    model: ModelDir,
    text: Annotated[list[str] | None, Opt(help="text to tag (repeatable)")] = None,
    input: Annotated[str | None, Opt(help="texts (a text per line), JSON lines with 'text', or a CoNLL "
                                          "token-per-line file; the format is read from the content")] = None,
    format: InputFormat = "auto",
    output: Annotated[str | None, Opt(help="output file (JSON lines of spans; CoNLL for token input)")] = None,
    to: Annotated[str | None, Opt(help=outputs_help("conll for token input, else jsonl"))] = None,
    batch_size: BatchSize = BATCH_SIZE,
    trust_remote_code: TrustRemoteCode = False,
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    min_score: MinScore = None,
    review: Review = False,
    verbose: Verbose = False,
) -> None:
    """Entity spans (character offsets, label, text, confidence) for raw text; token input (CoNLL, a token per line)
    -> CoNLL, or any --to. --min-score, the calibrated thresholds and --review apply to every input and output."""
    setup_logging(verbose)
    from ..inference.files import predict_file

    body, written = predict_file(model, text, input, format, output, to, review, batch_size=batch_size,
                                 trust_remote_code=trust_remote_code, precision=precision, min_score=min_score,
                                 runtime=runtime)
    if written:
        typer.echo(f"wrote {written}", err=True)
    else:
        sys.stdout.write(body)


@command("select")
def select_texts(
    model: ModelDir,
    pool: Annotated[str, Opt(help="unlabelled texts, in any format `predict` reads (`llm-ner formats`)")],
    n: Annotated[int, Opt(help="how many texts to choose")],
    output: Annotated[str, Opt(help="where to write the chosen texts with their pre-annotations")],
    strategy: Annotated[str, Opt(help="diverse (the least sure, spread over k-means groups: the best in the "
                                      "simulation, docs/results.md) | uncertainty (least sure first: mean "
                                      "log-probability per word of the tags) | random")] = "diverse",
    to: Annotated[str, Opt(help=outputs_help("label-studio; each record with its confidence"))] = "label-studio",
    format: InputFormat = "auto",
    exclude: Annotated[list[str] | None, Opt(help="labelled data whose texts are never chosen (repeat); the model's "
                                                  "own training data is left out anyway")] = None,
    seed: Annotated[int, Opt(help="the random and diverse strategies' seed")] = 0,
    batch_size: BatchSize = BATCH_SIZE,
    trust_remote_code: TrustRemoteCode = False,
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    min_score: MinScore = None,
    review: Review = False,
    verbose: Verbose = False,
) -> None:
    """Choose the texts to label next from a pool (active learning) and write them pre-annotated for correction."""
    setup_logging(verbose)
    from ..active.select import select_file

    chosen, of = select_file(model, pool, n, output, strategy, to, format, exclude or (), seed, review,
                             batch_size=batch_size, trust_remote_code=trust_remote_code, precision=precision,
                             min_score=min_score, runtime=runtime)
    typer.echo(f"chose {chosen} of {of} texts ({strategy}) -> {output}", err=True)


@command("batch-predict")
def batch_predict(
    model: ModelDir,
    input: Annotated[str, Opt(help="texts: a text per line, or JSON lines with 'text' (other fields kept)")],
    output: Annotated[str, Opt(help="output dir (JSON lines, one file per block)")],
    address: Annotated[str | None, Opt(help="Ray cluster address (ray://host:10001); default: local")] = None,
    concurrency: Annotated[int, Opt(help="model replicas (Ray actors)")] = 1,
    batch_size: BatchSize = BATCH_SIZE,
    threads: Annotated[int | None, Opt(help="torch threads per replica")] = None,
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    min_score: MinScore = None,
    review: Review = False,
) -> None:
    """Predict a large corpus with Ray Data (pip install -e ".[scale]"): locally, or on a cluster with --address."""
    from ..inference.outputs import Thresholds
    from ..inference.precision import check_precision
    from ..modeling.persistence import check_runtime
    from ..serving.batch import ray_predict

    # fail here, not inside a Ray actor: the owners' own checks (NERModel runs them again in each actor)
    Thresholds(min_score)
    check_runtime(model, runtime)
    n = ray_predict(model, input, output, address, concurrency, batch_size, threads, check_precision(precision),
                    min_score, review, runtime)
    typer.echo(f"{n} texts -> {output}")


@command()
def export(
    model: ModelDir,
    output: Annotated[str | None, Opt(help="new model dir (onnx / openvino: default MODEL/FORMAT[-int8], where "
                                           "--runtime auto finds it)")] = None,
    format: Annotated[str, Opt(help="safetensors (a standalone PyTorch model dir) | onnx (ONNX Runtime) | openvino "
                                    "(OpenVINO IR): the network as a graph, loaded by --runtime auto")] = "safetensors",
    int8: Annotated[bool, Opt("--int8", help="onnx / openvino: 8-bit weights, kept only if the check holds")] = False,
    check: Annotated[str | None, Opt(help="onnx / openvino: labelled data the export is checked on against the "
                                          "PyTorch model (default: conll2003:dev for CoNLL's types)")] = None,
    check_sentences: Annotated[int, Opt(help="sentences of --check to use (0 = all)")] = 1000,
    merge_lora: Annotated[bool, Opt("--merge-lora", help="safetensors: fold LoRA adapters into the backbone "
                                                         "weights")] = False,
    verbose: Verbose = False,
) -> None:
    """Write a copy of a model dir to deploy: standalone safetensors (--merge-lora folds the adapters in: no peft at
    load), or the network as an ONNX / OpenVINO graph that `predict`, `serve` and `batch-predict` run with that
    runtime (windows, Viterbi and scores stay llm-ner's). A graph is checked against the PyTorch model on --check
    before it is written (what it kept of the spans and F1, and its speed against PyTorch's: the dir's
    llm_ner_export.json); else nothing is written. By default it goes inside the model dir, and from then on
    `--runtime auto` runs the model with the fastest export that held its check."""
    setup_logging(verbose)
    from ..modeling.persistence import read_model_config

    if format != "safetensors":
        from ..evaluation.export import default_output, export_model

        output = output or str(default_output(model, format, int8))
        rec = export_model(model, output, format, int8, check, check_sentences or None, progress=True)
        m = rec["check"][rec["precision"]]
        torch_wps = max(rec["torch_words_per_second"].values())
        typer.echo(f"wrote {output} ({format}, runs at {rec['precision']}: {m['span_agreement']} % of PyTorch's "
                   f"spans, F1 {m['f1']} vs {m['torch_fp32_f1']} on {rec['check_sentences']} check sentences; "
                   f"{m['words_per_second']:.0f} words/s against PyTorch's {torch_wps:.0f})")
        return
    if output is None:
        raise UserError("--output: a safetensors export is a new model dir; name it")
    from ..inference.engine import load_tokenizer
    from ..modeling.model import LLMForTokenClassification

    m = LLMForTokenClassification.from_pretrained(model)
    m.save_pretrained(output, tokenizer=load_tokenizer(model), merge_lora=merge_lora)
    typer.echo(f"wrote {output} (backbone: {read_model_config(output).backbone_saved})")
