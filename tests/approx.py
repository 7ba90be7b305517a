"""How exactly two model outputs must agree in a test (issue 20: the suite passes on every x86-64 CPU).

Tags, spans, labels and texts are compared exactly: they are decisions, and a test that lets them drift hides bugs.
Scores are floats, and floats depend on where they were computed: the CPU's kernels (AMX, AVX-512, AVX2 and the scalar
`ATEN_CPU_CAPABILITY=default` path each round differently), the thread count, and the batch a text shares (padding and
packing change the order of float sums). So a score is compared within a tolerance that says why it is that size.
"""

from __future__ import annotations

from collections.abc import Iterable

# An entity score is a probability: exp of (path score - log Z) from the CRF's forward-backward over one window, in
# fp32. Logits move by ~1e-6 relative between kernels and batch compositions; through the exp/logsumexp over a window
# that became up to 1e-4 in a score (seen: 0.9893 on an AMD EPYC vs 0.9892 on an Intel Xeon with AMX, issue 20).
# 2e-3 is 20x the largest drift seen and still far below any gap between two scores a test depends on.
SCORE_ATOL = 2e-3


def _as_dict(e) -> dict:
    return e if isinstance(e, dict) else e.to_dict()


def spans(ents: Iterable) -> list[tuple]:
    """(start, end, label, text) of each entity: what must match exactly."""
    return [(d["start"], d["end"], d["label"], d["text"]) for d in map(_as_dict, ents)]


def assert_same_entities(got: Iterable, want: Iterable, atol: float = SCORE_ATOL) -> None:
    """The same entities (spans, labels, texts exactly) with scores within `atol`. Entities as dicts or Entity."""
    got, want = [_as_dict(e) for e in got], [_as_dict(e) for e in want]
    assert spans(got) == spans(want)
    diffs = [abs(a["score"] - b["score"]) for a, b in zip(got, want, strict=True)]
    assert max(diffs, default=0.0) <= atol, (max(diffs), got, want)
