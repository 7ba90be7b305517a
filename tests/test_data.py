import json

import pytest

from llm_ner.data import (
    DataError,
    detect_scheme,
    iob2_to_bioes,
    load_corpus,
    read_conll,
    remap,
    spans_to_sentence,
    to_iob2,
)
from llm_ner.data.words import split_words
from llm_ner.labels import LabelSet


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_conll_four_columns_docstart_and_iob1(tmp_path):
    p = write(tmp_path, "a.txt", "-DOCSTART- -X- O O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n"
              "German JJ I-NP I-MISC\n\nPeter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n"
              "Smith NNP I-NP B-PER\n")
    sents = load_corpus(p)
    assert [s.tokens for s in sents] == [["EU", "rejects", "German"], ["Peter", "Blackburn", "Smith"]]
    # IOB1: I- starts an entity; B- separates two adjacent same-type entities.
    assert sents[0].tags == ["B-ORG", "O", "B-MISC"]
    assert sents[1].tags == ["B-PER", "I-PER", "B-PER"]
    assert sents[0].doc_id == sents[1].doc_id


def test_two_column_tab_and_crlf(tmp_path):
    p = write(tmp_path, "w.txt", "@paul\tO\r\nNew\tB-location\r\nYork\tI-location\r\n\r\nhi\tO\r\n")
    sents = load_corpus(p)
    assert sents[0].tags == ["O", "B-location", "I-location"] and len(sents) == 2


def test_bundled_corpora_counts():
    # Counts from SOURCE.md: the bundled copies are complete.
    assert len(load_corpus("conll2003:train")) == 14041
    assert len(load_corpus("conll2003:test")) == 3453
    assert len(load_corpus("wnut17:dev")) == 1009


@pytest.mark.parametrize("text,msg", [
    ("EU I-ORG\nrejects\n", "a.txt:2: expected 'token ... tag'"),
    ("EU I-ORG\nrejects X-FOO\n", "a.txt:2: invalid tag 'X-FOO'"),
    ("", "no sentences found"),
    ("\n\n\n", "no sentences found"),
])
def test_conll_errors_name_file_and_line(tmp_path, text, msg):
    p = write(tmp_path, "a.txt", text)
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        read_conll(p)


def test_wrong_encoding_names_line(tmp_path):
    p = write(tmp_path, "a.txt", "EU B-ORG\n\nM\xfcller B-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.txt:3: not valid UTF-8"):
        read_conll(p)


def test_strict_iob2_rejects_i_after_o(tmp_path):
    p = write(tmp_path, "a.txt", "the O\nNew B-LOC\nYork I-LOC\n\nsaid O\nYork I-LOC\n")
    assert load_corpus(p, scheme="iob2")[1].tags == ["O", "B-LOC"]  # lenient: repaired like conlleval
    with pytest.raises(DataError, match=r"a\.txt:5 token 2: tag 'I-LOC' follows 'O'"):
        load_corpus(p, scheme="iob2", strict=True)


def test_jsonl_tokens_and_length_mismatch(tmp_path):
    ok = write(tmp_path, "a.jsonl", json.dumps({"tokens": ["Ann", "runs"], "tags": ["B-PER", "O"]}) + "\n")
    assert load_corpus(ok)[0].tags == ["B-PER", "O"]
    bad = write(tmp_path, "b.jsonl", json.dumps({"tokens": ["a"], "tags": ["O"]}) + "\n"
                + json.dumps({"tokens": ["Ann", "runs"], "tags": ["B-PER"]}) + "\n")
    with pytest.raises(DataError, match=r"b\.jsonl:2: 2 tokens but 1 tags"):
        load_corpus(bad)
    broken = write(tmp_path, "c.jsonl", '{"tokens": ["a"], \n')
    with pytest.raises(DataError, match=r"c\.jsonl:1: invalid JSON"):
        load_corpus(broken)


def test_jsonl_spans_to_bio_and_errors(tmp_path):
    text = "Mail Jane Doe at jane.doe@example.com today."
    s, rep = spans_to_sentence(text, [{"start": 5, "end": 13, "label": "NAME"},
                                      {"start": 17, "end": 37, "label": "EMAIL"}], "r1")
    assert s.tokens == ["Mail", "Jane", "Doe", "at", "jane.doe@example.com", "today", "."]
    assert s.tags == ["O", "B-NAME", "I-NAME", "O", "B-EMAIL", "O", "O"]
    assert rep[0]["tokens"] == ["Jane", "Doe"]
    with pytest.raises(DataError, match="r1: entity X .* overlaps"):
        spans_to_sentence(text, [{"start": 5, "end": 13, "label": "NAME"}, {"start": 10, "end": 13, "label": "X"}],
                          "r1")
    with pytest.raises(DataError, match="outside the text"):
        spans_to_sentence(text, [{"start": 40, "end": 99, "label": "X"}], "r1")
    with pytest.raises(DataError, match="cuts a word"):
        spans_to_sentence(text, [{"start": 5, "end": 8, "label": "NAME"}], "r1")  # "Jan|e"
    p = write(tmp_path, "s.jsonl", json.dumps({"text": "Hi Bob", "entities": [{"start": 3, "end": 6, "label": "P"}]})
              + "\n" + json.dumps({"text": "Hi Bob", "entities": [{"start": 3, "end": 5, "label": "P"}]}) + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl:2 \(record 2\)"):
        load_corpus(p)


def test_scheme_detection_and_conversion():
    assert detect_scheme([["B-PER", "I-PER", "O"]]) == "iob2"
    assert detect_scheme([["I-PER", "I-PER", "O"]]) == "iob1"
    assert detect_scheme([["S-PER", "O"]]) == "bioes"
    bioes = ["B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG", "S-ORG"]
    iob2 = to_iob2(bioes, "bioes")
    assert iob2 == ["B-PER", "I-PER", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG", "B-ORG"]
    assert iob2_to_bioes(iob2) == bioes


def test_remap_keep_and_rename():
    from llm_ner.data import Sentence

    s = [Sentence(["a", "b", "c", "d"], ["B-PER", "I-PER", "B-MISC", "B-LOC"])]
    assert remap(s, keep=["PER", "LOC"])[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]
    assert remap(s, rename={"MISC": None, "LOC": "GPE"})[0].tags == ["B-PER", "I-PER", "O", "B-GPE"]


def test_split_words_follows_conll_tokenisation():
    """Raw text is split the way CoNLL-2003 is tokenised, so a model sees the words it was trained on."""
    text = "1. U.S. Open -- Smith 's 3,000 C$ 1/2 .500 +44 22/11/96 don't 1990s 2nd-placed S&P M. Jones ... 10="
    words = [text[a:b] for a, b in split_words(text)]
    assert words == ["1.", "U.S.", "Open", "--", "Smith", "'s", "3,000", "C$", "1/2", ".500", "+44", "22/11/96", "do",
                     "n't", "1990s", "2nd-placed", "S&P", "M.", "Jones", "...", "10="]
    plain = "in 1996. Then"
    assert [plain[a:b] for a, b in split_words(plain)] == ["in", "1996", ".", "Then"]
    mismatched = sum(s.tokens != [" ".join(s.tokens)[a:b] for a, b in split_words(" ".join(s.tokens))]
                     for s in load_corpus("conll2003:test"))
    assert mismatched < 60  # of 3,453: 28 (669 with the splitter before issue 13)


def test_split_words_offsets():
    text = "Dr. O'Neil (NYC) e-mails bob@x.org! Smith's"
    words = [text[a:b] for a, b in split_words(text)]
    assert words == ["Dr.", "O'Neil", "(", "NYC", ")", "e-mails", "bob@x.org", "!", "Smith", "'s"]


def test_labelset_order_transitions_and_schema(tmp_path):
    ls = LabelSet.from_types(["PER", "LOC"])
    assert ls.tags == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    a = ls.allowed_transitions()
    t = ls.tag2id
    assert not a[t["O"], t["I-PER"]] and not a[t["B-LOC"], t["I-PER"]]
    assert a[t["B-PER"], t["I-PER"]] and a[t["I-PER"], t["I-PER"]] and a[t["I-PER"], t["B-LOC"]]
    assert ls.allowed_starts().tolist() == [True, True, False, True, False]
    p = tmp_path / "schema.json"
    p.write_text(json.dumps({"types": [{"name": "EMAIL", "description": "an e-mail address"}, "NAME"]}))
    s = LabelSet.load(p)
    assert s.types == ("EMAIL", "NAME") and s.descriptions["EMAIL"] == "an e-mail address"


def test_multinerd_jsonl_fixture(tmp_path):
    from pathlib import Path

    from llm_ner.data import MULTINERD_TAGS

    fx = Path(__file__).parent / "fixtures" / "multinerd_en_sample.jsonl"
    with pytest.raises(DataError, match="integer tags need the label names"):
        load_corpus(fx)  # integer tags are never guessed to be MultiNERD's (issue 21)
    sents = load_corpus(fx, fmt="multinerd")
    assert len(sents) == 4  # the German record is filtered out
    assert sents[0].tags == ["B-PER", "I-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]
    assert sents[1].tags[8:10] == ["B-TIME", "I-TIME"] and sents[1].tags[5] == "B-FOOD"
    assert sents[3].tags[0] == "B-MYTH" and sents[3].tags[3:5] == ["B-VEHI", "I-VEHI"]
    assert len(MULTINERD_TAGS) == 31 and MULTINERD_TAGS[13] == "B-DIS" and MULTINERD_TAGS[25] == "B-PLANT"
    # system B of the assignment: keep PER ORG LOC DIS ANIM
    b = remap(sents, keep=["PER", "ORG", "LOC", "DIS", "ANIM"])
    assert b[1].tags[8:10] == ["O", "O"] and b[2].tags[:1] == ["B-DIS"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tokens": ["a"], "ner_tags": [99], "lang": "en"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: ner_tags must be integers 0\.\.30"):
        load_corpus(bad, fmt="multinerd")


def test_cleanconll_is_bundled_beside_conll2003():
    test = load_corpus("cleanconll:test")
    assert len(test) == 3427 and sum(len(s) for s in test) == 46504  # token and sentence splits fixed vs CoNLL-2003
    assert sum(t.startswith("B-") for s in test for t in s.tags) == 5725
    assert len(load_corpus("cleanconll:dev")) == 3233  # "dev" is an alias of the bundled "valid" split
    with pytest.raises(DataError, match="unknown bundled corpus cleanconll:train"):
        load_corpus("cleanconll:train")  # CleanCoNLL's training labels are not bundled
