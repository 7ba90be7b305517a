"""Virtual environments the tests build beside ours (Label Studio's Django stack does not install beside the project),
each from a lock in the repo: `locks/NAME.txt`, exact versions with hashes, installed with `--require-hashes` (pip
refuses any package, or any dependency, the lock does not pin). The cache under LLM_NER_CACHE/test-venvs is keyed by
the lock's hash, so a changed lock builds a new venv and a stale one is never reused; a venv is marked complete last,
so a killed build is built again, never taken for a finished one. Issue 43: an unlocked `pip install
label-studio==1.23.2` pulled sentry-sdk 3.0 on a fresh machine, and a cached venv hid it everywhere else."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

LOCKS = Path(__file__).resolve().parent.parent / "locks"


def lock_path(name: str) -> Path:
    return LOCKS / f"{name}.txt"


def venv_dir(name: str) -> Path:
    """Where the venv of `locks/NAME.txt` lives: its name carries the lock's hash."""
    digest = hashlib.sha256(lock_path(name).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("LLM_NER_CACHE", Path.home() / ".cache" / "llm-ner")) / "test-venvs"
    return root / f"{name}-{digest}"


def install_command(venv: Path, name: str) -> list[str]:
    return [str(venv / "bin" / "pip"), "install", "-q", "--require-hashes", "-r", str(lock_path(name))]


def locked_venv(name: str) -> Path:
    """The venv of `locks/NAME.txt`, built once per lock. Raises RuntimeError with pip's last words if it fails."""
    venv = venv_dir(name)
    done = venv / ".complete"  # written last: a venv without it (a killed build) is built again from scratch
    if done.is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run(install_command(venv, name), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"could not install {lock_path(name).name}: {r.stderr[-1500:]}")
    done.write_text(lock_path(name).name + "\n")
    return venv
