"""Every entry point honours every prediction option (issue 21): a table of entry points x options, each cell the same
check against NERModel's own answer. Options: a global `min_score`, review (what falls below the thresholds, returned
when asked), the precision chosen at load time (bf16, int8), the per-type thresholds saved by `calibrate`
(calibration.json), and an out-of-range min_score refused. Entry points: `llm-ner predict` on text and on CoNLL,
`batch-predict` (Ray), the HTTP service, the spaCy component."""

import json
import shutil

import pytest
import torch
from approx import SCORE_ATOL
from test_serve_robust import call, running
from typer.testing import CliRunner

from llm_ner.cli import app
from llm_ner.errors import UserError
from llm_ner.inference.engine import NERModel
from llm_ner.inference.outputs import Thresholds

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()
TEXTS = ["Peter visited New York and Washington on Monday .", "Apple hired John Smith from Google in London ."]


@pytest.fixture(scope="module")
def cut(tiny_ner_dir) -> float:
    """A score in the widest gap between two of the model's entity scores: both sides hold entities, and a score
    moving by the float tolerance cannot cross it."""
    scores = sorted(e.score for ents in NERModel.from_pretrained(tiny_ner_dir)(TEXTS).entities for e in ents)
    gap, i = max((b - a, i) for i, (a, b) in enumerate(zip(scores[:-1], scores[1:], strict=True)))
    assert gap > 2 * SCORE_ATOL and 0 < i + 1 < len(scores), scores
    return (scores[i] + scores[i + 1]) / 2


def _spans(ents) -> list:
    return [(e["start"], e["end"], e["label"]) for e in ents]


def _cli_args(min_score, precision, review) -> list[str]:
    return ([*(["--min-score", str(min_score)] if min_score is not None else []),
             *(["--precision", precision] if precision else []), *(["--review"] if review else [])])


def _from_cli(model, tmp_path, src, min_score, precision, review):
    r = runner.invoke(app, ["predict", "--model", str(model), "--input", str(src), "--to", "jsonl", "--output",
                            str(tmp_path / "o.jsonl"), *_cli_args(min_score, precision, review)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    return [_spans(x["entities"]) for x in rows], [_spans(x["needs_review"]) for x in rows] if review else None


def from_cli_text(model, tmp_path, min_score=None, precision=None, review=False):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    return _from_cli(model, tmp_path, src, min_score, precision, review)


def from_cli_conll(model, tmp_path, min_score=None, precision=None, review=False):
    src = tmp_path / "in.conll"
    src.write_text("\n\n".join("\n".join(f"{w} O" for w in t.split()) for t in TEXTS) + "\n")
    return _from_cli(model, tmp_path, src, min_score, precision, review)


def from_batch(model, tmp_path, min_score=None, precision=None, review=False):
    from llm_ner.serving.batch import ray_predict

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    ray_predict(str(model), str(src), str(tmp_path / "out"), batch_size=8, threads=1, precision=precision or "auto",
                min_score=min_score, review=review)
    rows = sorted((json.loads(x) for f in (tmp_path / "out").glob("*.json") for x in f.open()), key=lambda r: r["id"])
    return ([_spans(json.loads(r["entities"])) for r in rows],
            [_spans(json.loads(r["needs_review"])) for r in rows] if review else None)


def from_service(model, tmp_path, min_score=None, precision=None, review=False):
    from llm_ner.serving.serve import ServeConfig, create_app

    with running(create_app(ServeConfig(str(model), min_score=min_score, precision=precision or "auto"))) as url:
        status, body = call(url, {"texts": TEXTS, "review": review})
    assert status == 200, body
    res = body["results"]
    return [_spans(r["entities"]) for r in res], [_spans(r["needs_review"]) for r in res] if review else None


def from_spacy(model, tmp_path, min_score=None, precision=None, review=False):
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    nlp.add_pipe("llm_ner", config={"model": str(model), "min_score": min_score, "precision": precision or "auto"})
    docs = list(nlp.pipe(TEXTS))
    return ([[(s.start_char, s.end_char, s.label_) for s in d.ents] for d in docs],
            [[(s.start_char, s.end_char, s.label_) for s in d.spans["llm_ner_review"]] for d in docs]
            if review else None)


def from_pipeline(model, tmp_path, min_score=None, precision=None, review=False):
    """The Python call with transformers' pipeline shape: kept entities only (it has no place for review)."""
    ner = NERModel.from_pretrained(model, precision=precision or "auto", min_score=min_score)
    got = [[(d["start"], d["end"], d["entity_group"]) for d in x] for x in ner(TEXTS).to("pipeline")]
    low = [[(e.start, e.end, e.label) for e in x] for x in ner(TEXTS, review=True).needs_review] if review else None
    return got, low


def from_label_studio(model, tmp_path, min_score=None, precision=None, review=False):
    """The Label Studio ML backend's /predict: one region per kept entity (Label Studio has no review list)."""
    from llm_ner.serving.serve import ServeConfig, create_app

    config = '<View><Labels name="label" toName="text">' + "".join(
        f'<Label value="{t}"/>' for t in NERModel.from_pretrained(model, precision="fp32").labels.types) + (
        '</Labels><Text name="text" value="$text"/></View>')
    with running(create_app(ServeConfig(str(model), min_score=min_score, precision=precision or "auto"))) as url:
        status, body = call(url, {"tasks": [{"id": i, "data": {"text": t}} for i, t in enumerate(TEXTS)],
                                  "label_config": config}, path="/predict")
    assert status == 200, body
    return [sorted((r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in p["result"])
            for p in body["results"]], None


@pytest.fixture(autouse=True)
def _one_ray_for_the_batch_entry(request):
    if getattr(request.node, "callspec", None) and request.node.callspec.params.get("entry") == "batch":
        request.getfixturevalue("ray_session")


ENTRY_POINTS = {"cli_text": from_cli_text, "cli_conll": from_cli_conll, "batch": from_batch,
                "service": from_service, "spacy": from_spacy, "pipeline": from_pipeline,
                "label_studio": from_label_studio}


def want(model, min_score=None, precision="auto") -> tuple[list, list]:
    ner = NERModel.from_pretrained(model, precision=precision, min_score=min_score)
    res = ner(TEXTS).results
    return ([[(e.start, e.end, e.label) for e in kept] for kept, _ in res],
            [[(e.start, e.end, e.label) for e in low] for _, low in res])


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_min_score(entry, tiny_ner_dir, tmp_path, cut):
    every, (kept, _) = want(tiny_ner_dir)[0], want(tiny_ner_dir, cut)
    assert sum(map(len, kept)) < sum(map(len, every))  # the cut drops some: the cell can fail
    assert ENTRY_POINTS[entry](tiny_ner_dir, tmp_path)[0] == every
    assert ENTRY_POINTS[entry](tiny_ner_dir, tmp_path, min_score=cut)[0] == kept


@pytest.mark.parametrize("entry", [e for e in ENTRY_POINTS if e != "label_studio"])  # LS has no review list
def test_review(entry, tiny_ner_dir, tmp_path, cut):
    """What falls below the thresholds comes back for review (asked for), from every entry point."""
    kept, low = want(tiny_ner_dir, cut)
    assert any(low) and any(kept)
    assert ENTRY_POINTS[entry](tiny_ner_dir, tmp_path, min_score=cut, review=True) == (kept, low)


def _scored(model, precision: str) -> dict:
    ner = NERModel.from_pretrained(model, precision=precision)
    return {(i, e.start, e.end, e.label): e.score for i, ents in enumerate(ner(TEXTS).entities) for e in ents}


@pytest.fixture(scope="module")
def telling_cut(tiny_ner_dir) -> dict[str, float]:
    """Per precision, a min_score at which that precision keeps other spans than fp32 does, as far from every score
    (at either precision) as the model allows: an entry point that ran fp32 whatever it was asked would answer
    differently there, so the precision cell can fail. int8 moves the tiny model's scores by only ~5e-3, so the margin
    required is SCORE_ATOL / 2 (1e-3), not the cross-CPU 2 * SCORE_ATOL: both sides of every comparison here run on
    one machine's kernels, where only the batch composition differs (≤ 1e-4 seen)."""
    ref = _scored(tiny_ner_dir, "fp32")
    out = {}
    for precision in ("bf16", "int8"):
        got = _scored(tiny_ner_dir, precision)
        scores = sorted({*ref.values(), *got.values()})
        best = (0.0, None)
        for a, b in zip(scores[:-1], scores[1:], strict=True):
            c = (a + b) / 2
            if {k for k, v in ref.items() if v >= c} != {k for k, v in got.items() if v >= c}:
                best = max(best, ((b - a) / 2, c), key=lambda x: x[0])
        assert best[1] is not None and best[0] > SCORE_ATOL / 2, (precision, best, ref, got)
        out[precision] = best[1]
    return out


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_precision(entry, precision, tiny_ner_dir, tmp_path, telling_cut, monkeypatch):
    """The precision chosen at load time (bf16 backbone, int8 Linear layers) is what every entry point runs: at a
    min_score where that precision's spans differ from fp32's, the entry point's spans equal NERModel's at that
    precision. "auto" is made fp32 here, so an entry point that dropped the precision asked for (and ran the default)
    answers differently — issue 43: on a CPU with native bf16, auto picked bf16 and the bf16 cells passed whatever
    the entry point did. Ray's actors run in their own processes, beyond the patch: what they are built from is
    checked in this process."""
    import llm_ner.inference.engine as E
    import llm_ner.serving.batch as B

    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: False)
    built = []  # what ray_predict hands each actor
    monkeypatch.setattr(B, "predictor_args", lambda *a, _real=B.predictor_args: built.append(_real(*a)) or built[-1])
    cut = telling_cut[precision]
    expected = want(tiny_ner_dir, cut, precision=precision)[0]
    assert expected != want(tiny_ner_dir, cut, precision="auto")[0]  # the cell can fail
    assert ENTRY_POINTS[entry](tiny_ner_dir, tmp_path, min_score=cut, precision=precision)[0] == expected
    if entry == "batch":
        assert len(built) == 1 and B.NERBatchPredictor(**built[0]).ner.precision == precision


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_calibrated_thresholds(entry, tiny_ner_dir, tmp_path, cut):
    """A type's threshold from calibration.json (what `calibrate --target-precision` writes) applies everywhere."""
    model = tmp_path / "model"
    shutil.copytree(tiny_ner_dir, model)
    label = want(tiny_ner_dir)[0][0][0][2]
    (model / "calibration.json").write_text(json.dumps({"temperature": 1.0, "thresholds": {label: 1.01}}))
    expected = want(model)[0]
    assert all(lab != label for ents in expected for *_, lab in ents) and any(expected)
    assert ENTRY_POINTS[entry](model, tmp_path)[0] == expected


def test_an_out_of_range_min_score_is_refused_everywhere(tiny_ner_dir, tmp_path):
    with pytest.raises(UserError, match="between 0 and 1"):
        NERModel.from_pretrained(tiny_ner_dir, min_score=5)
    with pytest.raises(UserError, match="between 0 and 1"):
        Thresholds(-0.5)
    for args in (["predict", "--model", str(tiny_ner_dir), "--text", "a", "--min-score", "5"],
                 ["batch-predict", "--model", str(tiny_ner_dir), "--input", "x", "--output", "y", "--min-score", "-1"],
                 ["serve", "--model", str(tiny_ner_dir), "--min-score", "1.5"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "between 0 and 1" in r.output, (args, r.output)
    spacy = pytest.importorskip("spacy")
    with pytest.raises(UserError, match="between 0 and 1"):
        spacy.blank("en").add_pipe("llm_ner", config={"model": str(tiny_ner_dir), "min_score": 2.0})


def test_prediction_commands_share_one_set_of_options(tiny_ner_dir):
    """--precision / --min-score / --batch-size / --model are declared once (cli/options.py): every command that
    predicts offers them with the same help and default, and refuses an unknown precision in one line."""
    import typer

    group = typer.main.get_command(app)
    shared = ("model", "precision", "min_score", "batch_size")

    def opts(cmd):
        return {p.name: (p.opts, p.help, p.default) for p in group.commands[cmd].params if p.name in shared}

    helps = [opts(c) for c in ("predict", "select")]
    assert all(h == helps[0] and set(h) == set(shared) for h in helps), helps
    for cmd in ("serve", "batch-predict", "evaluate"):
        assert opts(cmd) == {k: helps[0][k] for k in opts(cmd)}, cmd
    for cmd in (["predict", "--text", "a"], ["evaluate", "--data", "conll2003:test"], ["serve"],
                ["batch-predict", "--input", "x", "--output", "y"]):
        r = runner.invoke(app, [cmd[0], "--model", str(tiny_ner_dir), *cmd[1:], "--precision", "fp16"])
        assert r.exit_code == 2 and "--precision 'fp16': use one of auto, fp32, bf16, int8" in r.output, (cmd, r.output)


def test_auto_precision_is_fp32_without_native_bf16_or_when_spans_move(tiny_ner_dir, monkeypatch):
    """"auto" (the default) takes bf16 only where the CPU has it natively and the check sentences' spans hold."""
    import llm_ner.inference.engine as E

    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: False)
    assert NERModel.from_pretrained(tiny_ner_dir, device="cpu").precision == "fp32"
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(E, "AUTO_AGREEMENT", 1.01)  # no agreement is enough: bf16 never holds
    ner = NERModel.from_pretrained(tiny_ner_dir, device="cpu")
    fp32 = NERModel.from_pretrained(tiny_ner_dir, device="cpu", precision="fp32")
    assert ner.precision == "fp32" and next(ner.model.backbone.parameters()).dtype == torch.float32
    assert ner(TEXTS).results == fp32(TEXTS).results
    monkeypatch.setattr(E, "AUTO_AGREEMENT", 0.0)  # any agreement is enough
    ner = NERModel.from_pretrained(tiny_ner_dir, device="cpu")
    assert ner.precision == "bf16" and next(ner.model.backbone.parameters()).dtype == torch.bfloat16
