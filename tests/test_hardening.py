"""Hardening: a training process killed with SIGKILL mid-run resumes with no lost or repeated steps and the same
losses; writes are atomic (no half-written files are ever visible); a full disk is caught before training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


ROOT = Path(__file__).resolve().parents[1]


def cmd(tiny_llama, out, *extra):
    return [sys.executable, "-m", "llm_ner.cli", "train", "--model", str(tiny_llama), "--output", str(out),
            "--max-steps", "16", "--mode", "full", "--no-progress",
            "--set", "data.max_train_sentences=64", "--set", "data.max_dev_sentences=8", "--set", "data.test=null",
            "--set", "training.eval_steps=4", "--set", "training.logging_steps=1", "--set", "training.batch_size=4",
            *extra]


def losses(run: Path) -> dict:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def test_kill_9_then_resume_has_identical_losses(tiny_llama, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(cmd(tiny_llama, ref), check=True, capture_output=True)
    run = tmp_path / "run"
    p = subprocess.Popen(cmd(tiny_llama, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-8").is_dir():  # let it pass a checkpoint, then kill it hard
        assert p.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = max(losses(run))
    assert killed_at < 16
    r = subprocess.run(cmd(tiny_llama, run, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(ref), losses(run)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 17))  # every step logged exactly once: none lost, none repeated
    for step in range(9, 17):  # after the checkpoint: same data order, RNG and weights -> same losses
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    assert json.loads((run / "summary.json").read_text())["global_step"] == 16
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_resume_skips_a_checkpoint_interrupted_while_saving(tiny_llama, tmp_path):
    """A kill while the Trainer writes a checkpoint leaves it without trainer_state.json (written last): resume
    must fall back to the previous one (checkpoint-12 here) and still end with every step logged once."""
    run = tmp_path / "run"
    subprocess.run(cmd(tiny_llama, run), check=True, capture_output=True)
    (run / "checkpoints" / "checkpoint-16" / "trainer_state.json").unlink()  # the save of step 16 was cut off
    r = subprocess.run(cmd(tiny_llama, run, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "incomplete_checkpoints" / "checkpoint-16").is_dir()
    assert (run / "checkpoints" / "checkpoint-16" / "trainer_state.json").is_file()  # redone, complete
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 17))


def mount_tmpfs(d: Path, size: str) -> None:
    """A real file system of `size`, to fill up. Needs root (CAP_SYS_ADMIN); skips the test where it is refused."""
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def tiny_disk(tmp_path):
    mount_tmpfs(tmp_path / "disk", "1m")
    yield tmp_path / "disk"
    subprocess.run(["umount", str(tmp_path / "disk")], check=False)


@pytest.fixture
def small_disk(tmp_path):
    mount_tmpfs(tmp_path / "disk", "320m")  # passes the start-up probe of a LoRA run (300 MiB)
    yield tmp_path / "disk"
    subprocess.run(["umount", str(tmp_path / "disk")], check=False)


def test_disk_filling_during_training_is_one_error_then_resumes(tiny_llama, small_disk):
    """The probe passes, then another writer fills the disk at step 6: the checkpoint save at step 8 fails with our
    one-line TrainError (not a safetensors traceback); after space is freed, --resume ends the run with every step
    logged once."""
    import shutil

    from transformers import TrainerCallback

    from llm_ner.config import load_config
    from llm_ner.training.train import TrainError, train

    filler = small_disk / "filler"

    class FillDisk(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                with open(filler, "wb") as f:
                    f.write(b"\0" * (shutil.disk_usage(small_disk).free - 4096))

    run = small_disk / "run"
    cfg = load_config(None, {
        "model.backbone": str(tiny_llama), "output": str(run), "training.mode": "lora", "training.max_steps": 16,
        "training.batch_size": 4, "training.eval_steps": 4, "training.logging_steps": 1,
        "data.max_train_sentences": 64, "data.max_dev_sentences": 8, "data.test": None})
    with pytest.raises(TrainError, match=r"disk full while saving to .*rerun with --resume"):
        train(cfg, progress=False, callbacks=[FillDisk()])
    filler.unlink()
    train(cfg, resume=True, progress=False)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 17))
    assert json.loads((run / "summary.json").read_text())["global_step"] == 16
    assert (run / "model" / "llm_ner_config.json").is_file() and not list(run.rglob("*.tmp"))


def test_full_disk_fails_before_training(tiny_llama, tiny_disk):
    r = subprocess.run(cmd(tiny_llama, tiny_disk / "run"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "only 1 MiB free, this run needs about" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not (tiny_disk / "run" / "checkpoints").exists()  # nothing started


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tiny_disk):
    from llm_ner.fsutil import atomic_write_text

    p = tiny_disk / "metrics.json"
    atomic_write_text(p, '{"f1": 1}')
    with pytest.raises(OSError):
        atomic_write_text(p, "x" * 2_000_000)  # more than the disk holds: ENOSPC half-way
    assert p.read_text() == '{"f1": 1}' and [x.name for x in tiny_disk.iterdir()] == ["metrics.json"]
