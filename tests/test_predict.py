import numpy as np
import pytest
import torch
from tiny import ner_config

from llm_ner.data.words import split_words
from llm_ner.inference.engine import NERModel
from llm_ner.inference.outputs import tags_to_entities
from llm_ner.labels import LabelSet
from llm_ner.modeling.model import LLMForTokenClassification
from llm_ner.modeling.processor import (
    budget_batches,
    encode_texts,
    merge_windows,
    pack_rows,
    packed_inputs,
    sentence_text,
    unpack_word_logits,
)

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


LABELS = LabelSet.from_types(["PER", "LOC", "ORG"])
WORDS = (
    "Peter visited New York and Washington on Monday . Apple hired John Smith from Google in London . "
    "The European Commission said on Thursday it disagreed with German advice ."
).split()


def ner(tiny_llama, tok, **kw) -> NERModel:
    torch.manual_seed(1)
    cfg = ner_config(LABELS, str(tiny_llama), mode="frozen", **kw)
    model = LLMForTokenClassification.from_backbone(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)  # random but decisive head: many entities
    return NERModel(model, tok, batch_size=4)


def test_word_token_alignment_with_leading_spaces(tiny_tokenizer):
    text, offs = sentence_text(["EU", "rejects", "German", "call"])
    (w,) = encode_texts(tiny_tokenizer, [text], [offs], 64, 8)
    assert len(w.word_positions) == 4 and w.word_positions[0] == 0
    toks = tiny_tokenizer.convert_ids_to_tokens(w.input_ids)
    # every word's first token is the one that carries the word's first character (with its leading space)
    for k, p in enumerate(w.word_positions):
        assert tiny_tokenizer.convert_tokens_to_string([toks[p]]).strip()[0] == text[offs[k][0]]


def test_windows_cover_every_word_within_budget(tiny_tokenizer):
    words = WORDS * 4
    text, offs = sentence_text(words)
    wins = encode_texts(tiny_tokenizer, [text], [offs], 24, 8)
    assert len(wins) > 3 and all(len(w.input_ids) <= 24 for w in wins)
    covered = set()
    for w in wins:
        covered |= set(range(w.first_word, w.first_word + w.n_words))
    assert covered == set(range(len(words)))
    for a, b in zip(wins, wins[1:], strict=False):  # consecutive windows overlap
        assert b.first_word < a.first_word + a.n_words


def test_merge_prefers_the_most_central_window():
    from llm_ner.modeling.processor import Window

    w1 = Window(0, 0, [], [0] * 6, [])  # words 0..5
    w2 = Window(0, 3, [], [0] * 6, [])  # words 3..8
    merged = merge_windows([w1, w2], [9], [["a"] * 6, ["b"] * 6])[0]
    # word 3: margin 2 in w1 vs 0 in w2 -> a; word 4: 1 vs 1, a tie keeps the first -> a; word 5: 0 vs 2 -> b
    assert merged == ["a", "a", "a", "a", "a", "b", "b", "b", "b"]


def test_long_text_windowed_equals_unwindowed_for_context_free_model(tiny_llama, tiny_tokenizer):
    """With the head on the embedding layer (hidden_states[0]) and no CRF, each word's tag depends only on its own
    token, so a correct window split + merge must reproduce the single-pass tags exactly — including entities that
    straddle window edges."""
    long = ner(tiny_llama, tiny_tokenizer, head_layers=[0, 0], crf=False, max_length=1024)
    short = ner(tiny_llama, tiny_tokenizer, head_layers=[0, 0], crf=False, max_length=20, stride=8)
    short.model.load_state_dict(long.model.state_dict())
    text = " ".join(WORDS * 5)
    e_long, e_short = long(text).entities[0], short(text).entities[0]
    assert len(encode_texts(tiny_tokenizer, [text], [split_words(text)], 20, 8)) > 5
    assert len(e_long) > 10
    assert e_long == e_short


def test_predict_spans_are_inside_text_and_odd_inputs(tiny_llama, tiny_tokenizer):
    m = ner(tiny_llama, tiny_tokenizer, max_length=32, stride=8)
    texts = ["Peter  visited\tNew York.", "", "   ", "😀🎉", "ǅemal Ŋ ש ﺝ\u200d", "x" * 3000, " ".join(WORDS * 3)]
    out = m(texts).entities
    assert len(out) == len(texts) and out[1] == [] and out[2] == []
    for t, ents in zip(texts, out, strict=True):
        for e in ents:
            assert 0 <= e.start < e.end <= len(t) and t[e.start : e.end] == e.text
            assert e.label in LABELS.types and 0 <= e.score <= 1
    one = m("Peter visited London")  # a single text: a Predictions of one
    assert len(one) == 1 and one.texts == ["Peter visited London"]


def test_tags_to_entities():
    text = "Peter Smith met Ann in New York"
    offs = split_words(text)
    ents = tags_to_entities(text, offs, ["B-PER", "I-PER", "O", "I-PER", "O", "B-LOC", "I-LOC"], [0.5] * 7)
    assert [(e.text, e.label) for e in ents] == [("Peter Smith", "PER"), ("Ann", "PER"), ("New York", "LOC")]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batching_does_not_change_predictions(tiny_llama, tiny_tokenizer, batch_size):
    m = ner(tiny_llama, tiny_tokenizer)
    texts = [" ".join(WORDS[i : i + n]) for i, n in ((0, 5), (3, 17), (10, 2), (0, 30))]
    ref = [m(t).entities[0] for t in texts]
    m.batch_size = batch_size
    got = m(texts).entities
    def key(res):
        return [[(e.start, e.end, e.label) for e in x] for x in res]

    assert key(got) == key(ref)


def test_sentences_with_raw_text_are_predicted_on_that_text(tiny_llama, tiny_tokenizer):
    """Span-annotated data keeps the user's text ("Ann's car", no space before 's): evaluation must feed the model
    that text, as training did (align.texts_and_offsets), not the words re-joined with spaces."""
    from llm_ner.data import Sentence

    model = ner(tiny_llama, tiny_tokenizer)
    text = "Mail Ann Lee's team at ann.lee@example.com (London), today."
    words = split_words(text)
    s = Sentence([text[a:b] for a, b in words], ["O"] * len(words), text=text, offsets=words)
    assert model([s]).tags[0] == model.decode(model.run([text]))[0][0]


def test_packing_equals_one_window_per_row(tiny_llama, tiny_tokenizer):
    """Packed rows (several windows per row, block-diagonal mask, positions restarting) must give the same tags and
    confidences as one padded row per window: packing is a speed-up, never a change of model."""
    m = ner(tiny_llama, tiny_tokenizer)
    texts = [" ".join(WORDS[i : i + n]) for i in range(0, 20, 3) for n in (1, 2, 5, 11, 29)] + [""]
    m.pack, m.max_batch_tokens = False, 256
    ref_tags, ref_conf = m.decode(m.run(texts))
    m.pack = True
    m.stats.clear()
    got_tags, got_conf = m.decode(m.run(texts))
    assert got_tags == ref_tags
    for a, b in zip(got_conf, ref_conf, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert m.stats["batches"] < len(texts) // 4  # it did pack: far fewer forward passes than windows
    assert 1 - m.stats["tokens"] / m.stats["padded_tokens"] < 0.5


def test_pack_places_every_window_once_within_width():
    lengths = [150, 90, 70, 64, 40, 33, 20, 9, 9, 3, 1, 1, 1]
    batches = pack_rows(list(range(len(lengths))), lengths, max_batch_tokens=300)
    placed = sorted(i for rows in batches for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    for rows in batches:
        width = max(max(lengths[row[0]] for row in rows), 64)
        assert all(sum(lengths[i] for i in row) <= width for row in rows)
        assert len(rows) * width <= max(300, width)


def test_models_causal_in_some_layers_are_not_packed(tiny_llama, tiny_tokenizer):
    m = ner(tiny_llama, tiny_tokenizer, unmask="upper_half")
    assert not m.model.packable
    texts = [" ".join(WORDS[:n]) for n in (3, 9, 20)]
    packed = m(texts).entities
    m.pack = False
    assert [[(e.start, e.end, e.label) for e in x] for x in packed] == \
        [[(e.start, e.end, e.label) for e in x] for x in m(texts).entities]


def test_budget_batches_respect_the_budget_and_keep_order():
    lengths = [120, 100, 60, 60, 30, 30, 30, 10, 5]
    order = list(range(len(lengths)))
    batches = budget_batches(order, lengths, batch_size=2, max_batch_tokens=200)
    assert [i for b in batches for i in b] == order  # every window once, in order
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200
        assert len(b) <= 16  # at most 8 x batch_size
    assert budget_batches(order, lengths, batch_size=4, max_batch_tokens=None) == [order[:4], order[4:8], order[8:]]


def test_packed_inputs_round_trip_through_unpack():
    from llm_ner.modeling.processor import Window

    wins = [Window(k, 0, list(range(1, n + 1)), list(range(0, n, 2)), [0] * n) for k, n in enumerate((6, 4, 2))]
    batch, where = packed_inputs(wins, [[0, 2], [1]], pad_id=0)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["segment_ids"].tolist() == [[1] * 6 + [2] * 2, [1] * 4 + [0] * 4]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert batch["word_positions"][0].tolist() == [0, 2, 4, 6]  # window 2's word sits after window 0's six tokens
    logits = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # (rows, word slots, tags)
    per_window, mask = unpack_word_logits(logits, where)
    order = [w[0] for w in where]
    assert order == [0, 2, 1]
    assert (per_window[0, :3] == logits[0, :3]).all() and (per_window[1, :1] == logits[0, 3:4]).all()
    assert (per_window[2, :2] == logits[1, :2]).all()
    assert mask.sum(1).tolist() == [3, 1, 2]
