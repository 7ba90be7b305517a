"""`llm-ner adapt` (issue 44): continued pre-training on unlabelled text lowers the masked-token loss on a held-out
slice of the pool, for a decoder (MNTP through the unmasked attention) and an encoder (masked-LM); the result is a
backbone `train --model` takes; a SIGKILLed run resumes; bad input is one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels

runner = CliRunner()


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    from tiny import CORPUS

    p = tmp_path_factory.mktemp("pool") / "pool.txt"
    lines = [f"{s} {CORPUS[(i * 3 + 1) % len(CORPUS)]}" for i, s in enumerate(CORPUS * 40)]
    p.write_text("\n".join(lines) + "\n")
    return p


def adapt_args(backbone, pool, out, *extra):
    return ["adapt", "--model", str(backbone), "--pool", str(pool), "--output", str(out), "--no-progress",
            "--set", "max_length=24", "--set", "batch_size=8", "--set", "heldout_chunks=4",
            "--set", "learning_rate=1e-2", "--set", "warmup_steps=2", "--set", "precision=fp32",
            "--set", "train_embeddings=true", *extra]


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_adapt_lowers_heldout_loss_and_trains(kind, pool, tmp_path):
    import tiny

    from llm_ner.config import load_config
    from llm_ner.labels import LabelSet
    from llm_ner.modeling.model import LLMForTokenClassification

    backbone = getattr(tiny, f"make_{kind}")(tmp_path / kind, layers=2)
    out = tmp_path / "adapted"
    r = runner.invoke(app, adapt_args(backbone, pool, out, "--max-steps", "30"))
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "llm_ner_adapt.json").read_text())
    assert rec["objective"] == ("mlm" if kind == "bert" else "mntp")
    assert rec["steps"] == 30 and rec["tokens_seen"] == 30 * 8 * 24 and rec["stopped_by"] == "steps"
    assert rec["heldout_loss_after"] < rec["heldout_loss_before"] - 0.5, rec
    assert rec["loss_curve"] and rec["pool_sha256"] and rec["adapted_from"] == str(backbone)
    assert not (out / "checkpoints").exists()  # a finished run keeps no checkpoint
    # The adapted dir is a backbone: it trains, and its base's recipe applies.
    cfg = load_config(None, {"model.backbone": str(out)}, base={"recipes": {str(backbone): {
        "training.learning_rate": 1.5e-4}}})
    assert cfg.training.learning_rate == 1.5e-4
    from tiny import ner_config

    model = LLMForTokenClassification.from_backbone(ner_config(LabelSet.from_types(["PER"]), str(out)))
    assert model.parameter_counts()["trainable"] > 0


def test_adapt_resumes_after_sigkill(pool, tmp_path, tiny_llama):
    out = tmp_path / "adapted"
    cmd = [sys.executable, "-m", "llm_ner.cli", *adapt_args(tiny_llama, pool, out, "--max-steps", "40",
                                                            "--set", "save_steps=10")]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "checkpoint-10" / "trainer_state.json").is_file():
        assert p.poll() is None and time.time() < deadline, "adaptation ended before it could be killed"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "llm_ner_adapt.json").exists()
    refused = subprocess.run(cmd, capture_output=True, text=True)  # without --resume: the dir is not empty
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads((out / "llm_ner_adapt.json").read_text())
    assert rec["steps"] == 40
    steps = [s for s, _ in rec["loss_curve"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # resumed from step 10: no step logged twice


def test_adapt_bad_input_is_one_line(tmp_path, tiny_llama):
    tiny_pool = tmp_path / "small.txt"
    tiny_pool.write_text("One short line .\n")
    r = runner.invoke(app, adapt_args(tiny_llama, tiny_pool, tmp_path / "o"))
    assert r.exit_code == 2 and "chunks" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, adapt_args(tiny_llama, tiny_pool, tmp_path / "o", "--set", "mask_ratio=1.5"))
    assert r.exit_code == 2 and "mask_ratio" in r.output


def test_head_init_points_each_type_at_its_name(tiny_llama, tiny_tokenizer):
    import torch
    from tiny import ner_config

    from llm_ner.labels import LabelSet, type_phrase
    from llm_ner.modeling.model import LLMForTokenClassification
    from llm_ner.training.head_init import init_head, phrase_states

    labels = LabelSet.from_types(["PER", "LOC", "creative-work"], {"LOC": "a place on a map"})
    assert [type_phrase(labels, t) for t in labels.types] == ["location", "person", "creative work"]
    assert type_phrase(labels, "LOC", describe=True) == "a place on a map"
    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(ner_config(labels, str(tiny_llama), head_init="descriptions"))
    before = model.classifier.weight.detach().clone()
    init_head(model, tiny_tokenizer)
    w, t2i = model.classifier.weight.detach(), labels.tag2id
    assert torch.equal(w[0], before[0])  # O keeps its random row
    states = phrase_states(model.eval(), tiny_tokenizer, ["a place on a map", "person", "creative work"])
    centred = states - states.mean(0)
    for k, t in enumerate(labels.types):
        assert torch.equal(w[t2i[f"B-{t}"]], w[t2i[f"I-{t}"]])
        assert torch.cosine_similarity(w[t2i[f"B-{t}"]], centred[k], dim=0) > 0.999
        assert w[t2i[f"B-{t}"]].norm() == pytest.approx(0.02 * w.size(1) ** 0.5, rel=1e-4)


def test_compare_and_curve_reuse_one_adapted_backbone(pool, tmp_path, tiny_llama):
    """`--adapt` adapts each backbone once, in OUTPUT/adapted/NAME, and every later run reuses it; a dir adapted
    from another backbone or pool is refused, not silently reused."""
    from llm_ner.training.adapt import AdaptError, adapted_backbone

    out = tmp_path / "adapted" / tiny_llama.name
    r = runner.invoke(app, adapt_args(tiny_llama, pool, out, "--max-steps", "2"))
    assert r.exit_code == 0, r.output
    stamp = (out / "llm_ner_adapt.json").stat().st_mtime_ns
    assert adapted_backbone(str(tiny_llama), str(pool), tmp_path) == str(out)
    assert (out / "llm_ner_adapt.json").stat().st_mtime_ns == stamp  # reused, not adapted again
    with pytest.raises(AdaptError, match="not"):
        adapted_backbone(str(tiny_llama), "conll2003:train", tmp_path)
