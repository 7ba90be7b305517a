"""Fuzzing prediction and the readers with hypothesis: spans always inside the text and equal to its slice, or a
clean DataError — never a crash."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import ner_config

from llm_ner.data import DataError, load_corpus
from llm_ner.data.readers import read_conll
from llm_ner.data.words import split_words
from llm_ner.inference.engine import NERModel
from llm_ner.labels import LabelSet
from llm_ner.modeling.model import LLMForTokenClassification

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


SPECIAL = ["\u200d", "\u200b", "\u202e", "\r\n", "\t", "\x00", "\x1b", "ש", "ﺝ", "😀", "👩‍👩‍👧", "e\u0301", " "]
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL), st.sampled_from(["Peter", "New York",
                                                                                           "EU", ".", "-"])),
                 max_size=25).map("".join)


@pytest.fixture(scope="module")
def ner(tiny_llama, tiny_tokenizer):
    torch.manual_seed(0)
    m = LLMForTokenClassification.from_backbone(
        ner_config(LabelSet.from_types(["PER", "LOC"]), str(tiny_llama), mode="frozen", max_length=24, stride=8))
    with torch.no_grad():
        m.classifier.weight.normal_(std=3.0)
    return NERModel(m, tiny_tokenizer, batch_size=4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(texts, min_size=1, max_size=4))
def test_predict_spans_always_inside_and_aligned(ner, batch):
    for text, ents in zip(batch, ner(batch).entities, strict=True):
        for e in ents:
            assert 0 <= e.start < e.end <= len(text) and text[e.start : e.end] == e.text


def test_very_long_document(ner):
    text = ("Peter visited New York. " * 4200)[:100_000]
    words = split_words(text)
    tags, _ = ner.decode(ner.run([text]))
    assert len(tags[0]) == len(words) and None not in tags[0]  # every word of ~20k got a tag from some window
    ents = ner(text).entities[0]
    assert all(text[e.start : e.end] == e.text for e in ents)
    # The tiny head predicts entities densely (13,890 here): finding few, or none near either end, means windows
    # were lost.
    assert len(ents) > 5000 and ents[0].start < 100 and ents[-1].end > len(text) - 100


@settings(max_examples=80, deadline=None)
@given(content=st.text(max_size=200))
def test_readers_never_crash(tmp_path_factory, content):
    p = tmp_path_factory.mktemp("fz") / "f.txt"
    p.write_text(content, encoding="utf-8", newline="")
    try:
        sents = load_corpus(p)
    except DataError:
        return
    for s in sents:
        assert len(s.tokens) == len(s.tags) and all(t.strip() for t in s.tokens)


# CoNLL-shaped input: most generated files must be read, so the property is exercised (the content fuzzer above is
# refused as DataError most of the time). Each line is a token, a separator and a tag; a line is bad when its token is
# empty ("\tB-PER" once read as an empty token) or its tag is not a tag.
word = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=0, max_size=5)
line = st.tuples(word, st.sampled_from([" ", "\t", "  ", " \t"]), st.sampled_from(["O", "B-PER", "I-LOC", "B-MISC",
                                                                                    "B-", "X"]))
sentence = st.lists(line, min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(sents=st.lists(sentence, min_size=1, max_size=4))
def test_conll_reader_reads_what_is_there_or_names_the_bad_line(tmp_path_factory, sents):
    rows, bad = [], None
    for sent in sents:
        for tok, sep, tag in sent:
            rows.append(f"{tok}{sep}{tag}")
            if bad is None and (not tok or tok == "-DOCSTART-" or tag in ("B-", "X")):
                bad = len(rows)  # the first line that cannot be read (1-based)
        rows.append("")
    p = tmp_path_factory.mktemp("fz") / "f.conll"
    p.write_text("\n".join(rows), encoding="utf-8")
    content = [r for r in rows if r.strip() and r.split()[0] != "-DOCSTART-"]
    if 0 < sum("\t" in r for r in content) < len(content):  # tabs on some lines only: refused, naming a line
        with pytest.raises(DataError, match="separates columns by spaces, the file by tabs"):
            read_conll(p)
        return
    if bad is not None and rows[bad - 1].split()[0:1] != ["-DOCSTART-"]:
        with pytest.raises(DataError, match=rf":{bad}: "):
            read_conll(p)
        return
    if bad is not None:  # a -DOCSTART- token is a document marker, not a word: skip these cases
        return
    got = read_conll(p)
    assert [s.tokens for s in got] == [[tok for tok, _, _ in sent] for sent in sents]
    assert [s.tags for s in got] == [[tag for _, _, tag in sent] for sent in sents]


def test_a_line_with_a_tag_and_no_token_is_refused(tmp_path):
    p = tmp_path / "f.conll"
    p.write_text("Peter B-PER\n B-PER\n")
    with pytest.raises(DataError, match=r"f.conll:2: expected 'token ... tag'"):  # columns split at whitespace
        read_conll(p)
    p.write_text("Peter\tB-PER\n\tB-PER\n")  # every line has a tab: tab-separated, and the token is empty
    with pytest.raises(DataError, match=r"f.conll:2: the token \(first column\) is empty"):
        read_conll(p)
