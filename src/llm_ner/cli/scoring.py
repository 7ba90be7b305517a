"""Scoring commands: evaluate, calibrate, score, analyze, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..fsutil import refuse_overwrite
from .options import (
    BATCH_SIZE,
    BatchSize,
    ModelDir,
    Opt,
    Precision,
    Runtime,
    TrustRemoteCode,
    Verbose,
    command,
    load_model,
    setup_logging,
)


@command()
def evaluate(
    model: ModelDir,
    data: Annotated[str, Opt(help="labelled data: file or bundled name (conll2003:test)")],
    output: Annotated[str | None, Opt(help="write metrics JSON (and predictions .conll beside it); as "
                                           "RUN/NAME_metrics.json the report shows it with the run")] = None,
    limit: Annotated[int | None, Opt(help="first N sentences only")] = None,
    batch_size: BatchSize = BATCH_SIZE,
    trust_remote_code: TrustRemoteCode = False,
    precision: Precision = "auto",
    runtime: Runtime = "auto",
    verbose: Verbose = False,
) -> None:
    """Score a saved model on labelled data: token accuracy, entity P/R/F1 (micro, macro, per type)."""
    setup_logging(verbose)
    from ..data import load_corpus
    from ..evaluation.evaluate import evaluate_model, format_table

    preds = Path(output).with_suffix(".conll") if output else None
    refuse_overwrite({"--output": output, "its predictions": preds}, {"--data": data})
    sents = load_corpus(data, limit=limit)
    ner = load_model(model, batch_size, trust_remote_code, precision, runtime=runtime)
    m, _ = evaluate_model(ner, sents, True, output, preds, data)
    typer.echo(format_table(m, f"{data}:"))
    if output:
        typer.echo(f"wrote {output}", err=True)


@command()
def calibrate(
    model: ModelDir,
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
    setup_logging(verbose)
    from .. import rundir
    from ..data import load_corpus
    from ..evaluation.calibrate import calibrate as fit
    from ..evaluation.calibrate import check_request
    from ..inference.confidence import seen_forms

    trained = load_corpus(train_data) if train_data else rundir.trained_on(model)
    check_request(model, method, target_precision, trained is not None)
    res = fit(model, load_corpus(data, limit=limit), data, target_precision, method=method,
              seen=None if trained is None else seen_forms(trained))
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
    from ..evaluation.evaluate import format_table, score_files
    from ..fsutil import atomic_write_text

    refuse_overwrite({"--output": output}, {"gold": gold, "pred": pred})
    m = score_files(gold, pred)
    typer.echo(json.dumps(m, indent=2) if as_json else format_table(m))
    if output:
        atomic_write_text(Path(output), json.dumps(m, indent=2) + "\n")


@command()
def analyze(
    predictions: Annotated[str, typer.Argument(help="'token gold pred' file, e.g. RUN/test_predictions.conll")],
    train_data: Annotated[str | None, Opt("--train", help="training data, for the seen/unseen split")] = None,
    output: Annotated[str | None, Opt(help="write the analysis JSON here")] = None,
    worst: Annotated[int, Opt(help="how many worst sentences to list")] = 10,
) -> None:
    """Error taxonomy, type confusion, confused surface forms, worst sentences, F1 by length and seen/unseen."""
    from ..data import load_corpus, read_predictions
    from ..evaluation.analyze import analyze as run_analysis
    from ..evaluation.analyze import summary_lines
    from ..fsutil import atomic_write_text

    refuse_overwrite({"--output": output}, {"predictions": predictions, "--train": train_data})
    sents, pred = read_predictions(predictions)
    a = run_analysis(sents, pred, load_corpus(train_data) if train_data else None, worst)
    if output:
        atomic_write_text(Path(output), json.dumps(a, indent=2) + "\n")
    typer.echo("\n".join(summary_lines(a)))


@command()
def report(
    runs: Annotated[list[str], typer.Argument(help="run dirs (LLM first), or a compare dir")],
    output: Annotated[str, Opt(help="report directory (report.md, report.html, plots)")] = "runs/report",
    study: Annotated[str | None, Opt(help="decoder study results.json (scripts/study.py)")] = None,
    curve: Annotated[str | None, Opt(help="learning curve results.json (llm-ner learning-curve)")] = None,
    al: Annotated[str | None, Opt("--al", help="active-learning simulation results.json (scripts/simulate_al.py)")
                  ] = None,
    speed: Annotated[str | None, Opt(help="runtimes results .json (benchmarks/runtimes.py)")] = None,
) -> None:
    """Markdown + self-contained HTML report with plots from finished runs."""
    from ..report.build import write_report

    md, html = write_report(runs, output, study, curve, al, speed)
    typer.echo(f"wrote {md} and {html}")
