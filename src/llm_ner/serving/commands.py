"""The CLI contract of the retraining loop, written down once: the loop runs `llm-ner train` and `llm-ner evaluate` as
processes of their own (a job can be time-limited, killed and its memory returned), so their flags are an API of the
service that no import shows. Each argument list is built here from keyword arguments, one flag each
(`init="..."` -> `--init ...`, `set_=[...]` -> one `--set` a value, True -> the bare flag); tests parse every list
with the CLI's own option definitions (tests/test_training_queue.py), so a renamed flag fails there, not in a
user's retraining."""

from __future__ import annotations

import sys
from collections.abc import Iterable

CLI = (sys.executable, "-m", "llm_ner.cli")


def cli_args(command: str, **options) -> list[str]:
    """`llm-ner COMMAND --option value ...` as an argument list; None leaves an option out."""
    args = [*CLI, command]
    for name, value in options.items():
        flag = "--" + name.rstrip("_").replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, Iterable) and not isinstance(value, str):
            args += [a for v in value for a in (flag, str(v))]
        else:
            args += [flag, str(value)]
    return args


def train_command(model_dir: str, export: str, run_dir: str, config: str | None, sets: tuple[str, ...]) -> list[str]:
    """`llm-ner train --init` of the served model on a round's export (no dev or test split: the gate judges)."""
    return cli_args("train", init=model_dir, train=export, output=run_dir, config=config,
                    set_=["data.dev=null", "data.test=null", *sets], no_progress=True)


def evaluate_command(model_dir: str, data: str, output: str) -> list[str]:
    """`llm-ner evaluate` of one model on the gate's held-out data, in fp32 (scores as trained, on any machine)."""
    return cli_args("evaluate", model=model_dir, data=data, precision="fp32", output=output)
