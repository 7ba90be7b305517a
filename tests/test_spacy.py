"""The spaCy component: found through the entry point, sets doc.ents like the model predicts, renders with displacy."""

import pytest

spacy = pytest.importorskip("spacy")

from llm_ner.inference.engine import NERModel  # noqa: E402

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


TEXTS = ["Peter visited New York and Washington on Monday .", "Apple hired John Smith from Google in London .",
         "", "The European Commission said on Thursday it disagreed ."]


@pytest.fixture(scope="module")
def nlp(tiny_ner_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("llm_ner", config={"model": str(tiny_ner_dir)})  # no import of llm_ner: the entry point finds it
    return nlp


def test_doc_ents_match_the_model(nlp, tiny_ner_dir):
    want = NERModel.from_pretrained(tiny_ner_dir)(TEXTS).entities
    assert sum(map(len, want)) > 0  # the test must be able to fail: the tiny model does predict entities
    docs = list(nlp.pipe(TEXTS))
    assert [d.text for d in docs] == TEXTS
    for doc, ents in zip(docs, want, strict=True):
        # words are space-separated here, so spaCy's tokens are our words and the spans carry over exactly
        assert [(s.start_char, s.end_char, s.label_) for s in doc.ents] == [(e.start, e.end, e.label) for e in ents]
        assert doc.spans["llm_ner"].attrs["scores"] == [e.score for e in ents]
    single = nlp(TEXTS[0])
    assert [(s.start_char, s.end_char, s.label_) for s in single.ents] == [
        (s.start_char, s.end_char, s.label_) for s in docs[0].ents]
    assert nlp.get_pipe("llm_ner").labels == ("LOC", "ORG", "PER")


def test_spans_that_cut_tokens_are_snapped_and_displacy_renders(nlp):
    from spacy import displacy

    # spaCy keeps "e-mail:ann@x.org" and "(London)" tokenised differently from our splitter: whatever the model
    # predicts must land on whole spaCy tokens, without overlaps, never crash.
    text = "Ann Lee (London) wrote to e-mail:ann@x.org and U.S.-based Apple's CEO."
    doc = nlp(text)
    assert len(doc.ents) > 0
    for s in doc.ents:
        assert text[s.start_char : s.end_char] == s.text
    html = displacy.render(doc, style="ent", page=False)
    assert all(s.text in html and s.label_ in html for s in doc.ents)


def test_missing_model_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a saved model dir"):
        spacy.blank("en").add_pipe("llm_ner")


def test_entities_below_min_score_go_to_review_spans(tiny_ner_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("llm_ner", config={"model": str(tiny_ner_dir), "min_score": 0.999})
    doc = nlp("Peter visited New York and Washington on Monday .")
    review = doc.spans["llm_ner_review"]
    assert all(s >= 0.999 for s in doc.spans["llm_ner"].attrs["scores"])
    assert len(review) > 0 and all(s < 0.999 for s in review.attrs["scores"])
    assert not {(s.start, s.end) for s in review} & {(e.start, e.end) for e in doc.ents}
