"""Retraining as a bounded, durable job queue (the Label Studio loop, issue 34): one job at a time, a time limit,
the training process's CPU threads set apart from serving, a cap on the rounds kept on disk, rounds numbered after
the highest on disk (a directory is never reused), each job's state in its round (`job.json`, written atomically) so
that a restart marks an unfinished one interrupted, and the training process ended with the server that started it.

A round is served only through the promotion gate: after training, the new model and the served one are scored on
the same held-out data (the operator's, or a slice of the export that training never saw); the gate judges only when
that data holds enough gold entities (else the round is "not judged": kept, not served), and the new model must reach
the served one's F1 + a margin (compared unrounded: a worse round is never served at margin 0).

Nothing a rollback may want is lost: the served round, the running one and the last `keep` promoted rounds are never
pruned; of the rest, failed rounds go first. No orphan: the training process dies with the server even on SIGKILL
(Linux's parent-death signal), its process group is recorded in the round (`job.pid`) and killed by the next server
that finds the job unfinished, and one server at a time holds the training dir (a lock).

What is served is the `current.json` pointer in the training dir (written atomically and fsynced), which a restarted
server loads; a rollback is a pointer to another kept round. No FastAPI here: retraining_api.py turns refusals into
HTTP answers."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
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

from .. import rundir as R
from ..errors import UserError
from ..fsutil import atomic_write_text
from .commands import evaluate_command

log = logging.getLogger(__name__)
ROUND = re.compile(r"round_(\d+)$")
JOB_FILE = "job.json"
EXPORT_FILE = "label_studio_export.json"
HOLDOUT_FILE = "holdout.json"
CURRENT_FILE = "current.json"  # {"round": "round_K"} or {"round": null}: the served model (null: the one started on)
GATE_NEW, GATE_SERVED = "gate_new_metrics.json", "gate_served_metrics.json"
PID_FILE = "job.pid"  # the running step's {pid, pgid, start}: a server that finds the job unfinished kills the group
LOG_FILE = "train.log"  # each step's output, for the operator (responses show a redacted last line)
LOCK_FILE = ".server.lock"  # held by the one server that uses the training dir
LAST_FILE = "last_round"  # the highest round number ever given: a pruned round's number is never given again


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
    gold_entities: int | None = None  # the gold entities the gate judged on
    judged: bool | None = None  # False: too few gold entities to judge (kept, not served)
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
        self._lock = _hold_lock(self.root / LOCK_FILE)
        self.jobs = self._load()
        self.running: Job | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self.protect: Callable[[], Path | None] = lambda: None  # the served model's dir: never pruned

    def close(self) -> None:
        """Let another server use the training dir (the lock also goes with the process, however it ends)."""
        self._lock.close()

    def _rounds(self) -> list[tuple[int, Path]]:
        return sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := ROUND.match(p.name)) and p.is_dir())

    def _load(self) -> list[Job]:
        """The jobs of earlier runs of the server; one it left running was cut short by the restart: interrupted,
        and whatever of its processes still runs (a server killed outright) is killed now."""
        jobs = []
        for _, p in self._rounds():
            try:
                job = Job(**json.loads((p / JOB_FILE).read_text()))
            except (OSError, ValueError, TypeError):
                continue  # a round without a readable record: not ours to report
            if job.status == "running":
                kill_recorded(p / PID_FILE)
                job.status, job.detail = "interrupted", "the server stopped before the job ended"
                job.save(self.root)
            jobs.append(job)
        return jobs

    def new_round(self, export: list[dict], holdout: list[dict] | None = None, counts: dict | None = None) -> Job:
        """A new round directory after the highest on disk (created, never reused), the export (and the tasks held
        out for the promotion gate) written into it."""
        if self.running:
            raise Busy(self.running)
        k = max(max((k for k, _ in self._rounds()), default=0), self._last()) + 1
        atomic_write_text(self.root / LAST_FILE, f"{k}\n", durable=True)  # before the dir: a kill cannot reuse k
        job = Job(k, f"round_{k}", started=time.time(), export=dict(counts or {}))
        (self.root / job.round).mkdir()  # FileExistsError if another process took it: never write into a kept round
        atomic_write_text(self.root / job.round / EXPORT_FILE, json.dumps(export, ensure_ascii=False))
        if holdout:
            atomic_write_text(self.root / job.round / HOLDOUT_FILE, json.dumps(holdout, ensure_ascii=False))
        job.save(self.root)
        self.jobs.append(job)
        self.running = job
        return job

    def _last(self) -> int:
        try:
            return int((self.root / LAST_FILE).read_text())
        except (OSError, ValueError):
            return 0

    def model_dir(self, job: Job) -> Path:
        return self.model_dir_of(job.round)

    def model_dir_of(self, round_name: str) -> Path:
        return self.root / round_name / "model"

    def job_of(self, round_name: str) -> Job | None:
        return next((j for j in self.jobs if j.round == round_name), None)

    def start(self, job: Job, cmds: list[list[str]], on_success: Callable[[Job], Awaitable[str]]) -> None:
        """Run the job's commands one after the other (training, then the gate's scoring), all within the time
        limit; `on_success` says what became of the round."""
        self._task = asyncio.create_task(self._run(job, cmds, on_success))

    async def _step(self, job: Job, cmd: list[str], deadline: float) -> bool:
        env = {**os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})}
        rdir = self.root / job.round
        self._proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: stopping it stops its children too
            preexec_fn=_die_with_parent(os.getpid()))  # ...and it dies with the server, even a SIGKILLed one
        record_process(rdir / PID_FILE, self._proc.pid)
        output = asyncio.create_task(self._proc.stdout.read())  # until every holder of the pipe is gone
        try:
            # the step ends when its leader does, not when the pipe closes (a child it left behind holds that, and
            # Process.wait() waits for the pipes too): watch the leader's exit status
            while self._proc.returncode is None:
                if time.monotonic() > deadline:
                    job.status, job.detail = "timed out", f"stopped after the time limit ({self.timeout:g} s)"
                    return False
                await asyncio.sleep(0.1)
        finally:
            self._kill()  # timed out, or the leader has ended: nothing of its group may run on
            await self._proc.wait()
            out = await output
            (rdir / PID_FILE).unlink(missing_ok=True)
            with open(rdir / LOG_FILE, "ab") as f:
                f.write(out)
        if self._proc.returncode != 0:
            lines = out.decode(errors="replace").strip().splitlines()
            job.status = "failed"
            job.detail = f"exit {self._proc.returncode}" + (f": {redact(lines[-1], self.root)}" if lines else "")
            return False
        return True

    async def _run(self, job: Job, cmds: list[list[str]], on_success: Callable[[Job], Awaitable[str]]) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            for k, cmd in enumerate(cmds):
                if not await self._step(job, cmd, deadline):
                    return
                if k == 0:  # the training step: the round keeps its final model, not the Trainer's checkpoints
                    shutil.rmtree(self.root / job.round / R.CHECKPOINTS, ignore_errors=True)
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
        """SIGKILL the step's process group — also once its leader has exited (a child it started may run on)."""
        if self._proc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """The server is stopping: end the training process (no orphan keeps the cores busy), record it."""
        if self.running:
            job = self.running
            self._kill()
            if self._task:
                await asyncio.wait([self._task], timeout=10)
            job.status, job.detail = "interrupted", "the server stopped"
            job.save(self.root)
        self.close()

    def prune(self, served: Path | None) -> list[str]:
        """Delete the rounds a rollback will not want. Never pruned: the served round and the running one. Of the
        others the first `keep` are kept in this order — the rounds the gate promoted, then finished rounds with a
        model, then failed ones, newest first in each — and the rest deleted (so failed rounds go first)."""
        rounds = [p for _, p in reversed(self._rounds())]  # newest first
        served_round = next((p for p in rounds if served is not None and
                             served.resolve().is_relative_to(p.resolve())), None)
        running = self.root / self.running.round if self.running else None
        others = [p for p in rounds if p not in (served_round, running)]
        jobs = {j.round: j for j in self.jobs}

        def rank(p: Path) -> int:
            j = jobs.get(p.name)
            if j is not None and j.promoted:
                return 0
            has_model = (p / "model" / R.MODEL_CONFIG).is_file() or (j is None and (p / "model").is_dir())
            return 1 if has_model and (j is None or j.status == "done") else 2
        gone = [p.name for p in sorted(others, key=rank)[self.keep:]]  # sorted() is stable: newest first in a rank
        for name in gone:
            shutil.rmtree(self.root / name, ignore_errors=True)
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
        atomic_write_text(self.root / CURRENT_FILE, json.dumps({"round": round_name}) + "\n", durable=True)

    def verdict(self, job: Job, margin: float, min_entities: int) -> bool:
        """Read the gate's two scores into the job; True if the new round may be served: the held-out data holds
        at least `min_entities` gold entities (else the gate cannot judge: F1 on nothing is 0 for both) and the
        new F1, unrounded, reaches the served one's + margin."""
        new, old = _metrics(self.root / job.round / GATE_NEW), _metrics(self.root / job.round / GATE_SERVED)
        job.f1, job.served_f1 = round(new["f1"], 2), round(old["f1"], 2)
        job.gold_entities = int(new.get("gold_entities", 0))
        job.judged = job.gold_entities >= min_entities
        job.promoted = job.judged and new["f1"] >= old["f1"] + margin
        return job.promoted

    def gate_commands(self, job: Job, served_model: str, data: str | None) -> list[list[str]]:
        """Score the new model and the served one on the same held-out data (in processes of their own, under the
        job's time limit and threads)."""
        data = data or str(self.root / job.round / HOLDOUT_FILE)
        return [evaluate_command(model, data, str(self.root / job.round / out))
                for model, out in ((str(self.model_dir(job)), GATE_NEW), (served_model, GATE_SERVED))]


def _hold_lock(path: Path):
    """An exclusive lock on the training dir for this process's life: two servers on one dir would number rounds,
    prune and move the pointer under each other. A second server is a one-line error naming the first."""
    f = open(path, "a+")  # noqa: SIM115 (held open for the queue's life)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{path.parent}: another server uses this training dir ({who}); one server per training "
                        "dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"server pid {os.getpid()}\n")
    f.flush()
    return f


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec_fn (Linux): the child gets SIGKILL when the server dies, however it dies (PR_SET_PDEATHSIG), and
    exits at once if the server is already gone. Elsewhere None (the pid file and the next start still clean up)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)
    return arm


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks (/proc/PID/stat field 22): with the pid, it names one process, not
    whichever later reuses the number."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _group_members(pgid: int, not_before: int) -> list[int]:
    out: list[int] = []
    if not Path("/proc").is_dir():  # not Linux: the parent-death signal is Linux's too; nothing to find here
        return out
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and int(fields[19]) >= not_before:
                out.append(int(d.name))
    return out


def record_process(path: Path, pid: int) -> None:
    atomic_write_text(path, json.dumps({"pid": pid, "pgid": pid, "start": _start_time(pid)}) + "\n", durable=True)


def kill_recorded(path: Path) -> int:
    """Kill what is left of a recorded step's process group (a server killed outright, or a child whose parent
    death went unnoticed); returns how many processes were signalled. A pid reused by an unrelated process since
    is left alone: only members of the group that started no earlier than the step are killed."""
    try:
        rec = json.loads(path.read_text())
        pgid, start = int(rec["pgid"]), int(rec["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    members = _group_members(pgid, start)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    if members:
        log.warning("killed %d process(es) left running by a stopped server's training job (%s)", len(members),
                    path.parent.name)
    return len(members)


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def clean_export(tasks: object) -> tuple[list[dict], dict]:
    """What of a Label Studio export may be learnt from: annotations a person submitted. A cancelled (skipped)
    annotation is not a label, nor is a model's prediction (the model would learn its own guesses); a task left with
    no annotation is dropped. Returns the tasks and the counts of what was used and dropped."""
    if not isinstance(tasks, list):
        raise ValueError("the export is not a JSON list of tasks")
    kept, counts = [], {"tasks": 0, "annotations": 0, "cancelled_dropped": 0, "predictions_dropped": 0,
                        "unannotated_dropped": 0}
    for i, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise ValueError("the export holds something other than task objects")
        for key, kind in (("annotations", list), ("predictions", list), ("data", dict)):
            if task.get(key) is not None and not isinstance(task[key], kind):
                raise ValueError(f"task [{i}]: {key!r} is not a {'list' if kind is list else 'JSON object'}")
        anns = task.get("annotations") or []
        if not all(isinstance(a, dict) and isinstance(a.get("result", []), list) for a in anns):
            raise ValueError(f"task [{i}]: an annotation is not an object with a list 'result'")
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
    in every round — a task the served model trained on is never used to judge it. One hash per task (linear); at
    least one task on each side (the caller gives at least two)."""
    def key(t: dict) -> float:
        ident = str(t.get("id") if t.get("id") is not None else json.dumps(t.get("data"), sort_keys=True))
        return int(hashlib.sha256(ident.encode()).hexdigest()[:12], 16) / 16**12
    keys = [key(t) for t in tasks]
    held = {i for i, k in enumerate(keys) if k < share}
    if not held:  # nothing under the share: the lowest hash is held out
        held = {min(range(len(tasks)), key=keys.__getitem__)}
    elif len(held) == len(tasks) > 1:  # everything under it: the highest hash trains
        held.discard(max(held, key=keys.__getitem__))
    return [t for i, t in enumerate(tasks) if i not in held], [t for i, t in enumerate(tasks) if i in held]


_PATH = re.compile(r"(?<![\w.~])/[^\s'\"`,;:()\[\]{}<>]+")


def redact(line: str, root: Path) -> str:
    """A line of the training log for a response any key may read: no path of the server's disk (the training
    dir is TRAIN_DIR, any other absolute path <path>); the whole log is in the round's train.log."""
    line = line.replace(str(root.resolve()), "TRAIN_DIR").replace(str(root), "TRAIN_DIR")
    return _PATH.sub("<path>", line)[:500]


