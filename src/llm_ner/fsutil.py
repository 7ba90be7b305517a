"""File-system helpers with one promise: a kill or a full disk at any moment never leaves a half-written file or
directory behind; and no command writes over its own input. A leaf module but for the error class."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import UserError


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """Write to a temp file then rename, so a crash never leaves a half-written file; on an error (a full disk) the
    old file stays as it was and the temp file is removed. `durable`: the file and the rename are on disk when this
    returns (fsync of the file, then of its directory), so a power cut cannot bring back the old one — for a
    pointer a restart acts on (the served round); other writes skip the cost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share a temp file
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory `tmp` in as `final` (the old one is moved aside first, then removed), so a kill
    at any point leaves either the old or the new directory, never a half-written one."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def refuse_overwrite(outputs: dict[str, str | Path | None], inputs: dict[str, str | Path | None]) -> None:
    """No command overwrites its input: an output path that is an input file (the same path, a symlink or a hard
    link to it) is a one-line error before any work — `evaluate --data dev.conll --output dev.json` once wrote its
    predictions over dev.conll. Bundled names (conll2003:test) are not files and never match."""
    for out_name, out in outputs.items():
        for in_name, src in inputs.items():
            if out and src and os.path.isfile(src) and (os.path.realpath(out) == os.path.realpath(src) or (
                    os.path.exists(out) and os.path.samefile(out, src))):
                raise UserError(f"{out_name} {out} is the input {in_name} {src}: it would be overwritten; write "
                                "the output elsewhere")
