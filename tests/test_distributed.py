"""Training under torchrun with DDP, 2 processes on the CPU (gloo), with no code change: both ranks end with the
same weights, the steps are logged once, the model is saved once."""


import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels

HERE = Path(__file__).parent


def test_ddp_two_processes_agree_on_weights(tiny_llama, tmp_path):
    out = tmp_path / "run"
    # --standalone: torchrun picks its own free rendezvous port (no race with a port probed here and freed)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(HERE / "ddp_worker.py"), str(tiny_llama), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    a, b = (json.loads((out / f"rank{i}.json").read_text()) for i in (0, 1))
    assert a["world_size"] == b["world_size"] == 2 and a["backend"] == "gloo"
    assert a["step"] == b["step"] == 4
    assert a["digest"] == b["digest"], (a["first"], b["first"])
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3, 4]  # rank 0 logs; rank 1 does not write a second copy
    assert (out / "model" / "llm_ner_config.json").is_file()
    # the run's files are written by rank 0 alone (two ranks once raced on summary.json's temp file)
    assert json.loads((out / "summary.json").read_text())["global_step"] == 4
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".write_test*"))
