"""Entity scores: the span probability, calibration metrics, temperature scaling and thresholds."""

import json

import pytest
import torch
from approx import SCORE_ATOL
from test_model import LABELS, build
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.data import load_corpus
from llm_ner.evaluation.calibrate import calibrate, thresholds_for_precision
from llm_ner.evaluation.evaluate import calibration_metrics, evaluate_model, scored_entities
from llm_ner.inference.engine import NERModel
from llm_ner.inference.outputs import Thresholds

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()


def test_calibration_metrics_by_hand():
    scored = [(0.95, True, "PER"), (0.95, False, "PER"), (0.55, True, "LOC"), (0.15, False, "LOC")]
    m = calibration_metrics(scored, n_gold=4)
    # bins: [0.9,1.0]: 2 entities, mean 0.95, accuracy 0.5; [0.5,0.6): 1, 0.55, 1.0; [0.1,0.2): 1, 0.15, 0.0
    assert m["ece"] == pytest.approx(0.5 * 0.45 + 0.25 * 0.45 + 0.25 * 0.15)
    t = {x["threshold"]: x for x in m["thresholds"]}
    assert t[0.9]["precision"] == 50 and t[0.9]["recall"] == 25 and t[0.5]["entities"] == 3


def test_scored_entities_match_exact_span_and_type():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]
    assert scored_entities(gold, pred, [[0.9, 0.9, 0.5, 0.4]]) == [(0.9, True, "PER"), (0.4, False, "ORG")]


def test_thresholds_reach_the_target_precision():
    scored = [(0.99, True, "PER"), (0.9, True, "PER"), (0.8, False, "PER"), (0.7, True, "PER"),
              (0.6, False, "LOC")]
    th = thresholds_for_precision(scored, 0.75)
    assert th["PER"] == 0.7  # keeping all four PER: 3/4 = 0.75
    assert th["LOC"] == 1.01  # never reaches it: every LOC goes to review
    assert thresholds_for_precision(scored, 1.0)["PER"] == 0.9


def test_entity_score_without_crf_is_the_product_of_its_event(tiny_llama):
    model = build(tiny_llama, crf=False)
    logits = torch.randn(1, 4, len(LABELS))
    t = LABELS.tag2id
    logits[0, 0, t["B-PER"]] = logits[0, 1, t["I-PER"]] = 8.0  # B-PER I-PER then something else
    logits[0, 2, t["O"]] = logits[0, 3, t["O"]] = 8.0
    mask = torch.ones(1, 4, dtype=torch.bool)
    paths, conf = model.decoder.decode(logits, mask)
    p = torch.softmax(logits[0], -1)
    want = p[0, t["B-PER"]] * p[1, t["I-PER"]] * (1 - p[2, t["I-PER"]])
    assert paths[0][:2] == [t["B-PER"], t["I-PER"]]
    assert conf[0][0] == conf[0][1] == pytest.approx(want.item(), rel=1e-5)


def test_temperature_moves_scores_never_tags(tiny_llama, tiny_tokenizer, tmp_path):
    model = build(tiny_llama)  # CRF
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    dev = load_corpus("conll2003:valid", limit=40)
    ner = NERModel.from_pretrained(tmp_path / "m", precision="fp32")  # as calibrate() fits it
    m0, pred0 = evaluate_model(ner, dev)
    res = calibrate(tmp_path / "m", dev, "conll2003:valid", target_precision=0.9)
    cal = json.loads((tmp_path / "m" / "calibration.json").read_text())
    assert cal["temperature"] == res["temperature"] and cal["temperature"] != 1.0  # a random head is miscalibrated
    assert res["ece_after"] <= res["ece_before"]
    assert set(cal["thresholds"]) <= set(LABELS.types)
    ner2 = NERModel.from_pretrained(tmp_path / "m", precision="fp32")
    assert ner2.temperature == cal["temperature"]
    m1, pred1 = evaluate_model(ner2, dev)
    assert pred1 == pred0 and m1["f1"] == m0["f1"]  # the same tags
    assert m1["calibration"]["temperature"] == cal["temperature"]
    assert m1["calibration_uncalibrated"]["ece"] == pytest.approx(m0["calibration"]["ece"])
    assert m1["calibration"]["ece"] == pytest.approx(res["ece_after"])


def test_calibrate_cli(tiny_llama, tiny_tokenizer, tmp_path):
    build(tiny_llama).save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    r = runner.invoke(app, ["calibrate", "--model", str(tmp_path / "m"), "--data", "conll2003:valid", "--limit", "20",
                            "--target-precision", "0.9"])
    assert r.exit_code == 0, r.output
    assert "temperature" in r.output and "thresholds for precision 0.9" in r.output
    r = runner.invoke(app, ["calibrate", "--model", str(tmp_path / "m"), "--data", "conll2003:valid",
                            "--target-precision", "95"])
    assert r.exit_code == 2 and "between 0 and 1" in r.output


def test_thresholds_apply_to_predict_and_the_rest_is_for_review(tiny_ner_dir, tmp_path):
    ner = NERModel.from_pretrained(tiny_ner_dir)
    texts = ["Peter visited New York and Washington on Monday .", "Apple hired John Smith from Google in London ."]
    every = ner(texts).entities
    label = next(e.label for ents in every for e in ents)
    # as if calibrate found no threshold reaching the target for this type
    ner.thresholds = Thresholds.of(by_type={label: 1.01})
    kept = ner(texts).entities
    both = ner(texts).results
    assert all(e.label != label for ents in kept for e in ents)
    assert [k for k, _ in both] == kept
    assert all(sorted(k + r, key=lambda e: e.start) == ents for (k, r), ents in zip(both, every, strict=True))
    out = tmp_path / "in.txt"
    out.write_text("\n".join(texts))
    ner.thresholds = Thresholds()
    scores = sorted(e.score for ents in ner(texts).entities for e in ents)
    # the cut in the widest gap between two neighbouring scores: both sides hold entities, and a score moving by the
    # float tolerance (another batch, another CPU) cannot cross it
    gap, i = max((b - a, i) for i, (a, b) in enumerate(zip(scores[:-1], scores[1:], strict=True)))
    assert gap > 2 * SCORE_ATOL, scores
    cut = (scores[i] + scores[i + 1]) / 2
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(out), "--output",
                            str(tmp_path / "o.jsonl"), "--min-score", str(cut), "--review"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    kept, low = [e for x in rows for e in x["entities"]], [e for x in rows for e in x["needs_review"]]
    assert kept and low, (kept, low)  # both sides hold entities, so the split is tested
    assert all(e["score"] >= cut for e in kept) and all(e["score"] < cut for e in low)
    assert len(kept) + len(low) == len(scores)  # nothing lost
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--text", "a", "--min-score", "5"])
    assert r.exit_code == 2 and "between 0 and 1" in r.output


def test_the_logistic_recalibration_is_fitted_chosen_saved_and_served(tiny_ner_dir, tmp_path):
    """Gold made so that an entity is right exactly when its form was 'seen in training': the logistic learns it, is
    chosen by `auto` over the temperature (lower held-out ECE), is saved, and every entry point serves its scores."""
    import shutil
    from dataclasses import replace

    from llm_ner.inference.confidence import Logistic, seen_forms

    d = tmp_path / "model"
    shutil.copytree(tiny_ner_dir, d)
    ner = NERModel.from_pretrained(d, precision="fp32")  # calibrate() fits fp32 scores
    sents = load_corpus("conll2003:valid", limit=120)
    pred = ner(sents).tags
    # sentences 0, 1, 4, 5, ...: gold = the model's own tags (its entities right); the others: no entity (all wrong)
    gold = [replace(s, tags=p if i % 4 < 2 else ["O"] * len(p))
            for i, (s, p) in enumerate(zip(sents, pred, strict=True))]
    seen = seen_forms([g for i, g in enumerate(gold) if i % 4 < 2])
    res = calibrate(d, gold, "made-up", method="auto", seen=seen)
    assert set(res["held_out_ece"]) == {"temperature", "logistic"}
    assert res["method"] == "logistic" and res["held_out_ece"]["logistic"] < res["held_out_ece"]["temperature"]
    cal = json.loads((d / "calibration.json").read_text())
    lg = Logistic.from_dict(cal["logistic"])
    assert lg.coef[1] > 0 and lg.seen == seen  # seen in training raises the score
    served = NERModel.from_pretrained(d, precision="fp32")
    assert served.temperature == 1.0 and served.recalibration == lg
    m, tags = evaluate_model(served, gold)
    assert tags == pred and m["calibration"]["method"] == "logistic"  # tags unchanged
    assert m["calibration"]["ece"] == pytest.approx(res["ece_after"], abs=1e-6)
    assert m["calibration"]["ece"] < m["calibration_uncalibrated"]["ece"]
    text = " ".join(sents[0].tokens)
    raw, recal = ner(text).entities[0], served(text).entities[0]
    assert [(e.start, e.end, e.label) for e in raw] == [(e.start, e.end, e.label) for e in recal] and raw
    for a, b in zip(raw, recal, strict=True):
        assert b.score == pytest.approx(lg.score(a.score, a.text, a.label, len(a.text.split())), abs=SCORE_ATOL)
    r = runner.invoke(app, ["calibrate", "--model", str(d), "--data", "conll2003:valid", "--method", "logistic"])
    assert r.exit_code == 2 and "--train" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(app, ["calibrate", "--model", str(d), "--data", "conll2003:valid", "--method", "platt"])
    assert r.exit_code == 2 and "temperature, logistic" in r.output
