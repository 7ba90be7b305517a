import json

from typer.testing import CliRunner

from llm_ner.cli import app

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

    abl = tmp_path / "abl.json"
    abl.write_text(json.dumps({"settings": {"data.max_test_sentences": 12}, "rows": [
        {"name": "base", "test_f1": 1.0, "best_dev_f1": 2.0, "train_seconds": 3, "trainable_params": 4}]}))
    r = runner.invoke(app, ["report", str(tmp_path / "cmp"), "--output", str(tmp_path / "rep"), "--ablation",
                            str(abl)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    for section in ("Dataset and why", "Model and why", "How the LLM was transformed", "Results", "Failure cases",
                    "Limitations and improvements", "Ablation"):
        assert f"## {section}" in md and section in html
    assert f"test F1 {llm_f1:.1f}" in md
    assert html.count("data:image/png;base64,") == 5  # curves, per-type, confusion, errors, ablation — inlined
    assert "<mark" in html  # displacy-style examples
    assert "{" not in md.split("## Dataset")[1].split("## Model")[0]  # no unfilled template fields
