"""Issue 23 item 4: `llm-ner learning-curve` — the LLM and the encoder on the same nested random subsets, over seeds,
one row per run, a summary per size; bad input as one-line errors. Tiny models, a few steps."""


import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from llm_ner.active.curve import shuffled
from llm_ner.cli import app
from llm_ner.data import load_corpus, read_conll

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels

runner = CliRunner()
QUICK = ["--set", "training.max_steps=1", "--set", "data.max_dev_sentences=8", "--set", "data.max_test_sentences=8",
         "--no-progress"]


def test_learning_curve_runs_nested_subsets_for_both_systems(tiny_llama, tmp_path):
    from tiny import make_bert

    out = tmp_path / "curve"
    r = runner.invoke(app, ["learning-curve", "--sizes", "8,16", "--seeds", "1,2", "--seeds-up-to", "8",
                            "--llm-model", str(tiny_llama), "--encoder-model", str(make_bert(tmp_path / "bert")),
                            "--encoder-set", "training.batch_size=2", "--output", str(out), *QUICK])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    runs = {(x["system"], x["sentences"], x["seed"]) for x in res["rows"]}
    assert runs == {(s, n, seed) for s in ("llm", "encoder") for n, seed in ((8, 1), (16, 1), (8, 2))}
    seeds = {(x["system"], x["sentences"]): x["seeds"] for x in res["summary"]}
    assert seeds == {("llm", 8): 2, ("encoder", 8): 2, ("llm", 16): 1, ("encoder", 16): 1}
    assert all(x["test_f1"] is not None for x in res["summary"])
    assert {(x["system"], x["head"]) for x in res["rows"]} == {("llm", "crf"), ("encoder", "linear")}
    assert {x["backbone"] for x in res["rows"] if x["system"] == "llm"} == {str(tiny_llama)}
    assert "| 16 | llm | 1 |" in (out / "results.md").read_text()  # the table, beside the json

    def tokens(run):
        return [s.tokens for s in read_conll(out / run / "labelled.conll")]

    assert tokens("llm_8_1") == tokens("encoder_8_1") == tokens("llm_16_1")[:8]  # same subset, nested by size
    assert tokens("llm_8_1") != tokens("llm_8_2")  # another seed, another subset
    # a shuffle of the whole split, not of the config's first 2,000: the simulation's order (scripts/simulate_al.py)
    assert tokens("llm_16_1") == [s.tokens for s in shuffled(load_corpus("conll2003:train"), 1)[:16]]
    batch = {run: yaml.safe_load((out / run / "config.yaml").read_text())["training"]["batch_size"]
             for run in ("llm_8_1", "encoder_8_1")}
    assert batch["encoder_8_1"] == 2 and batch["llm_8_1"] != 2  # --encoder-set: the encoder's runs only
    # a recorded point's weights are dropped (the summary and metrics stay): 28 LLM runs would fill the disk
    assert (out / "llm_8_1" / "summary.json").is_file() and not (out / "llm_8_1" / "model").exists()
    assert not (out / "llm_8_1" / "checkpoints").exists()
    r2 = runner.invoke(app, ["learning-curve", "--sizes", "8", "--seeds", "1", "--llm-model", str(tiny_llama),
                             "--systems", "llm", "--output", str(out), *QUICK])
    assert r2.exit_code == 0, r2.output
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == res["rows"]  # finished runs are reused, not retrained; earlier points stay
    shutil.rmtree(out / "llm_8_1")  # results.json alone is enough: a recorded point is not run again
    r3 = runner.invoke(app, ["learning-curve", "--sizes", "8", "--seeds", "1", "--llm-model", str(tiny_llama),
                             "--systems", "llm", "--output", str(out), *QUICK])
    assert r3.exit_code == 0, r3.output
    assert not (out / "llm_8_1").exists()
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]
    r4 = runner.invoke(app, ["learning-curve", "--sizes", "4", "--seeds", "1", "--llm-model", str(tiny_llama),
                             "--systems", "llm", "--output", str(out), "--keep-models", *QUICK])
    assert r4.exit_code == 0, r4.output
    assert (out / "llm_4_1" / "model").is_dir()  # --keep-models keeps them
    # issue 43: another --llm-model on the same output was ignored (the recorded points reused as if its own)
    r5 = runner.invoke(app, ["learning-curve", "--sizes", "8", "--seeds", "1", "--llm-model", str(tmp_path / "bert"),
                             "--systems", "llm", "--output", str(out), *QUICK])
    assert r5.exit_code == 2 and f"holds llm points of {tiny_llama}" in r5.output, r5.output
    assert len(r5.output.strip().splitlines()) == 1


def test_bad_curve_arguments_are_one_line_errors(tmp_path):
    for args, want in ((["--systems", "llm,gpt"], "--systems"), (["--sizes", "10,x"], "whole numbers"),
                       (["--sizes", "0"], "at least 1")):
        r = runner.invoke(app, ["learning-curve", "--output", str(tmp_path), *args])
        assert r.exit_code == 2 and want in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_missing_backbone_stops_the_curve_before_any_run(tiny_llama, tmp_path, monkeypatch):
    """The encoder's weights package not installed: a one-line error before the LLM's first run, not after it."""
    from llm_ner.modeling import backbones

    monkeypatch.setitem(backbones.BACKBONES, "no-such-encoder", backbones.Backbone(
        hub_id="x/y", encoder=True, licence="-", note="not installed", package="llm_ner_no_such_weights"))
    r = runner.invoke(app, ["learning-curve", "--sizes", "8", "--seeds", "1", "--llm-model", str(tiny_llama),
                            "--encoder-model", "no-such-encoder", "--output", str(tmp_path / "c"), *QUICK])
    assert r.exit_code == 2 and "not installed" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "c").exists()


def test_a_smaller_subset_keeps_the_configs_optimizer_steps():
    from llm_ner.active.curve import budgeted
    from llm_ner.config import load_config

    cfg = load_config("quickstart", {"training.batch_size": 16})  # 2,000 sentences x 1 epoch, 125 steps of 16
    assert budgeted(cfg, 250).training.epochs == 8.0 and budgeted(cfg, 1000).training.epochs == 2.0
    assert budgeted(cfg, 250).training.eval_steps == 125  # evaluated as the 2,000-sentence run is: once, at the end
    assert budgeted(cfg, 2000).training.epochs == 1.0 and budgeted(cfg, 14041).training.epochs == 1.0
    capped = load_config("quickstart", {"training.max_steps": 5})
    assert budgeted(capped, 250).training.epochs == 1.0  # an explicit step count is the user's budget
