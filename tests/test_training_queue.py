"""Retraining as a bounded, durable job queue (serving/retraining.py), with real processes: one job at a time, a time
limit that stops the process, rounds numbered after the highest on disk and never reused, a restart that marks an
unfinished job interrupted, no process outliving the server, and the rounds kept on disk capped (never the served)."""

import asyncio
import json
import os
import sys
import time

import pytest

from llm_ner.serving.retraining import JOB_FILE, Busy, TrainingQueue


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


# A server (this script) that starts a job whose training process has a child of its own (as torch / DataLoader
# workers may), writes both pids, then waits: the test SIGKILLs it, as the OOM killer or a double Ctrl-C would.
SERVER = """
import asyncio, os, sys, time
from pathlib import Path
from llm_ner.serving.retraining import TrainingQueue

root = Path(sys.argv[1])

async def done(job):
    return "served"

async def main():
    q = TrainingQueue(root, timeout=600, keep_rounds=5, threads=None)
    job = q.new_round([])
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(600)']); open(sys.argv[1], 'w').write(f'{os.getpid()} {c.pid}'); time.sleep(600)")
    q.start(job, [[sys.executable, "-c", "import os; " + code, str(root / "pids")]], done)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_server_killed_outright_leaves_no_orphan(tmp_path):
    """Issue 43: the job ran in its own session and only the server's shutdown hook ended it, so after a SIGKILL it
    trained on with no time limit. Now the training process dies with the server (parent-death signal), and the
    next server kills what is left of its group (the child), recorded in the round, and marks the job interrupted."""
    import signal
    import subprocess

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)])
    deadline = time.time() + 60
    while not (tmp_path / "pids").is_file() or len((tmp_path / "pids").read_text().split()) < 2:
        assert time.time() < deadline and server.poll() is None
        time.sleep(0.05)
    leader, child = map(int, (tmp_path / "pids").read_text().split())
    assert (tmp_path / "round_1" / "job.pid").is_file()  # the group is on record while the step runs
    server.send_signal(signal.SIGKILL)
    server.wait()
    t = time.time()
    while _alive(leader) and time.time() - t < 10:
        time.sleep(0.05)
    assert not _alive(leader)  # died with the server
    again = TrainingQueue(tmp_path, timeout=600, keep_rounds=5, threads=None)  # the next start
    time.sleep(0.2)
    assert not _alive(child)  # the leader's own child, left behind: killed by the next start
    assert [(j.round, j.status) for j in again.jobs] == [("round_1", "interrupted")]
    assert again.new_round([]).round == "round_2"
    again.close()


def test_a_step_leaves_nothing_running_when_its_leader_exits(tmp_path):
    """`_kill` skipped the group once the main process had exited: a child it left in the background ran on."""
    pid_file = tmp_path / "pid"
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid))")

    async def go():
        q = TrainingQueue(tmp_path, timeout=60, keep_rounds=5, threads=None)
        job = q.new_round([])
        q.start(job, [[sys.executable, "-c", code]], _done)
        await _wait(q)
        q.close()
        return job
    job = asyncio.run(go())
    time.sleep(0.3)
    assert job.status == "done" and not _alive(int(pid_file.read_text()))


def test_one_server_per_training_dir(tmp_path):
    from llm_ner.errors import UserError

    q = TrainingQueue(tmp_path, timeout=60, keep_rounds=5, threads=None)
    with pytest.raises(UserError, match=r"another server uses this training dir \(server pid \d+\)"):
        TrainingQueue(tmp_path, timeout=60, keep_rounds=5, threads=None)
    q.close()
    TrainingQueue(tmp_path, timeout=60, keep_rounds=5, threads=None).close()  # free again once the first is gone


def test_rounds_kept_on_disk_are_capped_and_the_served_one_is_never_removed(tmp_path):
    for k in range(1, 6):
        (tmp_path / f"round_{k}" / "model").mkdir(parents=True)
    q = TrainingQueue(tmp_path, timeout=600, keep_rounds=2, threads=None)
    gone = q.prune(served=tmp_path / "round_1" / "model")
    assert sorted(gone) == ["round_2", "round_3"]
    assert sorted(p.name for p in tmp_path.glob("round_*")) == ["round_1", "round_4", "round_5"]


def _round(root, k: int, status: str, promoted: bool | None, model: bool = True) -> None:
    from llm_ner.serving.retraining import Job

    (root / f"round_{k}").mkdir()
    if model:
        (root / f"round_{k}" / "model").mkdir()
        (root / f"round_{k}" / "model" / "llm_ner_config.json").write_text("{}")
    Job(k, f"round_{k}", status=status, promoted=promoted).save(root)


def test_pruning_never_deletes_a_rollback_target_and_drops_failed_rounds_first(tmp_path):
    """Issue 43: keep_rounds counted failed rounds and only the served round was protected, so after a rollback the
    previously promoted round could be deleted. Now the promoted rounds come first, failed rounds go first."""
    _round(tmp_path, 1, "done", True)  # promoted, then rolled back from
    _round(tmp_path, 2, "done", True)  # promoted
    for k in (3, 4, 5):
        _round(tmp_path, k, "failed", None, model=k == 4)  # round_4 died while saving: a partial model
    _round(tmp_path, 6, "done", False)  # kept, not served
    q = TrainingQueue(tmp_path, timeout=60, keep_rounds=3, threads=None)
    gone = q.prune(served=None)  # served: the model the server started on (a rollback to "start")
    assert sorted(gone) == ["round_3", "round_4", "round_5"]  # the failed ones, however new
    assert sorted(p.name for p in tmp_path.glob("round_*")) == ["round_1", "round_2", "round_6"]
    q.keep = 1  # one slot: the newest promoted round; the served one (round_1) is kept beside it
    assert sorted(q.prune(served=tmp_path / "round_1" / "model")) == ["round_6"]
    assert sorted(p.name for p in tmp_path.glob("round_*")) == ["round_1", "round_2"]
    q.close()


def test_a_round_keeps_its_model_not_the_trainers_checkpoints(tmp_path):
    code = "import os, sys; os.makedirs(os.path.join(sys.argv[1], 'checkpoints', 'checkpoint-2'))"

    async def go():
        q = TrainingQueue(tmp_path, timeout=60, keep_rounds=5, threads=None)
        job = q.new_round([])
        q.start(job, [[sys.executable, "-c", code, str(tmp_path / job.round)]], _done)
        await _wait(q)
        q.close()
        return job
    job = asyncio.run(go())
    assert job.status == "done" and not (tmp_path / job.round / "checkpoints").exists()


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
    assert sorted(p.name for p in tmp_path.glob("round_*")) == ["round_3"]


def test_a_pruned_rounds_number_is_never_given_again(tmp_path):
    """Found by the issue-43 soak: once failed rounds were pruned first, the newest round could be a failed one that
    was deleted, and the next round took its number (two jobs named round_17, their records mixed up)."""
    async def go():
        q = TrainingQueue(tmp_path, timeout=30, keep_rounds=1, threads=None)
        _round(tmp_path, 1, "done", True)
        q.jobs = q._load()
        job = q.new_round([])
        assert job.round == "round_2"
        q.start(job, [[sys.executable, "-c", "raise SystemExit(3)"]], _done)
        await _wait(q)  # failed, and pruned at once: round_1 (promoted) keeps the one slot
        assert not (tmp_path / "round_2").exists()
        assert q.new_round([]).round == "round_3"
        q.close()
    asyncio.run(go())
    again = TrainingQueue(tmp_path, timeout=30, keep_rounds=1, threads=None)
    assert again.new_round([]).round == "round_4"  # across a restart too
    again.close()


def test_the_pointer_is_on_disk_when_it_is_written(tmp_path, monkeypatch):
    """Issue 43: current.json (what a restarted server serves) was renamed into place without fsync: a power cut
    could bring back the old pointer. The file and its directory are now fsynced before point() returns."""
    import stat

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)
    q = TrainingQueue(tmp_path, timeout=60, keep_rounds=3, threads=None)
    (tmp_path / "round_1" / "model").mkdir(parents=True)
    monkeypatch.setattr(os, "fsync", fsync)
    q.point("round_1")
    assert synced == ["file", "dir"] and q.current() == "round_1"
    q.close()


def test_the_retraining_loop_calls_the_cli_as_it_is():
    """Issue 45: the loop's argument lists (serving/commands.py) parse with the CLI's own option definitions: a
    renamed or removed flag fails here, not in a user's retraining."""
    import typer

    from llm_ner.cli import app
    from llm_ner.serving.commands import CLI, evaluate_command, train_command

    cli = typer.main.get_command(app)
    for args in (train_command("m", "e.json", "run", "cfg.yaml", ("training.epochs=1",)),
                 train_command("m", "e.json", "run", None, ()), evaluate_command("m", "held.jsonl", "out.json")):
        assert tuple(args[:3]) == CLI
        ctx = cli.commands[args[3]].make_context(args[3], list(args[4:]))  # raises on an unknown flag or value
        if args[3] == "train":
            assert ctx.params["init"] == "m" and ctx.params["train_data"] == "e.json" and not ctx.params["progress"]
            assert ctx.params["set_"][:2] == ["data.dev=null", "data.test=null"]
        else:
            assert ctx.params["precision"] == "fp32" and ctx.params["output"] == "out.json"
