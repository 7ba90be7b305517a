"""Issue 23 item 5: scripts/simulate_al.py end to end on the tiny model — rounds of training, the strategies' picks
from the same hidden pool, the table `llm-ner report --al` reads, and an interrupted simulation continuing, from its
results.json alone when the run dirs are gone."""

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


SCRIPT = Path(__file__).parent.parent / "scripts" / "simulate_al.py"


def simulate(monkeypatch, model: Path, out: Path) -> dict:
    argv = ["simulate_al.py", "--output", str(out), "--seeds", "1", "--start", "6", "--step", "3", "--rounds", "2",
            "--pool", "20", "--set", f"model.backbone={model}", "--set", "training.max_steps=1",
            "--set", "data.max_dev_sentences=4", "--set", "data.max_test_sentences=4"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return json.loads((out / "results.json").read_text())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_simulation_reveals_labels_round_by_round_and_resumes(tiny_llama, tmp_path, monkeypatch):
    out = tmp_path / "al"
    res = simulate(monkeypatch, tiny_llama, out)
    for strategy in ("uncertainty", "random"):
        rows = res["results"][strategy]["1"]
        assert [r["labelled"] for r in rows] == [6, 9, 12]  # start, then +step a round
        assert all(r["test_f1"] is not None and r["train_seconds"] > 0 for r in rows)
    seed = out / "seed_1"
    assert not (seed / "uncertainty_round_0").exists()  # round 0 is one run both strategies share
    assert (seed / "round_0" / "model").is_dir() and not (seed / "uncertainty_round_1" / "model").exists()
    assert not any(seed.rglob("checkpoints"))  # a round's weights go once its picks are recorded
    for s in ("uncertainty", "random"):  # each round's picks are recorded in its row (results.json alone resumes)
        p0, p1 = (res["results"][s]["1"][r]["picks"] for r in (0, 1))
        assert len(set(p0)) == len(set(p1)) == 3, s  # distinct picks, from the pool that was left
        assert "picks" not in res["results"][s]["1"][2]  # the last round chooses nothing
    labelled = [line.split()[0] for line in (seed / "random_round_2" / "labelled.conll").read_text().splitlines()
                if line.strip() and not line.startswith("-DOCSTART-")]
    assert labelled  # the revealed gold is what round 2 trained on
    assert res["results"]["random"]["1"][2]["tokens"] == len(labelled)  # the labelled tokens are recorded
    mtimes = {p: p.stat().st_mtime for p in seed.rglob("summary.json")}
    again = simulate(monkeypatch, tiny_llama, out)
    assert again["results"] == res["results"]  # finished rounds are reused, not retrained
    assert {p: p.stat().st_mtime for p in seed.rglob("summary.json")} == mtimes
    shutil.rmtree(seed)  # the run dirs gone (a new machine): results.json alone is enough, nothing is retrained
    assert simulate(monkeypatch, tiny_llama, out)["results"] == res["results"] and not seed.exists()
    from llm_ner.report.sections import active_learning_text

    text = active_learning_text(again)
    assert "Random sampling's last round" in text and "| uncertainty | 12 |" in text
