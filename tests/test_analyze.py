from llm_ner.data import Sentence
from llm_ner.evaluation.analyze import analyze, classify, spans


def test_spans_iob1_and_iob2():
    assert spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)]


def test_each_error_category():
    gold = [("PER", 0, 1), ("LOC", 3, 3), ("ORG", 5, 7), ("ORG", 9, 10), ("MISC", 12, 13), ("PER", 15, 16),
            ("LOC", 18, 19)]
    pred = [("PER", 0, 1), ("ORG", 3, 3), ("ORG", 5, 6), ("ORG", 8, 10), ("MISC", 13, 14), ("LOC", 15, 15),
            ("PER", 22, 22)]
    matched, spurious = classify(gold, pred)
    assert [c for _, c, _ in matched] == ["correct", "wrong_type", "boundary_short", "boundary_long",
                                          "boundary_shift", "type_and_boundary", "missed"]
    assert spurious == [("PER", 22, 22)]


def test_analyze_report_counts():
    train = [Sentence(["Paris", "is", "nice"], ["B-LOC", "O", "O"])]
    test = [Sentence(["Paris", "and", "Rome"], ["B-LOC", "O", "B-LOC"]),
            Sentence(["Bob", "Smith", "ran"], ["B-PER", "I-PER", "O"])]
    pred = [["B-LOC", "O", "O"], ["B-PER", "O", "B-ORG"]]
    a = analyze(test, pred, train=train)
    assert a["taxonomy_total"] == {"correct": 1, "missed": 1, "boundary_short": 1, "spurious": 1}
    assert a["confusion"]["LOC"] == {"LOC": 1, "O": 1} and a["confusion"]["O"] == {"ORG": 1}
    assert a["seen_unseen"]["seen"]["recall"] == 100.0 and a["seen_unseen"]["unseen"]["recall"] == 0.0
    assert a["worst_sentences"][0]["index"] == 1 and a["worst_sentences"][0]["errors"] == 2


def test_confused_forms_keep_the_predicted_words_of_a_boundary_error():
    test = [Sentence(["Bob", "Smith", "ran", "to", "Rome"], ["B-PER", "I-PER", "O", "O", "B-LOC"])]
    a = analyze(test, [["B-PER", "O", "O", "O", "B-ORG"]])
    forms = {(f["text"], f["pred"]): f["pred_text"] for f in a["confused_forms"]}
    assert forms == {("Bob Smith", "PER"): "Bob", ("Rome", "ORG"): ""}  # a type error on the same words: no repeat
