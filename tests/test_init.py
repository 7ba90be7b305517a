"""Issue 23 item 2 and the loop end to end: `llm-ner train --init RUN/model` continues a trained model (same labels,
or new types with fresh head rows), and select -> Label Studio -> correction (the hidden gold) -> export -> train
--init runs on the tiny model."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.data import load_corpus, spans
from llm_ner.labels import LabelSet
from llm_ner.modeling.model import LLMForTokenClassification
from llm_ner.modeling.persistence import read_model_config
from llm_ner.modeling.processor import sentence_text

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()


@pytest.fixture(scope="module")
def first_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop") / "run1"
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(out), "--max-steps", "2", "--set",
                            "data.max_train_sentences=24", "--set", "data.dev=null", "--set", "data.test=null",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


def _ls_export(sentences, path):
    """Label Studio's export of tasks annotated as the gold says (the annotator's corrections)."""
    tasks = []
    for k, s in enumerate(sentences):
        text, offs = sentence_text(s.tokens)
        result = [{"id": f"r{k}_{j}", "from_name": "label", "to_name": "text", "type": "labels",
                   "value": {"start": offs[a][0], "end": offs[b][1], "text": text[offs[a][0]:offs[b][1]],
                             "labels": [t]}} for j, (t, a, b) in enumerate(spans(s.tags))]
        tasks.append({"id": k + 1, "data": {"text": text},
                      "annotations": [{"id": k + 1, "was_cancelled": False, "result": result}]})
    path.write_text(json.dumps(tasks))


def test_select_label_studio_correct_export_train_init(first_run, tmp_path):
    gold = {sentence_text(s.tokens)[0]: s for s in load_corpus("conll2003:train", limit=80)[24:]}
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in gold))
    r = runner.invoke(app, ["select", "--model", str(first_run / "model"), "--pool", str(pool), "--n", "8",
                            "--output", str(tmp_path / "tasks.json")])
    assert r.exit_code == 0, r.output
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert len(tasks) == 8 and all("predictions" in t for t in tasks)
    chosen = [gold[t["data"]["text"]] for t in tasks]  # correction: the hidden gold of the chosen texts
    _ls_export(chosen, tmp_path / "export.json")
    r = runner.invoke(app, ["train", "--init", str(first_run / "model"), "--train", str(tmp_path / "export.json"),
                            "--output", str(tmp_path / "run2"), "--max-steps", "1", "--set", "data.dev=null",
                            "--set", "data.test=null", "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert summary["init"]["model_dir"] == str(first_run / "model") and len(summary["init"]["version"]) == 12
    assert yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())["training"]["init"] == str(
        first_run / "model")
    assert summary["labels"] == json.loads((first_run / "summary.json").read_text())["labels"]
    assert summary["train_sentences"] == 8
    # and the texts now labelled are not chosen again from the same pool (the new model's training data)
    r = runner.invoke(app, ["select", "--model", str(tmp_path / "run2" / "model"), "--pool", str(pool), "--n", "3",
                            "--to", "jsonl", "--output", str(tmp_path / "next.jsonl")])
    assert r.exit_code == 0, r.output
    again = {json.loads(x)["text"] for x in (tmp_path / "next.jsonl").read_text().splitlines()}
    assert not again & {t["data"]["text"] for t in tasks}


def test_init_keeps_the_saved_rows_and_adds_fresh_ones(first_run):
    saved = read_model_config(first_run / "model")
    old = LLMForTokenClassification.from_pretrained(first_run / "model")
    same = LLMForTokenClassification.from_init(first_run / "model", saved)
    for key, value in old.head_state_dict().items():  # same labels: the very same head, CRF included
        assert torch.equal(value, same.head_state_dict()[key]), key
    assert same.backbone_changed  # a fine-tuned backbone: saving writes it in full, whatever the mode
    labels = LabelSet.from_types([*LabelSet.from_dict(saved.labels).types, "PROD"])
    grown = LLMForTokenClassification.from_init(first_run / "model", saved.model_copy(update={
        "labels": labels.to_dict()}))
    old_tags, new_tags = old.labels.tags, grown.labels.tags
    assert set(old_tags) < set(new_tags) and "B-PROD" in new_tags
    for i, t in enumerate(old_tags):
        j = new_tags.index(t)
        assert torch.equal(old.classifier.weight[i], grown.classifier.weight[j])
        assert torch.equal(old.crf.start[i], grown.crf.start[j]) and torch.equal(old.crf.end[i], grown.crf.end[j])
        for k, u in enumerate(old_tags):
            assert old.crf.transitions[i, k] == grown.crf.transitions[j, new_tags.index(u)]
    # the IOB2 constraints are the new label set's: O -> I-PROD forbidden
    o, i_prod = new_tags.index("O"), new_tags.index("I-PROD")
    assert grown.crf.trans_mask[o, i_prod] < -1000 and grown.crf.start_mask[i_prod] < -1000


def test_init_errors_are_one_line(first_run, tmp_path):
    other = tmp_path / "pii.jsonl"  # types the model never had, none of its own
    other.write_text(json.dumps({"text": "Mail me at a@b.org today", "entities": [
        {"start": 11, "end": 18, "label": "EMAIL"}]}) + "\n")
    cases = [(["--init", str(first_run / "model"), "--train", str(other)], "share none with the model it continues"),
             (["--init", str(tmp_path / "nowhere")], "nowhere")]
    for args, want in cases:
        r = runner.invoke(app, ["train", *args, "--output", str(tmp_path / "x"), "--max-steps", "1", "--set",
                                "data.dev=null", "--set", "data.test=null", "--no-progress"])
        errors = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert r.exit_code == 2 and len(errors) == 1 and want in errors[0], r.output


@pytest.mark.parametrize("mode", ["lora", "frozen"])
def test_init_keeps_the_saved_training_mode(tiny_llama, tmp_path, mode):
    """Issue 43: --init took only the saved model section, so every retraining round of a LoRA or frozen-backbone
    model was a full fine-tune. The saved mode (and LoRA settings) now carry over unless the run sets its own."""
    first = tmp_path / "first"
    base = ["--output", str(first), "--max-steps", "1", "--set", "data.max_train_sentences=8", "--set",
            "data.dev=null", "--set", "data.test=null", "--no-progress"]
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--set", f"training.mode={mode}", "--set",
                            "training.lora.r=4", *base])
    assert r.exit_code == 0, r.output
    for k, extra in enumerate(([], ["--set", "training.mode=full"])):
        out = tmp_path / f"again{k}"
        r = runner.invoke(app, ["train", "--init", str(first / "model"), "--output", str(out), "--max-steps", "1",
                                "--set", "data.max_train_sentences=8", "--set", "data.dev=null", "--set",
                                "data.test=null", "--no-progress", *extra])
        assert r.exit_code == 0, r.output
        training = yaml.safe_load((out / "config.yaml").read_text())["training"]
        want = mode if not extra else "full"
        assert training["mode"] == want and read_model_config(out / "model").mode == want
        if want == "lora":
            assert training["lora"]["r"] == 4
