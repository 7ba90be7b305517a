"""Retraining as a bounded, durable job queue (serving/training.py), with real processes: one job at a time, a time
limit that stops the process, rounds numbered after the highest on disk and never reused, a restart that marks an
unfinished job interrupted, no process outliving the server, and the rounds kept on disk capped (never the served)."""

import asyncio
import json
import os
import sys
import time

import pytest

from llm_ner.serving.training import JOB_FILE, Busy, TrainingQueue


async def _done(job) -> str:
    return "served"


def _wait(queue, limit=30.0):
    async def go():
        t = time.time()
        while queue.running and time.time() - t < limit:
            await asyncio.sleep(0.05)
    return go()


def _alive(pid: int) -> bool:
    """Running (a killed child whose parent died first may stay a zombie until init reaps it: not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_rounds_follow_the_highest_on_disk_and_one_job_runs_at_a_time(tmp_path):
    (tmp_path / "round_7").mkdir()  # a round of an earlier server (or by hand): never reused, never overwritten

    async def go():
        q = TrainingQueue(tmp_path, timeout=30, keep_rounds=5, threads=1)
        job = q.new_round([{"data": {"text": "x"}}])
        assert job.round == "round_8" and (tmp_path / "round_8" / "label_studio_export.json").is_file()
        q.start(job, [[sys.executable, "-c", "import time; time.sleep(0.5)"]], _done)
        with pytest.raises(Busy, match="job 8 is running"):
            q.new_round([])
        await _wait(q)
        assert job.status == "done" and job.detail == "served"
        assert q.new_round([]).round == "round_9"
    asyncio.run(go())


def test_a_job_past_its_time_limit_is_stopped(tmp_path):
    async def go():
        q = TrainingQueue(tmp_path, timeout=1, keep_rounds=5, threads=None)
        job = q.new_round([])
        q.start(job, [[sys.executable, "-c", "pass"], [sys.executable, "-c", "import time; time.sleep(60)"]],
                _done)  # the limit holds for the job's steps together
        t = time.time()
        await _wait(q)
        assert job.status == "timed out" and time.time() - t < 20
        assert json.loads((tmp_path / job.round / JOB_FILE).read_text())["status"] == "timed out"
    asyncio.run(go())


def test_the_server_stopping_ends_the_job_and_a_restart_marks_it_interrupted(tmp_path):
    pid_file = tmp_path / "pid"

    async def go():
        q = TrainingQueue(tmp_path, timeout=600, keep_rounds=5, threads=None)
        job = q.new_round([])
        # the training process starts a child of its own, as torch / DataLoader workers may: both must end
        code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
                f"time.sleep(600)']); open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(600)")
        q.start(job, [[sys.executable, "-c", code]], _done)
        while not pid_file.exists():
            await asyncio.sleep(0.05)
        await q.stop()
        return job
    job = asyncio.run(go())
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not _alive(child)  # no orphan keeps the cores busy
    assert job.status == "interrupted"
    # a server killed outright leaves "running" on disk: the next start reports it interrupted
    rec = json.loads((tmp_path / job.round / JOB_FILE).read_text())
    (tmp_path / job.round / JOB_FILE).write_text(json.dumps({**rec, "status": "running"}))
    again = TrainingQueue(tmp_path, timeout=600, keep_rounds=5, threads=None)
    assert [(j.round, j.status) for j in again.jobs] == [(job.round, "interrupted")]
    assert again.new_round([]).round == "round_2"


def test_rounds_kept_on_disk_are_capped_and_the_served_one_is_never_removed(tmp_path):
    for k in range(1, 6):
        (tmp_path / f"round_{k}" / "model").mkdir(parents=True)
    q = TrainingQueue(tmp_path, timeout=600, keep_rounds=2, threads=None)
    gone = q.prune(served=tmp_path / "round_1" / "model")
    assert sorted(gone) == ["round_2", "round_3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_1", "round_4", "round_5"]


def test_failed_rounds_are_pruned_too(tmp_path):
    """Found by the soak run: only a served round triggered the pruning, so failed rounds piled up on disk."""
    async def go():
        q = TrainingQueue(tmp_path, timeout=30, keep_rounds=1, threads=None)
        for _ in range(3):
            job = q.new_round([])
            q.start(job, [[sys.executable, "-c", "raise SystemExit(3)"]], _done)
            await _wait(q)
            assert job.status == "failed"
    asyncio.run(go())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round_3"]
