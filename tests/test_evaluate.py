import pytest

from llm_ner.data import DataError
from llm_ner.evaluation.evaluate import compute_metrics, format_table, score_files


def test_hand_checked_case():
    # gold: PER(0-1), LOC(3), ORG(5)
    # pred: PER(0-1) correct, LOC(3) as ORG (wrong type), ORG(5) missed, MISC(6) spurious
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "O", "B-MISC"]]
    m = compute_metrics(gold, pred)
    # 1 correct of 3 predicted and 3 gold: P = R = F1 = 33.33 (conlleval prints 33.33 / 33.33 / 33.33)
    assert m["precision"] == pytest.approx(100 / 3) and m["recall"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(100 / 3)
    assert m["accuracy"] == pytest.approx(100 * 4 / 7)
    assert m["per_type"]["PER"]["f1"] == 100 and m["per_type"]["LOC"]["recall"] == 0
    assert m["per_type"]["MISC"]["support"] == 0
    assert m["macro_f1"] == pytest.approx((100 + 0 + 0 + 0) / 4)


def test_partial_boundary_is_an_error_not_a_half_match():
    m = compute_metrics([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-PER", "O"]])
    assert m["f1"] == 0.0


def write(p, rows):
    p.write_text("\n\n".join("\n".join(" ".join(r) for r in sent) for sent in rows) + "\n")
    return p


def test_score_files_iob1_equals_iob2(tmp_path):
    gold1 = write(tmp_path / "g1.txt", [[("EU", "I-ORG"), ("and", "O"), ("Bonn", "I-LOC"), ("Paris", "B-LOC")]])
    gold2 = write(tmp_path / "g2.txt", [[("EU", "B-ORG"), ("and", "O"), ("Bonn", "B-LOC"), ("Paris", "B-LOC")]])
    pred = write(tmp_path / "p.txt", [[("EU", "B-ORG"), ("and", "O"), ("Bonn", "B-LOC"), ("Paris", "I-LOC")]])
    m1, m2 = score_files(gold1, pred), score_files(gold2, pred)
    entity_keys = ("precision", "recall", "f1", "macro_f1", "per_type", "strict", "accuracy_iob2")
    assert {k: m1[k] for k in entity_keys} == {k: m2[k] for k in entity_keys}
    # token accuracy as conlleval counts it, on the tags as given: IOB1 gold differs from IOB2 predictions in tags
    assert m1["accuracy"] == pytest.approx(25.0) and m2["accuracy"] == pytest.approx(75.0)
    # pred read like conlleval: "Bonn Paris" is one LOC -> 1 of 2 predicted correct, 1 of 3 gold found
    assert m1["precision"] == pytest.approx(50.0) and m1["recall"] == pytest.approx(100 / 3)


def test_score_files_token_mismatch_names_line(tmp_path):
    g = write(tmp_path / "g.txt", [[("a", "O"), ("b", "O")], [("c", "O"), ("d", "B-X")]])
    p = write(tmp_path / "p.txt", [[("a", "O"), ("b", "O")], [("c", "O"), ("e", "B-X")]])
    with pytest.raises(DataError, match=r"g\.txt:5 has 'd' but .*p\.txt:5 has 'e'"):
        score_files(g, p)


def test_strict_iob2_mode_drops_entities_that_start_with_i():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC", "O"]]  # LOC starts with I-: conlleval counts it, strict IOB2 does not
    m = compute_metrics(gold, pred)
    assert m["f1"] == 100.0
    assert m["strict"]["precision"] == 100.0 and m["strict"]["recall"] == 50.0
    assert m["strict"]["f1"] == pytest.approx(200 / 3)
    assert "strict IOB2" in format_table(m)
