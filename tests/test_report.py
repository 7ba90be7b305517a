
import json

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels

runner = CliRunner()


def test_compare_and_report_from_real_runs(tiny_llama, tmp_path):
    from tiny import make_bert

    common = ["--set", "data.max_train_sentences=24", "--set", "data.max_dev_sentences=8", "--set",
              "data.max_test_sentences=12", "--set", "training.eval_steps=2", "--no-progress"]
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(tmp_path / "llm"), "--max-steps",
                            "2", *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["baseline", "encoder", "--model", str(make_bert(tmp_path / "bert")), "--output",
                            str(tmp_path / "enc"), "--max-steps", "2", *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", "--systems", "llm,encoder", "--llm-run", str(tmp_path / "llm"),
                            "--encoder-run", str(tmp_path / "enc"), "--output", str(tmp_path / "cmp")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]
    llm_f1 = json.loads((tmp_path / "llm" / "test_metrics.json").read_text())["f1"]
    assert rows[0]["f1"] == llm_f1 and rows[0]["peak_rss_mb"] > 0 and rows[1]["params_total"] > 0
    assert f"{llm_f1:.2f}" in (tmp_path / "cmp" / "comparison.md").read_text()

    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(tmp_path / "llm_seed7"),
                            "--max-steps", "2", "--set", "training.seed=7", "--set", "training.max_tokens_per_pass=64",
                            *common])
    assert r.exit_code == 0, r.output  # the same recipe (passes change how, not what), another seed: summarised
    for run in ("llm", "llm_seed7"):
        r = runner.invoke(app, ["evaluate", "--model", str(tmp_path / run / "model"), "--data", "conll2003:valid",
                                "--limit", "8", "--output", str(tmp_path / run / "dev8_metrics.json")])
        assert r.exit_code == 0, r.output  # another set scored beside the run: the ECE table shows it

    study = tmp_path / "study.json"  # as scripts/study.py writes it
    run = {"seed": 1, "dev_f1": 2.0, "test_f1": 1.0, "train_seconds": 3, "predict_words_per_s": 5, "run_dir": "x"}
    study.write_text(json.dumps({"config": "quickstart", "rows": [
        {"name": "unmask all (quickstart)", "overrides": {}, "runs": [run, {**run, "dev_f1": 3.0}], "dev_f1": 2.5,
         "dev_f1_sd": 0.71, "test_f1": 1.0, "test_f1_sd": 0.0, "train_seconds": 3, "predict_words_per_s": 5},
        {"name": "document context", "overrides": {"data.context": "document"}, "runs": [run], "dev_f1": 4.0,
         "dev_f1_sd": None, "test_f1": 3.5, "test_f1_sd": None, "train_seconds": 4, "predict_words_per_s": 9}]}))
    r = runner.invoke(app, ["report", str(tmp_path / "cmp"), str(tmp_path / "llm_seed7"), "--output",
                            str(tmp_path / "rep"), "--study", str(study)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    for section in ("Dataset and why", "Model and why", "How the LLM was transformed", "Results", "Failure cases",
                    "Limitations and improvements", "Decoder study", "Confidence"):
        assert f"## {section}" in md and section in html
    assert f"test F1 {llm_f1:.1f}" in md
    seeds = [x for x in md.splitlines() if x.startswith("- **Over 2 seeds** (42 / 7; llm, llm_seed7): test F1 **")]
    assert len(seeds) == 1 and "conll2003:valid F1 " in seeds[0] and "training " in seeds[0], md
    assert "- Seeds 42 / 7 of this recipe: test F1 moves by a sample sd of" in md and "- One seed (" not in md
    # curves, per-type, confusion, errors, reliability + threshold curves, study — inlined
    assert html.count("data:image/png;base64,") == 6
    assert "Expected calibration error of the test entities' scores" in md
    ece_rows = [x for x in md.split("## Confidence")[1].split("\n## ")[0].splitlines() if x.startswith("| ")]
    assert ece_rows[0].startswith("| evaluation set | F1 | ECE (fitted T)") and len(ece_rows) == 4, ece_rows
    assert "fitted here, in-sample" in ece_rows[1] and ece_rows[2].startswith("| conll2003:test | ")
    assert ece_rows[3].startswith("| conll2003:valid | ")  # named by the data it was run on
    assert "Best on dev: **document context** (dev 4.00, test 3.50, 1 seed): +1.50 dev F1" in md
    assert "more than the larger seed spread" in md and "Fastest prediction: **document context**" in md
    assert "Why it can help: the other sentences of the document disambiguate a name" in md
    assert "<mark" in html  # displacy-style examples
    assert "{" not in md.split("## Dataset")[1].split("## Model")[0]  # no unfilled template fields
    # the encoder run is the encoder (it trains with unmask: all, like the LLM), so the LLM-vs-encoder line is there
    assert "(encoder): test F1" in md and "(llm): test F1" in md
    assert "F1 points above the encoder (" in md or "F1 points below the encoder (" in md
    assert "this run reads single sentences" in md and "quantisation in the GGUF" not in md  # the facts of this run

    # the prose follows the run's saved config: document context and a quantised bundled backbone
    saved = tmp_path / "llm" / "model" / "llm_ner_config.json"
    mcfg = json.loads(saved.read_text())
    saved.write_text(json.dumps({**mcfg, "context": "document", "model": {**mcfg["model"], "backbone": "gemma3-270m"}}))
    r = runner.invoke(app, ["report", str(tmp_path / "cmp"), "--output", str(tmp_path / "rep2")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep2" / "report.md").read_text()
    assert "Document context is used" in md and "this run reads single sentences" not in md
    assert "4-bit Q4_K_M quantisation in the GGUF" in md and "Q4_1" not in md


def test_report_names_the_prompted_model_not_its_cache_path(tiny_llama, tmp_path):
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(tmp_path / "llm"), "--max-steps",
                            "1", "--set", "data.max_train_sentences=8", "--set", "data.dev=null", "--set",
                            "data.max_test_sentences=6", "--no-progress"])
    assert r.exit_code == 0, r.output
    prompt = tmp_path / "prompt"  # a prompted run as `baseline prompt` writes it against a local server
    prompt.mkdir()
    for f in ("test_metrics.json", "test_predictions.conll"):
        (prompt / f).write_text((tmp_path / "llm" / f).read_text())
    (prompt / "prompt_stats.json").write_text(json.dumps({
        "model": "/root/.cache/llm-ner/backbones/smollm2-135m", "model_name": "smollm2-135m", "k_shot": 3,
        "counts": {"requests": 6}, "latency_p50": 1.0, "tokens_per_second": 2.0}))
    r = runner.invoke(app, ["report", str(tmp_path / "llm"), str(prompt), "--output", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "The prompted baseline (smollm2-135m, 3-shot)" in md and "/root/.cache" not in md


def test_the_readme_carries_the_reports_published_table():
    """Published numbers are typed once (report/build.py PUBLISHED): the README shows the report's rendering."""
    from pathlib import Path

    from llm_ner.report.build import published_table

    assert published_table() in (Path(__file__).parents[1] / "README.md").read_text()


def test_backbone_prose_comes_from_the_backbone_table():
    """'Model and why' is the backbone table's text plus its quantisation field and its family's quirks: changing the
    table changes the prose."""
    from dataclasses import replace

    from llm_ner.modeling import backbones
    from llm_ner.report import sections

    def model_prose(backbone: str, model_type: str = "gemma3_text") -> str:
        run = {"name": "r", "model": backbone, "summary": {"model_type": model_type}, "config": {},
               "run": type("R", (), {"config": None})()}
        return sections.render("model.md.j2", sections.facts(run))

    text = model_prose("gemma3-270m")
    assert backbones.BACKBONES["gemma3-270m"].why in text and "4-bit Q4_K_M quantisation" in text
    assert backbones.FAMILIES["gemma3_text"].quirks in text and "sliding-window" in text
    saved = backbones.BACKBONES["gemma3-270m"]
    try:
        backbones.BACKBONES["gemma3-270m"] = replace(saved, why="A test backbone.", quantisation=None)
        assert "A test backbone." in model_prose("gemma3-270m") and "quantisation" not in model_prose(
            "gemma3-270m", "llama")
    finally:
        backbones.BACKBONES["gemma3-270m"] = saved
    assert "the transformation does not depend on it" in model_prose("/some/local/model", "llama")
    eg = model_prose("embeddinggemma-300m")
    assert "an encoder (trained bidirectional) under the Gemma licence" in eg and backbones.BACKBONES[
        "embeddinggemma-300m"].why in eg
    assert "a decoder (trained causal)" in text
    run = {"name": "r", "model": "embeddinggemma-300m", "summary": {}, "config": {}, "run": type("R", (), {
        "config": None})()}
    assert "nothing to unmask" in sections.render("transformed.md.j2", sections.facts(run))


def test_backbone_family_table_drives_lora_and_int8():
    """model.py takes LoRA targets from the family table when the config names none; quantize.py skips SmoothQuant
    for a family whose table says so."""
    from llm_ner.modeling import backbones

    assert backbones.family("llama").int8_smoothing and not backbones.family("gemma3_text").int8_smoothing
    assert backbones.family("some-new-arch") is backbones.family("llama")
    assert "query" in backbones.family("bert").lora_targets


def test_report_shows_the_learning_curve_and_the_active_learning_simulation(tiny_llama, tmp_path):
    """`report --curve --al`: a figure and a section each; the verdicts are computed from the result files."""
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(tmp_path / "llm"), "--max-steps",
                            "1", "--set", "data.max_train_sentences=8", "--set", "data.dev=null", "--set",
                            "data.max_test_sentences=6", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = [{"system": s, "sentences": n, "seed": seed, "dev_f1": 0.0, "test_f1": f1, "train_seconds": 60.0}
            for s, n, seed, f1 in (("llm", 250, 1, 60.0), ("llm", 250, 2, 62.0), ("encoder", 250, 1, 40.0),
                                   ("encoder", 250, 2, 44.0), ("llm", 1000, 1, 75.0), ("encoder", 1000, 1, 70.0))]
    for row in rows:  # what each side trained, as `learning-curve` records it
        row.update({"backbone": "gemma3-270m", "head": "crf"} if row["system"] == "llm" else
                   {"backbone": "embeddinggemma-300m", "head": "linear"})
    from llm_ner.active.curve import summarise

    (tmp_path / "curve.json").write_text(json.dumps({"config": "quickstart", "rows": rows,
                                                     "summary": summarise(rows)}))

    def rounds(f1s, per_sentence):  # tokens: uncertainty picks shorter sentences than random
        return [{"round": k, "labelled": 200 * (k + 1), "tokens": 200 * (k + 1) * per_sentence, "dev_f1": f + 1,
                 "test_f1": f, "train_seconds": 60.0, "select_seconds": 30.0} for k, f in enumerate(f1s)]

    al = {"args": {}, "results": {"uncertainty": {"1": rounds([50, 63, 70], 10), "2": rounds([52, 65, 72], 10)},
                                  "random": {"1": rounds([50, 55, 61], 15), "2": rounds([52, 57, 63], 15)}}}
    al["results"]["uncertainty"]["3"] = rounds([40, 99], 10)  # a seed still running: left out of every point
    al["results"]["diverse"] = {"1": rounds([50, 51, 52], 12), "2": rounds([52, 53, 54], 12)}
    (tmp_path / "al.json").write_text(json.dumps(al))
    r = runner.invoke(app, ["report", str(tmp_path / "llm"), "--output", str(tmp_path / "rep"), "--curve",
                            str(tmp_path / "curve.json"), "--al", str(tmp_path / "al.json")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "## How much labelled data" in md and "## Active learning" in md
    assert "![learning_curve](learning_curve.png)" in md and "![active_learning](active_learning.png)" in md
    assert ("recipe (LLM: gemma3-270m + crf head) and the encoder baseline (embeddinggemma-300m + linear head) on "
            "the same random subset") in md
    assert ("The LLM's lead is largest at 250 sentences: +19.00 F1; at ≤ 1,000 sentences it is +5.00 to +19.00. "
            "Its lowest lead is +5.00 F1, at 1,000 sentences. It leads by 10 F1 or more at 250 sentences.") in md
    # random's last round: (61 + 63) / 2 = 62.00 with 600 labels; uncertainty's round 1 (400 labels) has 64.00:
    # reached with 67 % of the labels, 4,000 of 9,000 tokens; CPU: 2 trainings x 60 s + the 30 s choice between
    # them = 2.5 min, against 3 x 60 + 2 x 30 = 4.0
    assert ("Random sampling's last round: 62.00 test F1 with 600 labels. `uncertainty` reached it with 400 "
            "labels (67 % of the sentences, 44 % of the tokens) and 2.5 CPU minutes against 4.0.") in md
    assert "(seeds 1, 2)" in md and "Seed 3 not finished yet, left out." in md and "`diverse` did not reach it." in md
    assert "| uncertainty | 400 | 4,000 | 65.00 ± 1.41 | 64.00 ± 1.41 | 2 | 2.5 |" in md
    assert html.count("data:image/png;base64,") >= 2 and "learning_curve" not in html.split("<h2>Results")[0]


def test_the_report_names_unmasked_and_frozen_layers_from_the_model_config():
    """A list of unmasked layers is shown as the list (not its length), with which layers stay causal; frozen lower
    layers are said — both read from the saved model config, as every fact of the prose."""
    from types import SimpleNamespace

    from llm_ner.report.sections import facts, render

    def prose(model: dict) -> str:
        llm = {"summary": {}, "config": {"model": model}, "run": SimpleNamespace(config={}), "name": "r",
               "model": "gemma3-270m"}
        f = facts(llm)
        return render("transformed.md.j2", f) + render("training.md.j2", f)

    text = prose({"unmask": [5, 11], "exit_layer": 12, "freeze_layers": 6})
    assert "unmask = `[5, 11]`: those layer indices" in text and "other layers keep their causal mask" in text
    assert "lower 6 layers are kept as pre-trained" in text and "in the unmasked layers" in text
    plain = prose({"unmask": "all"})
    assert "unmask = `all`)" in plain and "kept as pre-trained" not in plain and "unmasked layers" not in plain


def test_a_same_type_error_is_named_a_boundary_error_not_a_confusion():
    from llm_ner.report.sections import failures

    a = {"taxonomy_total": {"correct": 5, "boundary_long": 2}, "confused_forms": [
        {"text": "Real Madrid", "gold": "ORG", "pred": "ORG", "count": 2},
        {"text": "Czech", "gold": "LOC", "pred": "MISC", "count": 1},
        {"text": "New York Times", "gold": "ORG", "pred": "ORG", "pred_text": "New York", "count": 1},
        {"text": "Bank of Asia", "gold": "ORG", "pred": "LOC", "pred_text": "Asia", "count": 1}]}
    text = failures({"analysis": a, "name": "r"})
    assert "“Real Madrid” ORG, wrong boundary ×2" in text and "“Czech” LOC→MISC ×1" in text and "ORG→ORG" not in text
    assert "“New York Times” ORG, tagged “New York” ×1" in text and "“Bank of Asia” ORG→LOC “Asia” ×1" in text


def test_the_llm_is_set_against_the_encoder_that_read_the_same_data():
    """Document context against document context, sentences against sentences, each a mean over its seeds — not the
    first LLM run against the first encoder run."""
    from types import SimpleNamespace

    from llm_ner.report.sections import encoder_gaps

    def run(kind, context, seed, f1, recipes=None):
        cfg = {"data": {"train": "conll2003:train", "context": context}, "model": {"backbone": kind, "crf": True},
               "training": {"seed": seed}, "recipes": recipes or {}}
        return {"kind": kind, "model": f"{kind}-model", "metrics": {"f1": f1}, "run": SimpleNamespace(config=cfg)}

    # the second sentence-level encoder seed was saved with the config's recipes table (already applied): same recipe
    runs = [run("llm", "document", 1, 93.0), run("llm", "document", 2, 93.2), run("encoder", "document", 1, 92.0),
            run("llm", "sentence", 1, 92.0), run("encoder", "sentence", 1, 91.0),
            run("encoder", "sentence", 2, 92.0, recipes={"encoder": {"training.learning_rate": 2e-5}})]
    gaps = {g["context"]: g for g in encoder_gaps(runs)}
    assert set(gaps) == {"document", "sentence"}
    assert round(gaps["document"]["gap"], 2) == 1.1 and gaps["document"]["llm_seeds"] == 2
    assert round(gaps["sentence"]["gap"], 2) == 0.5 and gaps["sentence"]["encoder_seeds"] == 2
    assert gaps["sentence"]["llm"] == "llm-model" and gaps["sentence"]["encoder"] == "encoder-model"
    assert gaps["sentence"]["encoder_head"] == "CRF" and gaps["sentence"]["train"] == "all training sentences"


def test_the_curve_says_where_the_lead_turns():
    """A curve where the encoder leads on little data and the LLM on more: the report names the two sizes between which
    the lead changes hands; a curve with one side ahead everywhere says so."""
    from llm_ner.active.curve import summarise
    from llm_ner.report.sections import learning_curve_text

    def curve(points):
        rows = [{"system": s, "sentences": n, "seed": 1, "dev_f1": 0.0, "test_f1": f1, "train_seconds": 60.0}
                for n, llm, enc in points for s, f1 in (("llm", llm), ("encoder", enc))]
        return {"config": "quickstart", "rows": rows, "summary": summarise(rows)}

    text = learning_curve_text(curve([(250, 70.0, 80.0), (2000, 84.0, 87.0), (8000, 90.0, 89.5)]))
    assert "The LLM takes the lead between 2,000 and 8,000 sentences (the LLM's lead -3.00 → +0.50 F1)." in text
    assert "is ahead at every size" not in text
    text = learning_curve_text(curve([(250, 70.0, 80.0), (2000, 84.0, 87.0)]))
    assert "The encoder is ahead at every size measured: by 10.00 F1 at 250 sentences, by 3.00 at 2,000." in text
    assert "takes the lead" not in text and "The LLM's lead is largest" not in text


def test_the_speed_section_renders_a_runtimes_file():
    """`llm-ner report --speed` and `benchmarks/runtimes.py --table` render one table from one function; its hardware
    column is the arm's share of the words/s the measured matmul peak allows."""
    from llm_ner.report.sections import runtimes_table, speed_text

    arm = {"arm": "torch:fp32", "model": "m", "runtime": "torch", "precision": "fp32",
           "whole_process_words_per_s": 300.0, "warm_words_per_s": 400.0, "span_agreement_vs_first": 100.0,
           "test_f1": 87.0, "peak_rss_mb": 1500.0, "tokens_per_word": 1.25,
           **{f"p{q}_ms_{n}": 10.0 * n for q in (50, 95) for n in (1, 8, 32)}}
    d = {"words": 1000, "texts": 10, "cpu": 2, "command": "benchmarks/runtimes.py --model m",
         "arms": [arm, {**arm, "arm": "default:auto", "runtime": "openvino", "precision": "bf16"}],
         "hardware": {"gflop_per_token": 0.4, "layers_run": 12, "peak_gflops_bf16": 1000.0, "peak_gflops_fp32": 500.0},
         "spacy_en_core_web_sm": {"whole_process_words_per_s": 9000.0}}
    t = runtimes_table(d)
    assert "| torch | torch | fp32 | 300 | 400 |" in t and "| 1,000 (40 %) |" in t  # 500 / (0.4 x 1.25)
    assert "| default | openvino | bf16 |" in t and "| 2,000 (20 %) |" in t and "9,000 words/s" in t
    assert "| — (int8 peak not measured) |" in runtimes_table({**d, "arms": [{**arm, "precision": "int8"}]})
    assert speed_text(d).endswith(t) and "benchmarks/runtimes.py --model m" in speed_text(d)
