import json

import pytest
from approx import SCORE_ATOL
from transformers import TrainerCallback
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.config import ConfigError, load_config
from llm_ner.training.train import TrainError, train

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()


def tiny_cfg(tiny_llama, out, **over):
    base = {"model.backbone": str(tiny_llama), "data.max_train_sentences": 48, "data.max_dev_sentences": 24,
            "data.max_test_sentences": 24, "training.max_steps": 8, "training.eval_steps": 4,
            "training.logging_steps": 1, "training.batch_size": 4, "output": str(out)}
    base.update(over)
    return load_config(None, base)


def test_cli_train_evaluate_predict_end_to_end(tiny_llama, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(out), "--max-steps", "6",
                            "--set", "data.max_train_sentences=32", "--set", "data.max_dev_sentences=16",
                            "--set", "data.max_test_sentences=20", "--set", "training.eval_steps=3",
                            "--mode", "lora", "--no-progress"])
    assert r.exit_code == 0, r.output
    for f in ("config.yaml", "metrics.jsonl", "test_metrics.json", "test_predictions.conll", "summary.json",
              "model/llm_ner_config.json", "model/head.safetensors", "model/adapter/adapter_model.safetensors"):
        assert (out / f).is_file(), f
    test_m = json.loads((out / "test_metrics.json").read_text())
    assert {"accuracy", "precision", "recall", "f1", "macro_f1", "per_type"} <= set(test_m)
    assert set(test_m["per_type"]) == {"PER", "ORG", "LOC", "MISC"}
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_f1" in r for r in recs) and any("loss" in r for r in recs)

    # evaluate on the same data, at the precision the run measured in (fp32), must reproduce the run's numbers
    m_json = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", "--model", str(out / "model"), "--data", "conll2003:test", "--limit", "20",
                            "--output", str(m_json), "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert json.loads(m_json.read_text())["f1"] == pytest.approx(test_m["f1"])
    assert json.loads(m_json.read_text())["run_precision"] == "fp32" == test_m["run_precision"]
    # and `score` on the written predictions too
    r = runner.invoke(app, ["score", str(out / "test_predictions.conll"), str(m_json.with_suffix(".conll")),
                            "--json"])
    assert r.exit_code == 0, r.output

    r = runner.invoke(app, ["predict", "--model", str(out / "model"), "--text", "Peter visited New York ."])
    assert r.exit_code == 0 and '"entities"' in r.output
    inp = tmp_path / "in.txt"
    inp.write_text("EU rejects German call\n\nPeter Blackburn\n")
    r = runner.invoke(app, ["predict", "--model", str(out / "model"), "--input", str(inp), "--output",
                            str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3


class Crash(TrainerCallback):
    """Simulates a kill after `at` steps (after the checkpoint at step 4 was written)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


def losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.mark.parametrize("mode", ["full", "lora", "frozen"])
def test_resume_after_interruption_reproduces_the_same_losses(tiny_llama, tmp_path, mode):
    # lora/frozen checkpoints hold only the trained weights: resuming them once raised AttributeError in transformers
    ref = tiny_cfg(tiny_llama, tmp_path / "ref", **{"training.mode": mode})
    train(ref, progress=False)
    cfg = tiny_cfg(tiny_llama, tmp_path / "b", **{"training.mode": mode})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[Crash(6)])
    assert (tmp_path / "b" / "checkpoints" / "checkpoint-4").is_dir()
    summary = train(cfg, resume=True, progress=False)
    assert summary["global_step"] == 8
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "b")
    assert set(range(1, 9)) <= set(a)
    for step in range(5, 9):  # steps after the checkpoint: same data, same RNG, same weights -> same losses
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_resume_before_the_first_checkpoint_starts_clean(tiny_llama, tmp_path):
    # a run killed before its first checkpoint left metrics.jsonl lines that the fresh start must not keep
    cfg = tiny_cfg(tiny_llama, tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[Crash(3)])
    assert losses(tmp_path / "b") and not (tmp_path / "b" / "checkpoints" / "checkpoint-4").exists()
    train(cfg, resume=True, progress=False)
    recs = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in recs if "loss" in r) == list(range(1, 9))  # each step's loss logged once


def test_resume_with_a_changed_model_config_is_a_clear_error(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "b", **{"training.mode": "lora"})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, callbacks=[Crash(6)])
    changed = tiny_cfg(tiny_llama, tmp_path / "b", **{"training.mode": "lora", "training.lora.targets": ["q_proj"]})
    with pytest.raises(TrainError, match="does not match this run's model"):
        train(changed, resume=True, progress=False)


def test_config_errors_are_clear(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match="training.learning_rat: unknown key"):
        load_config(p)
    r = runner.invoke(app, ["train", "--config", str(p)])
    assert r.exit_code == 2 and "unknown key" in r.output
    p.write_text("training:\n  learning_rate: -1\n")
    with pytest.raises(ConfigError, match="training.learning_rate"):
        load_config(p)


def test_unwritable_output_fails_before_training(tiny_llama, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainError, match="not writable"):
        train(tiny_cfg(tiny_llama, blocker / "run"), progress=False)


def test_bad_data_file_is_one_line_cli_error(tiny_llama, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("EU B-ORG\nrejects\n")
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--train", str(bad), "--output",
                            str(tmp_path / "r")])
    assert r.exit_code == 2
    assert "bad.txt:2: expected 'token ... tag'" in r.output and "Traceback" not in r.output


def test_export_merge_lora_and_pipeline_output(tiny_llama, tmp_path):
    from llm_ner.inference.engine import NERModel

    out = tmp_path / "run"
    # a high learning rate: the adapters must change the model, or merging them would be compared on a no-op
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(out), "--max-steps", "4",
                            "--mode", "lora", "--set", "data.max_train_sentences=16", "--set", "data.dev=null",
                            "--set", "data.test=null", "--set", "training.learning_rate=0.01", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--model", str(out / "model"), "--output", str(tmp_path / "merged"),
                            "--merge-lora"])
    assert r.exit_code == 0 and "backbone: full" in r.output, r.output
    assert not (tmp_path / "merged" / "adapter").exists()
    a, b = NERModel.from_pretrained(out / "model"), NERModel.from_pretrained(tmp_path / "merged")
    text = "Peter visited New York and Washington on Monday ."
    (tags_a, conf_a), (tags_b, conf_b) = a.decode(a.run([text])), b.decode(b.run([text]))
    assert tags_a == tags_b and conf_a[0] == pytest.approx(conf_b[0], abs=SCORE_ATOL)  # merging changes no decision
    with a.model.backbone.disable_adapter():  # and the adapters do matter: without them the scores move
        tags_0, conf_0 = a.decode(a.run([text]))
    assert tags_0 != tags_a or max(abs(x - y) for x, y in zip(conf_0[0], conf_a[0], strict=True)) > 10 * SCORE_ATOL
    for d in b(text).to("pipeline")[0]:
        assert set(d) == {"entity_group", "score", "word", "start", "end"} and text[d["start"]:d["end"]] == d["word"]


def test_bf16_autocast_on_a_cpu_with_native_bf16(monkeypatch):
    from llm_ner.config import load_config
    from llm_ner.training import train as T

    cfg = load_config(None, {"training.precision": "bf16"}).training
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    # the CPU rule, tested on a GPU machine too (cuda hidden): the GPU rule has its own cases below
    monkeypatch.setattr(T.torch.cuda, "is_available", lambda: False)
    assert T.mixed_precision(cfg) == "bf16"
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)
    assert T.mixed_precision(cfg) is None  # emulated bf16 is slower than fp32: stay fp32
    assert T.mixed_precision(load_config(None, {}).training) is None  # auto on a CPU: fp32
    # GPU: bf16 where it has it ("auto" or "bf16"), fp16 only if asked, else fp32
    monkeypatch.setattr(T.torch.cuda, "is_available", lambda: True)
    for bf16_ok, precision, want in ((True, "auto", "bf16"), (True, "bf16", "bf16"), (False, "auto", None),
                                     (False, "fp16", "fp16"), (True, "fp32", None)):
        monkeypatch.setattr(T.torch.cuda, "is_bf16_supported", lambda ok=bf16_ok: ok)
        got = T.mixed_precision(load_config(None, {"training.precision": precision}).training)
        assert got == want, (bf16_ok, precision, got)


def test_report_to_tensorboard_writes_event_files(tiny_llama, tmp_path):
    """training.report_to: tensorboard passes through to the Trainer: event files appear in RUN/tensorboard and hold
    the training loss and the dev F1 the run logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_cfg(tiny_llama, out, **{"training.report_to": "tensorboard", "training.calibrate": False}),
          progress=False)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list(out.iterdir())
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "train/loss" in tags and "eval/f1" in tags, tags
    assert len(acc.Scalars("train/loss")) >= 8  # logging_steps 1, 8 steps


def test_report_to_is_validated(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="report_to"):
        tiny_cfg(tiny_llama, tmp_path / "r", **{"training.report_to": "tensorbored"})
    assert tiny_cfg(tiny_llama, tmp_path / "r").training.report_to == []  # none by default


def test_the_last_step_is_evaluated_once(tiny_llama, tmp_path):
    """8 steps, evaluations every 3: at 3, 6 and the last step 8 — each once (a second evaluation of the same
    weights would cost a dev pass and count towards early stopping)."""
    out = tmp_path / "run"
    train(tiny_cfg(tiny_llama, out, **{"training.eval_steps": 3, "training.calibrate": False}), progress=False)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if "eval_f1" in json.loads(x)]
    assert steps == [3, 6, 8], steps


def test_training_in_passes_learns_the_same_model(tiny_llama, tmp_path):
    """training.max_tokens_per_pass (issue 22: bounded memory) changes how a step is computed, not what it computes:
    the same losses step by step and the same tags from the trained model."""
    from llm_ner.data import load_corpus
    from llm_ner.inference.engine import NERModel

    over = {"model.head_dropout": 0.0, "training.batch_size": 8, "training.max_steps": 4, "training.eval_steps": 4}
    train(tiny_cfg(tiny_llama, tmp_path / "one", **over), progress=False)
    train(tiny_cfg(tiny_llama, tmp_path / "passes", **over, **{"training.max_tokens_per_pass": 24}), progress=False)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "passes")
    assert set(a) == set(b) == set(range(1, 5))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    sents = load_corpus("conll2003:valid")[:40]
    one, passes = ((m := NERModel.from_pretrained(tmp_path / d / "model")).decode(m.run(sents))[0]
                   for d in ("one", "passes"))
    assert passes == one
