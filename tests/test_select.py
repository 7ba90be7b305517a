"""Active learning, item 1 of issue 23: `llm-ner select` on a tiny model — the least sure texts first, by the same
score `NERModel.predict_texts_scored` gives; never a labelled text or a repeat; pre-annotations in every shape; bad
input as one-line errors."""

import json

import pytest
import torch
from approx import SCORE_ATOL
from typer.testing import CliRunner

from llm_ner.active.select import diverse_pick
from llm_ner.cli import app
from llm_ner.data import load_corpus
from llm_ner.inference.engine import NERModel
from llm_ner.modeling.processor import sentence_text

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


runner = CliRunner()
POOL = ["Peter visited New York and Washington on Monday .", "Apple hired John Smith from Google in London .",
        "The weather was fine .", "Angela Merkel met Emmanuel Macron in Paris on Tuesday .",
        "Shares of Siemens rose 3 percent in Frankfurt .", "He said nothing .",
        "Apple  hired John Smith from Google in London.",  # the second text again, spaced differently: a repeat
        "Reuters reported that Toyota will build a plant in Kentucky ."]


def _select(model, pool, out, *args):
    return runner.invoke(app, ["select", "--model", str(model), "--pool", str(pool), "--output", str(out), *args])


def test_path_logprob_is_the_crf_likelihood_or_the_softmax_sum(tiny_ner_dir):
    m = NERModel.from_pretrained(tiny_ner_dir).model
    torch.manual_seed(1)
    logits, mask = torch.randn(2, 5, len(m.labels.tags)), torch.tensor([[1] * 5, [1] * 3 + [0] * 2]).bool()
    paths, _ = m.decoder.decode(logits, mask)
    lp = m.decoder.path_logprob(logits, mask, paths)
    assert lp.shape == (2,) and (lp <= 0).all()
    if m.crf is not None:  # the Viterbi path is the likeliest: no other allowed path beats it
        other = [[0] * len(p) for p in paths]  # all O: allowed
        assert (m.decoder.path_logprob(logits, mask, other) <= lp + 1e-6).all()


def test_uncertainty_picks_the_least_sure_and_skips_repeats_and_labelled(tiny_ner_dir, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(POOL) + "\n")
    labelled = tmp_path / "done.jsonl"  # the fourth text is labelled already
    labelled.write_text(json.dumps({"text": POOL[3], "entities": [{"start": 0, "end": 13, "label": "PER"}]}) + "\n")
    r = _select(tiny_ner_dir, pool, tmp_path / "o.jsonl", "--n", "3", "--to", "jsonl", "--exclude", str(labelled),
                "--strategy", "uncertainty")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    # the same score from the library, over the candidates (no repeat, nothing labelled)
    cands = [t for i, t in enumerate(POOL) if i not in (3, 6)]
    scored = NERModel.from_pretrained(tiny_ner_dir)(cands, scored=True)
    conf = dict(zip(cands, scored.confidences(), strict=True))
    assert len(rows) == 3 and POOL[3] not in [x["text"] for x in rows] and POOL[6] not in [x["text"] for x in rows]
    assert [x["confidence"] for x in rows] == sorted(x["confidence"] for x in rows)  # least sure first
    for x in rows:
        assert abs(x["confidence"] - conf[x["text"]]) <= SCORE_ATOL and "entities" in x
    chosen_max = max(conf[x["text"]] for x in rows)
    left_min = min(c for t, c in conf.items() if t not in [x["text"] for x in rows])
    assert chosen_max <= left_min + SCORE_ATOL  # nothing left out is less sure than what was chosen
    # Label Studio: each task's prediction score is its confidence; regions carry the entity scores
    r = _select(tiny_ner_dir, pool, tmp_path / "ls.json", "--n", "3", "--exclude", str(labelled), "--strategy",
                "uncertainty")
    assert r.exit_code == 0, r.output
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert [t["data"]["text"] for t in tasks] == [x["text"] for x in rows]
    assert [t["predictions"][0]["score"] for t in tasks] == [x["confidence"] for x in rows]
    r = _select(tiny_ner_dir, pool, tmp_path / "d.jsonl", "--n", "2", "--to", "doccano")
    assert r.exit_code == 0 and all("label" in json.loads(x) and "confidence" in json.loads(x)
                                    for x in (tmp_path / "d.jsonl").read_text().splitlines())


def test_random_is_seeded(tiny_ner_dir, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(POOL) + "\n")
    picks = []
    for seed in ("1", "1", "2"):
        r = _select(tiny_ner_dir, pool, tmp_path / "r.jsonl", "--n", "4", "--to", "jsonl", "--strategy", "random",
                    "--seed", seed)
        assert r.exit_code == 0, r.output
        picks.append([json.loads(x)["text"] for x in (tmp_path / "r.jsonl").read_text().splitlines()])
    assert picks[0] == picks[1] and len(set(picks[0])) == 4 and POOL[6] not in picks[0]


def test_diverse_spreads_the_batch_over_groups_of_doubtful_texts():
    # three tight groups of texts; the five least sure all come from group A (one template)
    torch.manual_seed(0)
    centres = torch.eye(3)
    vectors = torch.nn.functional.normalize(centres.repeat_interleave(6, 0) + 0.01 * torch.randn(18, 3), dim=1)
    doubt = torch.tensor([9.0, 8, 7, 6, 5, 0.1] + [2.0, 1.9, 1.8, 0.2, 0.2, 0.2] + [1.5, 1.4, 0.3, 0.3, 0.3, 0.3])
    assert sorted(torch.argsort(doubt, descending=True)[:3].tolist()) == [0, 1, 2]  # uncertainty: all from A
    picks = diverse_pick(doubt, vectors, 3, seed=0, beta=4)
    assert sorted(i // 6 for i in picks) == [0, 1, 2]  # one text from each group
    assert [float(doubt[i]) for i in picks] == sorted((float(doubt[i]) for i in picks), reverse=True)
    assert picks == diverse_pick(doubt, vectors, 3, seed=0, beta=4) and len(set(picks)) == 3


def test_diverse_from_the_cli(tiny_ner_dir, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(POOL) + "\n")
    r = _select(tiny_ner_dir, pool, tmp_path / "o.jsonl", "--n", "3", "--to", "jsonl", "--strategy", "diverse")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len({x["text"] for x in rows}) == 3 and POOL[6] not in [x["text"] for x in rows]
    assert [x["confidence"] for x in rows] == sorted(x["confidence"] for x in rows)  # least sure first
    r = _select(tiny_ner_dir, pool, tmp_path / "default.jsonl", "--n", "3", "--to", "jsonl")
    assert r.exit_code == 0, r.output  # diverse is the default (it measured best in the simulation)
    assert (tmp_path / "default.jsonl").read_text() == (tmp_path / "o.jsonl").read_text()


def test_the_models_own_training_data_is_never_chosen(tiny_llama, tmp_path):
    r = runner.invoke(app, ["train", "--model", str(tiny_llama), "--output", str(tmp_path / "run"), "--max-steps", "1",
                            "--set", "data.max_train_sentences=12", "--set", "data.dev=null", "--set",
                            "data.test=null", "--no-progress"])
    assert r.exit_code == 0, r.output
    trained = [sentence_text(s.tokens)[0] for s in load_corpus("conll2003:train", limit=12)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in trained[:5] + POOL[:2]))
    r = _select(tmp_path / "run" / "model", pool, tmp_path / "o.jsonl", "--n", "2", "--to", "jsonl")
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(x)["text"] for x in (tmp_path / "o.jsonl").read_text().splitlines()) == sorted(POOL[:2])
    r = _select(tmp_path / "run" / "model", pool, tmp_path / "o.jsonl", "--n", "3")
    assert r.exit_code == 2 and "--n 3: the pool has 2 texts that are new and not yet labelled (of 7)" in r.output


@pytest.mark.parametrize("case", ["empty", "unknown_format", "n_too_large", "all_labelled", "bad_strategy", "to_conll"])
def test_bad_input_is_a_one_line_error(case, tiny_ner_dir, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(POOL[:3]) + "\n")
    args, want = ["--n", "2"], ""
    if case == "empty":
        pool.write_text("")
        want = "pool"
    elif case == "unknown_format":
        args += ["--format", "xml"]
        want = "--format"
    elif case == "n_too_large":
        args = ["--n", "9"]
        want = "--n 9: the pool has 3 texts"
    elif case == "all_labelled":
        (tmp_path / "done.jsonl").write_text("".join(json.dumps({"text": t, "entities": []}) + "\n" for t in POOL[:3]))
        args += ["--exclude", str(tmp_path / "done.jsonl")]
        want = "every text of the pool is empty or already labelled"
    elif case == "bad_strategy":
        args += ["--strategy", "loudest"]
        want = "--strategy 'loudest'"
    else:
        args += ["--to", "conll"]
        want = "--to conll needs token input"
    r = _select(tiny_ner_dir, pool, tmp_path / "o.json", *args)
    assert r.exit_code == 2 and want in r.output and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and r.output.strip().endswith(errors[0]), r.output  # progress lines may precede it
