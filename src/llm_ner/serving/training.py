"""Retraining as a bounded, durable job queue (the Label Studio loop, issue 34): one job at a time, a time limit,
the training process's CPU threads set apart from serving, a cap on the rounds kept on disk, rounds numbered after
the highest on disk (a directory is never reused), each job's state in its round (`job.json`, written atomically) so
that a restart marks an unfinished one interrupted, and the training process ended with the server that started it.

A round is served only through the promotion gate: after training, the new model and the served one are scored on
the same held-out data (the operator's, or a slice of the export that training never saw) and the new one must reach
the served one's F1 + a margin. What is served is the `current.json` pointer in the training dir (written
atomically), which a restarted server loads; a rollback is a pointer to another kept round.
No FastAPI here: label_studio.py turns its refusals into HTTP answers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..fsutil import atomic_write_text

log = logging.getLogger(__name__)
ROUND = re.compile(r"round_(\d+)$")
JOB_FILE = "job.json"
EXPORT_FILE = "label_studio_export.json"
HOLDOUT_FILE = "holdout.json"
CURRENT_FILE = "current.json"  # {"round": "round_K"} or {"round": null}: the served model (null: the one started on)
GATE_NEW, GATE_SERVED = "gate_new_metrics.json", "gate_served_metrics.json"


@dataclass
class Job:
    id: int
    round: str  # the round's directory name, relative to the training dir (responses never show absolute paths)
    status: str = "running"  # running | done | failed | timed out | interrupted
    detail: str = ""
    started: float = 0.0
    seconds: float | None = None
    export: dict = field(default_factory=dict)  # what of the export was used and dropped (clean_export's counts)
    f1: float | None = None  # the new model's F1 on the held-out data
    served_f1: float | None = None  # the served model's, on the same data
    promoted: bool | None = None

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
        self.protect: Callable[[], Path | None] = lambda: None  # the served model's dir: never pruned

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

    def new_round(self, export: list[dict], holdout: list[dict] | None = None, counts: dict | None = None) -> Job:
        """A new round directory after the highest on disk (created, never reused), the export (and the tasks held
        out for the promotion gate) written into it."""
        if self.running:
            raise Busy(self.running)
        k = max((k for k, _ in self._rounds()), default=0) + 1
        job = Job(k, f"round_{k}", started=time.time(), export=dict(counts or {}))
        (self.root / job.round).mkdir()  # FileExistsError if another process took it: never write into a kept round
        atomic_write_text(self.root / job.round / EXPORT_FILE, json.dumps(export, ensure_ascii=False))
        if holdout:
            atomic_write_text(self.root / job.round / HOLDOUT_FILE, json.dumps(holdout, ensure_ascii=False))
        job.save(self.root)
        self.jobs.append(job)
        self.running = job
        return job

    def model_dir(self, job: Job) -> Path:
        return self.model_dir_of(job.round)

    def model_dir_of(self, round_name: str) -> Path:
        return self.root / round_name / "model"

    def start(self, job: Job, cmds: list[list[str]], on_success: Callable[[Job], Awaitable[str]]) -> None:
        """Run the job's commands one after the other (training, then the gate's scoring), all within the time
        limit; `on_success` says what became of the round."""
        self._task = asyncio.create_task(self._run(job, cmds, on_success))

    async def _step(self, job: Job, cmd: list[str], deadline: float) -> bool:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})}
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True)  # its own process group: stopping it stops its children too
        try:
            out, _ = await asyncio.wait_for(self._proc.communicate(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._kill()
            await self._proc.wait()
            job.status, job.detail = "timed out", f"stopped after the time limit ({self.timeout:g} s)"
            return False
        if self._proc.returncode != 0:
            lines = out.decode(errors="replace").strip().splitlines()
            job.status, job.detail = "failed", _relative(lines[-1] if lines else f"exit {self._proc.returncode}",
                                                         self.root)
            return False
        return True

    async def _run(self, job: Job, cmds: list[list[str]], on_success: Callable[[Job], Awaitable[str]]) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            for cmd in cmds:
                if not await self._step(job, cmd, deadline):
                    return
            job.status, job.detail = "done", await on_success(job)
        except Exception as e:  # a bug here must not leave the job "running" for ever
            job.status, job.detail = "failed", str(e) if isinstance(e, RuntimeError) else type(e).__name__
            log.exception("retraining job %d", job.id)
        finally:
            job.seconds = round(time.time() - job.started, 1)
            job.save(self.root)
            self.running, self._proc = None, None
            self.prune(self.protect())  # after every job, whatever its end (a failed round must not pile up)
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


    # --- what is served: the pointer, and the gate's verdict ---

    def current(self) -> str | None:
        """The round the pointer names, if its model is still on disk (None: the model the server was started on)."""
        try:
            name = json.loads((self.root / CURRENT_FILE).read_text()).get("round")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) and ROUND.match(name) and (self.root / name / "model").is_dir() else None

    def point(self, round_name: str | None) -> None:
        atomic_write_text(self.root / CURRENT_FILE, json.dumps({"round": round_name}) + "\n")

    def verdict(self, job: Job, margin: float) -> bool:
        """Read the gate's two scores into the job; True if the new round may be served."""
        job.f1 = _f1(self.root / job.round / GATE_NEW)
        job.served_f1 = _f1(self.root / job.round / GATE_SERVED)
        job.promoted = job.f1 >= job.served_f1 + margin
        return job.promoted

    def gate_commands(self, job: Job, served_model: str, data: str | None) -> list[list[str]]:
        """Score the new model and the served one on the same held-out data (in processes of their own, under the
        job's time limit and threads)."""
        data = data or str(self.root / job.round / HOLDOUT_FILE)
        return [[sys.executable, "-m", "llm_ner.cli", "evaluate", "--model", model, "--data", data, "--precision",
                 "fp32", "--output", str(self.root / job.round / out)]
                for model, out in ((str(self.model_dir(job)), GATE_NEW), (served_model, GATE_SERVED))]


def _f1(path: Path) -> float:
    return round(float(json.loads(path.read_text())["f1"]), 2)


def clean_export(tasks: object) -> tuple[list[dict], dict]:
    """What of a Label Studio export may be learnt from: annotations a person submitted. A cancelled (skipped)
    annotation is not a label, nor is a model's prediction (the model would learn its own guesses); a task left with
    no annotation is dropped. Returns the tasks and the counts of what was used and dropped."""
    if not isinstance(tasks, list):
        raise ValueError("the export is not a JSON list of tasks")
    kept, counts = [], {"tasks": 0, "annotations": 0, "cancelled_dropped": 0, "predictions_dropped": 0,
                        "unannotated_dropped": 0}
    for task in tasks:
        if not isinstance(task, dict):
            raise ValueError("the export holds something other than task objects")
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
        good = [a for a in anns if not a.get("was_cancelled")]
        counts["cancelled_dropped"] += len(anns) - len(good)
        counts["predictions_dropped"] += len(task.get("predictions") or [])
        if not good:
            counts["unannotated_dropped"] += 1
            continue
        kept.append({**{k: v for k, v in task.items() if k != "predictions"}, "annotations": good})
        counts["tasks"] += 1
        counts["annotations"] += len(good)
    return kept, counts


def split_holdout(tasks: list[dict], share: float) -> tuple[list[dict], list[dict]]:
    """(train, held out): a task is held out by a hash of its id (else its text), so the same task stays held out
    in every round — a task the served model trained on is never used to judge it. At least one task each."""
    def key(t: dict) -> float:
        ident = str(t.get("id") if t.get("id") is not None else json.dumps(t.get("data"), sort_keys=True))
        return int(hashlib.sha256(ident.encode()).hexdigest()[:12], 16) / 16**12
    held = [t for t in tasks if key(t) < share] or sorted(tasks, key=key)[:1]
    train = [t for t in tasks if not any(t is h for h in held)]
    return train, held


def _relative(line: str, root: Path) -> str:
    """A line of the training log for a response: no absolute path of the server's disk."""
    return line.replace(str(root.resolve()), "TRAIN_DIR").replace(str(root), "TRAIN_DIR")


def train_command(model_dir: str, job_dir: Path, config: str | None, sets: tuple[str, ...]) -> list[str]:
    """`llm-ner train --init` of the served model on the round's export."""
    return [sys.executable, "-m", "llm_ner.cli", "train", "--init", model_dir, "--train", str(job_dir / EXPORT_FILE),
            "--output", str(job_dir), "--set", "data.dev=null", "--set", "data.test=null", "--no-progress",
            *(["--config", config] if config else []), *(a for kv in sets for a in ("--set", kv))]
