"""What every benchmark shares: the test texts, word counts, memory readings, and the paired-timing helpers (two arms
timed in turn on the same machine, the median of their ratios)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


CONLL_TYPES = {"PERSON": "PER", "ORG": "ORG", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "NORP": "MISC",
               "EVENT": "MISC", "WORK_OF_ART": "MISC", "LAW": "MISC", "PRODUCT": "MISC", "LANGUAGE": "MISC"}
# spaCy's OntoNotes types -> CoNLL-2003 types; DATE, TIME, MONEY, PERCENT, QUANTITY, ORDINAL, CARDINAL -> O


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def test_texts(n: int | None = None, split: str = "test") -> tuple[list, list[str]]:
    from llm_ner.data import load_corpus
    from llm_ner.modeling.processor import sentence_text

    sents = load_corpus(f"conll2003:{split}", limit=n)
    return sents, [sentence_text(s.tokens)[0] for s in sents]


def n_words(texts: list[str]) -> int:
    """Words as the words/s columns count them: whitespace-separated (CoNLL tokens joined by spaces)."""
    return sum(len(x.split()) for x in texts)


def nonembedding_params(backbone) -> int:
    emb = backbone.get_input_embeddings().weight
    return sum(p.numel() for p in backbone.parameters() if p is not emb)


def median_ratio(rounds: list[dict]) -> float:
    """The median of alternated rounds' "ratio" (the upper one of an even count)."""
    ratios = sorted(r["ratio"] for r in rounds)
    return ratios[len(ratios) // 2]


def _alternate(runs: dict, words: int, rounds: int) -> tuple[list[dict], float]:
    """Time two runs (name -> callable over the same `words` words) in turn, `rounds` times: the VM's speed drifts by
    tens of percent over minutes, so a speed-up measured minutes apart can be off by as much; alternating makes each
    pair see the same machine. -> per round {name: words/s, "ratio": second / first}, and the median ratio."""
    import statistics

    base, fast = list(runs)
    out = []
    for _ in range(rounds):
        r = {}
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            r[name] = round(words / (time.perf_counter() - t), 1)
        r["ratio"] = round(r[fast] / r[base], 2)
        out.append(r)
    return out, round(statistics.median(r["ratio"] for r in out), 2)
