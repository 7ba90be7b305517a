"""Retraining as a bounded, durable job queue (the Label Studio loop, issue 34): one job at a time, a time limit,
the training process's CPU threads set apart from serving, a cap on the rounds kept on disk, rounds numbered after
the highest on disk (a directory is never reused), each job's state in its round (`job.json`, written atomically) so
that a restart marks an unfinished one interrupted, and the training process ended with the server that started it.
No FastAPI here: label_studio.py turns its refusals into HTTP answers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..fsutil import atomic_write_text

log = logging.getLogger(__name__)
ROUND = re.compile(r"round_(\d+)$")
JOB_FILE = "job.json"
EXPORT_FILE = "label_studio_export.json"


@dataclass
class Job:
    id: int
    round: str  # the round's directory name, relative to the training dir (responses never show absolute paths)
    status: str = "running"  # running | done | failed | timed out | interrupted
    detail: str = ""
    started: float = 0.0
    seconds: float | None = None

    def save(self, root: Path) -> None:
        atomic_write_text(root / self.round / JOB_FILE, json.dumps(asdict(self), indent=1) + "\n")


class Busy(Exception):
    """A job is running: one at a time."""

    def __init__(self, job: Job):
        super().__init__(f"training job {job.id} is running ({job.round}); one job at a time")
        self.job = job


class TrainingQueue:
    def __init__(self, root: str | Path, timeout: float, keep_rounds: int, threads: int | None):
        self.root, self.timeout, self.keep, self.threads = Path(root), timeout, keep_rounds, threads
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs = self._load()
        self.running: Job | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None

    def _rounds(self) -> list[tuple[int, Path]]:
        return sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := ROUND.match(p.name)) and p.is_dir())

    def _load(self) -> list[Job]:
        """The jobs of earlier runs of the server; one it left running was cut short by the restart: interrupted."""
        jobs = []
        for _, p in self._rounds():
            try:
                job = Job(**json.loads((p / JOB_FILE).read_text()))
            except (OSError, ValueError, TypeError):
                continue  # a round without a readable record: not ours to report
            if job.status == "running":
                job.status, job.detail = "interrupted", "the server stopped before the job ended"
                job.save(self.root)
            jobs.append(job)
        return jobs

    def new_round(self, export: list[dict]) -> Job:
        """A new round directory after the highest on disk (created, never reused), the export written into it."""
        if self.running:
            raise Busy(self.running)
        k = max((k for k, _ in self._rounds()), default=0) + 1
        job = Job(k, f"round_{k}", started=time.time())
        (self.root / job.round).mkdir()  # FileExistsError if another process took it: never write into a kept round
        atomic_write_text(self.root / job.round / EXPORT_FILE, json.dumps(export, ensure_ascii=False))
        job.save(self.root)
        self.jobs.append(job)
        self.running = job
        return job

    def model_dir(self, job: Job) -> Path:
        return self.root / job.round / "model"

    def start(self, job: Job, cmd: list[str], on_success: Callable[[Job], Awaitable[str]]) -> None:
        self._task = asyncio.create_task(self._run(job, cmd, on_success))

    async def _run(self, job: Job, cmd: list[str], on_success: Callable[[Job], Awaitable[str]]) -> None:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})}
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True)  # its own process group: stopping it stops its children too
            try:
                out, _ = await asyncio.wait_for(self._proc.communicate(), self.timeout)
            except TimeoutError:
                self._kill()
                await self._proc.wait()
                job.status, job.detail = "timed out", f"stopped after the time limit ({self.timeout:g} s)"
                return
            if self._proc.returncode != 0:
                lines = out.decode(errors="replace").strip().splitlines()
                job.status, job.detail = "failed", _relative(lines[-1] if lines else f"exit {self._proc.returncode}",
                                                             self.root)
                return
            job.status, job.detail = "done", await on_success(job)
        except Exception as e:  # a bug here must not leave the job "running" for ever
            job.status, job.detail = "failed", str(e) if isinstance(e, RuntimeError) else type(e).__name__
            log.exception("retraining job %d", job.id)
        finally:
            job.seconds = round(time.time() - job.started, 1)
            job.save(self.root)
            self.running, self._proc = None, None
            log.info("retraining job %d: %s %s", job.id, job.status, job.detail)

    def _kill(self) -> None:
        if self._proc and self._proc.returncode is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """The server is stopping: end the training process (no orphan keeps the cores busy), record it."""
        if self.running:
            job = self.running
            self._kill()
            if self._task:
                await asyncio.wait([self._task], timeout=10)
            job.status, job.detail = "interrupted", "the server stopped"
            job.save(self.root)

    def prune(self, served: Path | None) -> list[str]:
        """Keep the last `keep` rounds on disk, and whichever round is served; delete the others' directories."""
        rounds = self._rounds()
        keep = {p for _, p in rounds[-self.keep:]} if self.keep > 0 else set()
        gone = []
        for _, p in rounds:
            if p in keep or (served is not None and served.resolve().is_relative_to(p.resolve())) or (
                    self.running and p.name == self.running.round):
                continue
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
        self.jobs = [j for j in self.jobs if j.round not in gone]
        return gone


def _relative(line: str, root: Path) -> str:
    """A line of the training log for a response: no absolute path of the server's disk."""
    return line.replace(str(root.resolve()), "TRAIN_DIR").replace(str(root), "TRAIN_DIR")


def train_command(model_dir: str, job_dir: Path, config: str | None, sets: tuple[str, ...]) -> list[str]:
    """`llm-ner train --init` of the served model on the round's export."""
    return [sys.executable, "-m", "llm_ner.cli", "train", "--init", model_dir, "--train", str(job_dir / EXPORT_FILE),
            "--output", str(job_dir), "--set", "data.dev=null", "--set", "data.test=null", "--no-progress",
            *(["--config", config] if config else []), *(a for kv in sets for a in ("--set", kv))]
