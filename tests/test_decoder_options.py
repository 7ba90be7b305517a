"""What only a decoder can do, on the tiny Llama: sequence repetition, early exit, document context."""

import pytest
import torch
from test_model import LABELS, batch_for, build, head_input
from test_train import tiny_cfg
from tiny import ner_config

from llm_ner.config import ConfigError, load_config
from llm_ner.data import Sentence
from llm_ner.inference.engine import NERModel
from llm_ner.modeling.model import LLMForTokenClassification, repeat_rows
from llm_ner.modeling.processor import document_groups, document_texts, encode_sentences, merge_windows, split_documents
from llm_ner.training.train import train

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


# ----------------------------------------------------------------------------------------------------------------
# sequence repetition


def test_repeat_rows_lays_out_copies_and_points_at_the_last():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out, m, last = repeat_rows(ids, mask, 2)
    assert out.shape == m.shape == (2, 6)
    assert out[0].tolist() == [5, 6, 7, 5, 6, 7]
    assert out[1, :4].tolist() == [8, 9, 8, 9] and m[1].tolist() == [1, 1, 1, 1, 0, 0]
    assert last[0, :3].tolist() == [3, 4, 5] and last[1, :2].tolist() == [2, 3]
    out3, _, last3 = repeat_rows(ids, mask, 3)
    assert out3[1, :6].tolist() == [8, 9] * 3 and last3[1, :2].tolist() == [4, 5]


def test_repeat_config_defaults_to_causal_attention():
    cfg = load_config(None, {"model.transform": "repeat", "model.repeat": 4})
    assert cfg.model.unmask == "none" and cfg.model.repeat == 4
    assert load_config(None, {"model.transform": "repeat", "model.unmask": "all"}).model.unmask == "all"
    with pytest.raises(ConfigError):
        load_config(None, {"model.transform": "repeat", "model.repeat": 1})


def test_repeat_reads_each_word_from_its_last_copy(tiny_llama, tiny_tokenizer):
    a = batch_for(tiny_tokenizer, ["Peter visited London today ."])
    b = batch_for(tiny_tokenizer, ["Peter visited London yesterday !"])
    model = build(tiny_llama, transform="repeat", repeat=2)
    assert model.unmasked_layers == [] and not model.packable and model.length_factor == 2
    # attention stays causal, yet the first word now sees the words after it (through the first copy)
    assert not torch.allclose(head_input(model, a)[:, 0], head_input(model, b)[:, 0], atol=1e-4)
    # and what the head reads at each token is the backbone's state at that token's second (last) copy
    ids, mask, _ = repeat_rows(a["input_ids"], a["attention_mask"], 2)
    with torch.no_grad():
        states = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # (1,2L,H)
    L = int(a["attention_mask"].sum())
    torch.testing.assert_close(head_input(model, a)[0, :L], states[0, L:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(head_input(model, a)[0, :L], states[0, :L], atol=1e-4)  # not the first copy


def test_repeat_answers_do_not_depend_on_the_batch(tiny_llama, tiny_tokenizer):
    model = build(tiny_llama, transform="repeat", repeat=3, max_length=128)
    alone = batch_for(tiny_tokenizer, ["Peter visited London ."])
    padded = batch_for(tiny_tokenizer, ["Peter visited London .", "a much longer sentence that forces lots of padding"])
    with torch.no_grad():
        x, y = model(**alone).logits[0], model(**padded).logits[0, : alone["word_mask"].sum()]
    torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


def test_repeat_window_limit_is_checked(tiny_llama):
    with pytest.raises(ConfigError, match="positions"):
        build(tiny_llama, transform="repeat", repeat=4, max_length=256)  # 1024 > the tiny model's 512


# ----------------------------------------------------------------------------------------------------------------
# early exit


def test_exit_layer_reads_that_layer_and_drops_the_rest(tiny_llama, tiny_tokenizer):
    batch = batch_for(tiny_tokenizer, ["Peter visited London today .", "EU rejects German call"])
    full = build(tiny_llama)
    short = build(tiny_llama, exit_layer=2)
    assert len(short.backbone.layers) == 2 == short.backbone.config.num_hidden_layers
    assert len(full.backbone.layers) == 4
    seen = {}
    hook = full.backbone.layers[1].register_forward_hook(
        lambda m, i, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        full(**batch)
    hook.remove()
    with torch.no_grad():
        expect = full.backbone.norm(seen["h"])  # layer 2's output through the final norm
    got = head_input(short, batch)  # (B,T,H): the head runs on every token
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)


def test_exit_layer_model_saves_and_loads(tiny_llama, tiny_tokenizer, tmp_path):
    batch = batch_for(tiny_tokenizer, ["Peter visited London today ."])
    model = build(tiny_llama, exit_layer=3)
    model.save_pretrained(tmp_path / "m", tokenizer=tiny_tokenizer)
    again = LLMForTokenClassification.from_pretrained(tmp_path / "m")
    assert len(again.backbone.layers) == 3
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, again(**batch).logits)
    frozen = build(tiny_llama, exit_layer=1, mode="frozen")  # frozen: the backbone reloads from the source
    frozen.save_pretrained(tmp_path / "f")
    assert len(LLMForTokenClassification.from_pretrained(tmp_path / "f").backbone.layers) == 1


def test_exit_layer_out_of_range_is_a_config_error(tiny_llama):
    with pytest.raises(ConfigError, match="exit_layer"):
        build(tiny_llama, exit_layer=5)


# ----------------------------------------------------------------------------------------------------------------
# document context

DOC = [Sentence("Peter Blackburn visited London .".split(), ["B-PER", "I-PER", "O", "B-LOC", "O"], "d1"),
       Sentence("He met John .".split(), ["O", "O", "B-PER", "O"], "d1"),
       Sentence("EU rejects German call .".split(), ["B-ORG", "O", "B-MISC", "O", "O"], "d2"),
       Sentence("Bonn .".split(), ["B-LOC", "O"], None),
       Sentence("Paris .".split(), ["B-LOC", "O"], None)]


def test_documents_group_consecutive_sentences_and_split_back():
    assert document_groups(DOC) == [[0, 1], [2], [3], [4]]
    texts, offsets, groups = document_texts(DOC)
    assert texts[0] == "Peter Blackburn visited London .\nHe met John ."
    assert [texts[0][a:b] for a, b in offsets[0]] == DOC[0].tokens + DOC[1].tokens
    back = split_documents([[t for i in g for t in DOC[i].tags] for g in groups], groups, [len(s) for s in DOC])
    assert back == [s.tags for s in DOC]


def test_document_windows_never_lose_a_sentence(tiny_tokenizer):
    sents = [Sentence(f"Peter visited London number {i} today .".split(), ["O"] * 7, "doc") for i in range(12)]
    wins = encode_sentences(tiny_tokenizer, sents, LABELS.encode, 40, 12, context="document")
    assert len(wins) > 2 and all(len(w.input_ids) <= 40 for w in wins)  # one long document, several windows
    texts, offsets, groups = document_texts(sents)
    merged = merge_windows(wins, [len(o) for o in offsets], [list(range(w.first_word, w.first_word + w.n_words))
                                                              for w in wins])
    assert merged[0] == list(range(len(offsets[0])))  # every word of every sentence, from some window
    per_sent = split_documents(merged, groups, [len(s) for s in sents])
    assert [len(x) for x in per_sent] == [7] * 12


def test_training_windows_never_begin_inside_an_entity(tiny_tokenizer):
    """A window cut inside an entity begins with I-X, which the CRF forbids at a start (a constant -10,000 in the gold
    path's score): training windows start at the entity's first word instead, and still cover every word."""
    words = "Peter Paul Smith visited New York City and Los Angeles today .".split()
    tags = ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O", "B-LOC", "I-LOC", "O", "O"]
    sents = [Sentence(words, tags, "doc") for _ in range(10)]
    no_start = frozenset(i for i, ok in enumerate(LABELS.allowed_starts().tolist()) if not ok)

    def starts(wins):
        return [LABELS.tags[w.labels[0]] for w in wins]

    old_cuts = 0  # windows the unconstrained cut begins with I-X: the test must see some
    for length, stride in ((24, 6), (30, 8), (40, 12)):
        cut = encode_sentences(tiny_tokenizer, sents, LABELS.encode, length, stride, context="document")
        wins = encode_sentences(tiny_tokenizer, sents, LABELS.encode, length, stride, "document", no_start)
        assert not any(t.startswith("I-") for t in starts(wins)), (length, stride)
        _, offsets, _ = document_texts(sents)
        merged = merge_windows(wins, [len(o) for o in offsets],
                               [list(range(w.first_word, w.first_word + w.n_words)) for w in wins])
        assert merged[0] == list(range(len(offsets[0])))
        old_cuts += sum(t.startswith("I-") for t in starts(cut))
    assert old_cuts, "no window size cut an entity: the test would not see the old behaviour"


def test_document_context_predicts_sentences_with_their_neighbours(tiny_llama, tiny_tokenizer):
    cfg = tiny_cfg(tiny_llama, "unused")
    model = build(tiny_llama)
    model.config.context = "document"
    ner = NERModel(model, tiny_tokenizer)
    fed = ner.run(DOC).windows
    tags = ner(DOC).tags
    assert [len(t) for t in tags] == [len(s) for s in DOC]
    assert len(fed) == 4  # d1's two sentences share one window
    assert len(fed[0].word_positions) == len(DOC[0]) + len(DOC[1])
    # what a word of d1's first sentence gets depends on the second sentence (its context) ...
    other = [DOC[0], Sentence("Paris burns today .".split(), ["B-LOC", "O", "O", "O"], "d1")]
    conf = [ner.decode(ner.run(d))[1][0][:5] for d in (DOC[:2], other)]
    assert conf[0] != conf[1]
    # ... and not on it in sentence mode
    model.config.context = "sentence"
    assert ner(DOC[:2]).tags[0] == ner(other).tags[0]
    assert cfg.data.context == "sentence"


def test_training_with_document_context_end_to_end(tiny_llama, tmp_path):
    cfg = tiny_cfg(tiny_llama, tmp_path / "run", **{"data.context": "document", "training.max_steps": 4,
                                                   "training.eval_steps": 2})
    s = train(cfg, progress=False)
    assert s["test"] is not None
    saved = LLMForTokenClassification.from_pretrained(tmp_path / "run" / "model")
    assert saved.config.context == "document"


# ----------------------------------------------------------------------------------------------------------------
# Gemma 3: sliding-window layers stay windowed when unmasked


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gemma3_unmasking_keeps_each_layer_kind(tmp_path, attn):
    from tiny import make_gemma3

    from llm_ner.labels import LabelSet

    path = make_gemma3(tmp_path / "gemma", sliding_window=3)
    cfg = ner_config(LabelSet.from_types(["PER"]), str(path), attn_implementation=attn)
    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(cfg).eval()
    assert model.sliding_layers == [0, 1, 2] and model.unmasked_layers == [0, 1, 2, 3]

    def layer_out(ids):
        outs = []
        hooks = [lay.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
                 for lay in model.backbone.layers]
        T = ids.size(1)
        with torch.no_grad():
            model(ids, torch.ones_like(ids), torch.arange(T)[None], torch.ones(1, T, dtype=torch.bool))
        for h in hooks:
            h.remove()
        return outs

    base = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    near, far = base.clone(), base.clone()
    near[0, 2] = 20  # 2 positions after token 0: inside the window of 3
    far[0, 5] = 20  # 5 positions after: outside it
    b, n, f = layer_out(base), layer_out(near), layer_out(far)
    # first (sliding) layer, token 0: sees the token 2 ahead (bidirectional) but not the one 5 ahead (windowed)
    assert not torch.allclose(b[0][0, 0], n[0][0, 0], atol=1e-5)
    assert torch.allclose(b[0][0, 0], f[0][0, 0], atol=1e-6)
    # the global last layer does see 5 ahead
    assert not torch.allclose(b[3][0, 0], f[3][0, 0], atol=1e-5)


def test_band_mask_never_leaves_a_query_without_keys():
    from llm_ner.modeling.model import band, padding_only_mask

    am = torch.zeros(1, 12, dtype=torch.long)
    am[0, :3] = 1  # 3 tokens, 9 padding: pad queries 3+ positions past the last token see nothing in a window of 3
    m = band(padding_only_mask(am, torch.float32), 3)
    assert not (m == torch.finfo(torch.float32).min).all(-1).any()
    assert m[0, 0, 0, 2] == 0 and m[0, 0, 0, 3] < 0  # real query 0: sees key 2 (within 3), not pad key 3


def test_jsonl_records_carry_their_document(tmp_path):
    import json

    from llm_ner.data import load_corpus

    recs = [{"text": "Peter flew to Paris.", "entities": [{"start": 0, "end": 5, "label": "PER"}], "doc_id": "a"},
            {"text": "He liked it.", "entities": [], "doc_id": "a"},
            {"text": "Bonn is small.", "entities": [{"start": 0, "end": 4, "label": "LOC"}], "doc_id": "b"}]
    spans = tmp_path / "spans.jsonl"
    spans.write_text("\n".join(json.dumps(r) for r in recs))
    toks = tmp_path / "tokens.jsonl"
    toks.write_text("\n".join(json.dumps({"tokens": ["Hi", "there"], "tags": ["O", "O"], "doc_id": d}) for d in "aab"))
    for f in (spans, toks):
        assert document_groups(load_corpus(str(f))) == [[0, 1], [2]], f
    texts, offsets, _ = document_texts(load_corpus(str(spans)))
    assert texts[0] == "Peter flew to Paris.\nHe liked it." and texts[0][offsets[0][-2][0]:offsets[0][-2][1]] == "it"


def test_an_instruction_is_read_first_and_never_tagged(tiny_llama, tiny_tokenizer, tmp_path):
    """model.instruction: the types in words, in every window before its words (after BOS), inside max_length; the
    words keep their own tokens, and a trained model predicts through it (training and prediction alike)."""
    from llm_ner.data.words import split_words
    from llm_ner.labels import LabelSet, instruction
    from llm_ner.modeling.processor import encode_texts

    ls = LabelSet.from_types(["LOC", "PER"])
    prefix = instruction(ls, "names")
    assert prefix == "Entity types: location; person." and instruction(ls, "none") == ""
    text = "Peter Blackburn visited Paris on Monday ."
    plain = encode_texts(tiny_tokenizer, [text], [split_words(text)], 64, 8)[0]
    inst = encode_texts(tiny_tokenizer, [text], [split_words(text)], 64, 8, prefix=prefix)[0]
    n = len(inst.input_ids) - len(plain.input_ids)
    assert n > 3 and inst.token_word.count(-1) == plain.token_word.count(-1) + n  # its tokens belong to no word
    assert [inst.input_ids[p] for p in inst.word_positions] == [plain.input_ids[p] for p in plain.word_positions]
    long = " ".join([text] * 30)
    wins = encode_texts(tiny_tokenizer, [long], [split_words(long)], 48, 8, prefix=prefix)
    assert len(wins) > 2 and all(len(w.input_ids) <= 48 and w.input_ids[:n] == inst.input_ids[:n] for w in wins)
    assert {w.first_word + k for w in wins for k in range(w.n_words)} == set(range(len(split_words(long))))
    summary = train(tiny_cfg(tiny_llama, tmp_path / "run", **{"model.instruction": "names"}), progress=False)
    ner = NERModel.from_pretrained(tmp_path / "run" / "model")
    assert ner.model.config.model.instruction == "names" and summary["global_step"] == 8
    assert len(ner([text]).tags[0]) == len(split_words(text))
