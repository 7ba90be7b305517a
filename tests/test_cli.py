"""The command line as a user meets it: formats read from content, one-line errors with exit status 2, a run's test
set from the user's data."""

import json

import pytest
from typer.testing import CliRunner

from llm_ner.cli import app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()
CONLL = "Peter B-PER\nBlackburn I-PER\nflew O\nto O\nBrussels B-LOC\n. O\n\nEU B-ORG\nrejects O\n"


def test_predict_reads_a_conll_file_named_txt_as_conll(tiny_ner_dir, tmp_path):
    src = tmp_path / "test.txt"  # the usual name of CoNLL-2003 files
    src.write_text(CONLL)
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(src)])
    assert r.exit_code == 0, r.output
    out = (tmp_path / "test.pred.conll").read_text().split("\n\n")
    assert [ln.split()[0] for ln in out[0].splitlines()] == ["Peter", "Blackburn", "flew", "to", "Brussels", "."]
    assert all(len(ln.split()) == 3 for block in out if block.strip() for ln in block.splitlines())


def test_predict_text_lines_jsonl_and_a_declared_format(tiny_ner_dir, tmp_path):
    txt = tmp_path / "texts.conll"  # a name that lies: the content is plain text
    txt.write_text("Peter Blackburn flew to Brussels.\nEU rejects German call.\n")
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(txt), "--output",
                            str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["text"] for x in recs] == ["Peter Blackburn flew to Brussels.", "EU rejects German call."]
    js = tmp_path / "in.data"
    js.write_text(json.dumps({"text": "Peter flew."}) + "\n")
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(js)])
    assert r.exit_code == 0 and json.loads(r.stdout.splitlines()[-1])["text"] == "Peter flew."
    # "--format text" reads a CoNLL-looking file as text lines, on the user's word
    conll = tmp_path / "c.txt"
    conll.write_text(CONLL)
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(conll), "--format", "text"])
    assert r.exit_code == 0 and json.loads(r.stdout.splitlines()[0])["text"] == "Peter B-PER"


def test_ambiguous_input_is_refused_with_how_to_declare_it(tiny_ner_dir, tmp_path):
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("Peter B-PER\nBlackburn I-PER\nThis line is a sentence about Brussels.\n")
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(mixed)])
    assert r.exit_code == 2
    assert "ambiguous format" in r.output and "--format" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "mixed.pred.conll").exists()


def test_missing_model_dir_is_one_line_for_every_command(tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("Peter flew.\n")
    for args in (["serve", "--model", str(tmp_path / "nope")],
                 ["batch-predict", "--model", str(tmp_path / "nope"), "--input", str(texts), "--output",
                  str(tmp_path / "o")],
                 ["predict", "--model", str(tmp_path / "nope"), "--text", "x"],
                 ["evaluate", "--model", str(tmp_path / "nope"), "--data", "conll2003:test", "--limit", "2"],
                 ["export", "--model", str(tmp_path / "nope"), "--output", str(tmp_path / "e")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "nope" in errors[0] and "Traceback" not in r.output


def test_own_data_without_test_runs_no_test_step(tiny_llama, tmp_path):
    data = tmp_path / "bio.conll"
    data.write_text("".join(f"aspirin B-Chemical\ncauses O\nheadache B-Disease\n{i} O\n\n" for i in range(12)))
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--train", str(data), "--dev", str(data),
                            "--max-steps", "2", "--output", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"] is None and "test" not in summary["data"]
    assert not (tmp_path / "run" / "test_metrics.json").exists()
    assert "skipped the test step" in r.output


def test_test_set_of_other_types_is_refused(tiny_llama, tmp_path):
    data = tmp_path / "bio.conll"
    data.write_text("".join("aspirin B-Chemical\ncauses O\nheadache B-Disease\n\n" for _ in range(4)))
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--train", str(data), "--test", "conll2003:test",
                            "--max-steps", "1", "--output", str(tmp_path / "run"), "--no-progress"])
    assert r.exit_code == 2
    assert "conll2003:test: its entity types ['LOC', 'MISC', 'ORG', 'PER'] do not overlap" in r.output
    assert "['Chemical', 'Disease']" in r.output and not (tmp_path / "run" / "checkpoints").exists()


def test_predict_on_token_input_honours_every_option(tiny_ner_dir, tmp_path):
    """CoNLL input went its own way and lost --min-score, the calibrated thresholds, --review and --to (issue 21):
    now each applies as for raw text."""
    from approx import SCORE_ATOL

    from llm_ner.data import read_conll
    from llm_ner.inference.engine import NERModel

    src = tmp_path / "in.conll"
    src.write_text("Peter B-PER\nvisited O\nNew B-LOC\nYork I-LOC\nand O\nWashington B-LOC\non O\nMonday O\n. O\n\n"
                   "Apple B-ORG\nhired O\nJohn B-PER\nSmith I-PER\nfrom O\nGoogle B-ORG\nin O\nLondon B-LOC\n. O\n")
    res = NERModel.from_pretrained(tiny_ner_dir)(read_conll(src)).results
    scores = sorted(e.score for kept, _ in res for e in kept)
    gap, i = max((b - a, i) for i, (a, b) in enumerate(zip(scores[:-1], scores[1:], strict=True)))
    assert len(scores) >= 2 and gap > 2 * SCORE_ATOL, scores
    cut = (scores[i] + scores[i + 1]) / 2
    n_above = sum(s >= cut for s in scores)

    def run(*args):
        r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(src), *args])
        assert r.exit_code == 0, r.output

    def b_tags(path):
        return sum(line.split()[-1].startswith("B-") for line in path.read_text().splitlines() if line.strip())

    run("--output", str(tmp_path / "all.conll"))
    assert b_tags(tmp_path / "all.conll") == len(scores)
    run("--output", str(tmp_path / "cut.conll"), "--min-score", str(cut))
    assert b_tags(tmp_path / "cut.conll") == n_above < len(scores)
    run("--output", str(tmp_path / "o.jsonl"), "--to", "jsonl", "--min-score", str(cut), "--review")
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert rows[0]["text"] == "Peter visited New York and Washington on Monday ."
    assert sum(len(x["entities"]) for x in rows) == n_above
    assert sum(len(x["needs_review"]) for x in rows) == len(scores) - n_above
    run("--output", str(tmp_path / "ls.json"), "--to", "label-studio")
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert sum(len(t["predictions"][0]["result"]) for t in tasks) == len(scores)
    run("--output", str(tmp_path / "d.jsonl"), "--to", "doccano", "--min-score", str(cut))
    assert sum(len(json.loads(x)["label"]) for x in (tmp_path / "d.jsonl").read_text().splitlines()) == n_above
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--input", str(src), "--to", "conll",
                            "--review"])
    assert r.exit_code == 2 and "conll has no place" in r.output
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--text", "Peter ran", "--to", "conll"])
    assert r.exit_code == 2 and "needs token input" in r.output


def test_evaluate_prints_only_our_lines(tiny_ner_dir):
    """A quiet console: `evaluate` in a fresh interpreter (import-time warnings included) writes to stderr only our
    own lines — no torchao library-load or triton warnings, no torch deprecation lines. --verbose may show them."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llm_ner.cli", "evaluate", "--model", str(tiny_ner_dir), "--data",
                        "conll2003:valid", "--limit", "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    ours = ("read conll2003:valid", "warning: ", "predict: ", "precision auto: ")  # our log lines and progress bar
    assert all(ln.startswith(ours) for ln in lines), lines
    assert "micro" in r.stdout


def test_serve_limits_are_declared_once():
    """serve's limits live in serving/settings.py: the CLI's defaults and help are read from it (the body limit's help
    said 4 bytes per character while the code used 6), and a ServeConfig built anywhere is checked there."""
    import dataclasses

    import typer

    from llm_ner.errors import UserError
    from llm_ner.serving.settings import BODY_BYTES_PER_CHAR, ServeConfig

    params = {p.name: p for p in typer.main.get_command(app).commands["serve"].params}
    declared = [f for f in dataclasses.fields(ServeConfig) if "help" in f.metadata]
    assert len(declared) >= 10
    for f in declared:  # issue 45: serve's options are generated from the fields (a repeatable one defaults to none)
        want = None if f.default == () else f.default
        assert params[f.name].help == f.metadata["help"] and params[f.name].default == want, f.name
    shared = {f.name for f in dataclasses.fields(ServeConfig) if "shared" in f.metadata}
    assert {"model_dir", "precision", "min_score", "trust_remote_code"} <= shared <= set(params)
    internal = {f.name for f in dataclasses.fields(ServeConfig)} - {f.name for f in declared} - shared
    assert internal == {"max_batch_texts", "device", "api_keys", "train_keys", "allowed_hosts"}  # set by code
    assert f"{BODY_BYTES_PER_CHAR} bytes per allowed character" in params["max_body_bytes"].help
    assert ServeConfig("m", max_request_chars=10).body_limit() == BODY_BYTES_PER_CHAR * 10 + 65_536
    for bad in ({"max_queue": 0}, {"max_queue_chars": 10, "max_request_chars": 20}, {"request_timeout": 0},
                {"precision": "fp16"}, {"min_score": 1.5}):
        with pytest.raises(UserError):
            ServeConfig("m", **bad)


def test_no_command_overwrites_its_input(tiny_ner_dir, tmp_path):
    """Issue 43: `evaluate --data dev.conll --output dev.json` wrote its predictions (`token gold pred`) over the gold
    dev.conll; predict and select took an output equal to their input. Each is a one-line error now, the input
    untouched, also through a symlink."""
    dev = tmp_path / "dev.conll"
    dev.write_text(CONLL)
    texts = tmp_path / "pool.txt"
    texts.write_text("Peter went to Paris .\nAnn met Bob .\n")
    (tmp_path / "link.txt").symlink_to(texts)
    m = str(tiny_ner_dir)
    cases = [["evaluate", "--model", m, "--data", str(dev), "--output", str(tmp_path / "dev.json")],
             ["evaluate", "--model", m, "--data", str(dev), "--output", str(dev)],
             ["predict", "--model", m, "--input", str(texts), "--output", str(tmp_path / "link.txt")],
             ["predict", "--model", m, "--input", str(dev), "--output", str(dev)],
             ["select", "--model", m, "--pool", str(texts), "--n", "1", "--output", str(texts)],
             ["score", str(dev), str(dev), "--output", str(dev)],
             ["analyze", str(dev), "--output", str(dev)]]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "would be overwritten" in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert dev.read_text() == CONLL and texts.read_text() == "Peter went to Paris .\nAnn met Bob .\n"
    r = runner.invoke(app, ["evaluate", "--model", m, "--data", str(dev), "--output", str(tmp_path / "m" / "d.json")])
    assert r.exit_code == 0 and (tmp_path / "m" / "d.conll").is_file(), r.output  # elsewhere: written


def test_compare_names_a_bad_system_and_never_reuses_another_models_run(tmp_path):
    """Issue 43: `compare --systems <typo>` was a KeyError traceback, and a finished run in the output folder was
    reused whatever --llm-model asked for."""
    r = runner.invoke(app, ["compare", "--systems", "llm,encodr", "--output", str(tmp_path)])
    assert r.exit_code == 2 and "--systems 'llm,encodr'" in r.output and len(r.output.strip().splitlines()) == 1
    run = tmp_path / "llm"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"backbone": "gemma3-270m", "system": "llm"}))
    (run / "test_metrics.json").write_text(json.dumps({"f1": 90.0}))
    r = runner.invoke(app, ["compare", "--systems", "llm", "--llm-model", "smollm2-135m", "--output", str(tmp_path),
                            "--no-progress"])
    assert r.exit_code == 2 and "finished llm run of gemma3-270m, not smollm2-135m" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_int8_on_a_gpu_is_a_one_line_error(tiny_ner_dir, tmp_path, monkeypatch):
    """Issue 43: `--precision int8` where the model loads on CUDA was a ValueError traceback."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the device choice sees a GPU; nothing loads
    r = runner.invoke(app, ["predict", "--model", str(tiny_ner_dir), "--text", "Peter went home .", "--precision",
                            "int8"])
    assert r.exit_code == 2 and "runs on the CPU only" in r.output and len(r.output.strip().splitlines()) == 1, \
        r.output
