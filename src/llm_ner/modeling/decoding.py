"""Word logits -> tags, entity scores and path probabilities: the decoder the model and NERModel hold.

Constrained Viterbi through the CRF's scores (crf.py trains them; IOB2-illegal transitions are impossible), or a
per-word argmax without one. A word inside a predicted entity gets the probability of that whole entity; an O word
its probability of O. `temperature` divides every logit and CRF potential (calibration) and never changes the tags.

NumPy, not torch: prediction decodes on the CPU after the network has run, whichever runtime ran it (PyTorch, ONNX
Runtime, OpenVINO), so an exported model predicts without PyTorch installed. The CRF's training likelihood stays in
torch (crf.py, it needs gradients); the two forward algorithms are checked against each other and against brute-force
enumeration in tests/test_crf.py.

Shapes: B batch, L words, C tags. Logits and masks may be NumPy arrays or CPU tensors (read with np.asarray).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..labels import LabelSet


@dataclass(frozen=True)
class Transitions:
    """A CRF's scores as decoding reads them: trans (C,C) [from, to] and start (C,) with the IOB2 constraints added
    (a forbidden move scores crf.NEG), end (C,)."""
    trans: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Transitions:
        """From a CRF's state dict as arrays (`crf.CRF.tables`, or an export's head.safetensors without its "crf."
        prefix): parameters plus their constraint masks."""
        f = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
        return cls(f["transitions"] + f["trans_mask"], f["start"] + f["start_mask"], f["end"])


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
    """log-sum-exp over one axis (shifted by the max: finite for the -10,000 of a forbidden move)."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _arrays(word_logits, word_mask) -> tuple[np.ndarray, np.ndarray, list[int]]:
    em = np.asarray(word_logits, dtype=np.float64)
    mask = np.asarray(word_mask).astype(bool)
    return em, mask, mask.sum(1).tolist()


class Decoder:
    def __init__(self, labels: LabelSet, crf: Transitions | None):
        self.labels = labels
        self.crf = crf

    def decode(self, word_logits, word_mask, temperature: float = 1.0) -> tuple[list[list[int]], list[list[float]]]:
        """(B,L,C) logits, (B,L) mask -> best tag ids per word, and a confidence per word (`span_scores` for the
        words of an entity, the softmax probability of O for the others)."""
        em, mask, lengths = _arrays(word_logits, word_mask)
        probs = _softmax(em / temperature)
        if self.crf is not None:
            paths = self.viterbi(em, lengths)
        else:
            paths = [row[:n].tolist() for row, n in zip(em.argmax(-1), lengths, strict=True)]
        conf = [[float(probs[b, i, t]) for i, t in enumerate(p)] for b, p in enumerate(paths)]
        spans = [(b, s, e, p[s : e + 1]) for b, p in enumerate(paths) for s, e in self.labels.span_bounds(p)]
        for (b, s, e, _), score in zip(spans, self.span_scores(em, mask, spans, probs, temperature), strict=True):
            conf[b][s : e + 1] = [score] * (e - s + 1)
        return paths, conf

    def viterbi(self, em: np.ndarray, lengths: list[int]) -> list[list[int]]:
        """The best allowed tag path of each row, as lists of length lengths[b]."""
        t = self.crf
        B, L, C = em.shape
        score = t.start + em[:, 0]  # (B,C)
        history = np.zeros((B, max(L - 1, 0), C), dtype=np.int64)
        ar = np.arange(C)
        for i in range(1, L):
            cand = score[:, :, None] + t.trans[None]  # (B, C_from, C_to)
            idx = cand.argmax(1)  # (B,C)
            live = (np.asarray(lengths) > i)[:, None]
            score = np.where(live, np.take_along_axis(cand, idx[:, None, :], 1)[:, 0] + em[:, i], score)
            history[:, i - 1] = np.where(live, idx, ar)  # past a row's end each tag points to itself
        best_last = (score + t.end).argmax(1)
        paths = []
        for b, n in enumerate(lengths):
            tag, path = int(best_last[b]), []
            for i in range(n - 1, -1, -1):
                path.append(tag)
                if i:
                    tag = int(history[b, i - 1, tag])
            paths.append(path[::-1])
        return paths

    def forward_backward(self, em: np.ndarray, mask: np.ndarray, temperature: float = 1.0):
        """Log forward and backward scores. alpha[b,t,c]: log-sum of the scores of tag prefixes ending in c at t
        (emission at t included); beta[b,t,c]: log-sum of the scores of the rest of the sequence after tag c at t
        (end score included). Every potential is divided by `temperature`.
        -> alpha (B,L,C), beta (B,L,C), log_z (B,)."""
        em = em / temperature
        trans, start, end = self.crf.trans / temperature, self.crf.start / temperature, self.crf.end / temperature
        B, L, C = em.shape
        alpha, beta = np.empty((B, L, C)), np.empty((B, L, C))
        alpha[:, 0] = start + em[:, 0]
        for t in range(1, L):
            nxt = _lse(alpha[:, t - 1, :, None] + trans[None], 1) + em[:, t]
            alpha[:, t] = np.where(mask[:, t, None], nxt, alpha[:, t - 1])
        beta[:, L - 1] = end
        for t in range(L - 2, -1, -1):
            nxt = _lse(trans[None] + (em[:, t + 1] + beta[:, t + 1])[:, None, :], 2)
            beta[:, t] = np.where(mask[:, t + 1, None], nxt, end)  # past a row's end, t is its last: the end score
        last = np.maximum(mask.sum(1), 1) - 1
        log_z = _lse(alpha[np.arange(B), last] + end, 1)
        return alpha, beta, log_z

    def path_logprob(self, word_logits, word_mask, paths: list[list[int]]) -> np.ndarray:
        """(B,) log-probability of each row's decoded tag path: with a CRF, log p(path | words) (forward algorithm);
        without one, the sum of the per-word log-softmax of its tags. Active learning ranks texts by it."""
        em, mask, _ = _arrays(word_logits, word_mask)
        out = np.zeros(len(paths))
        if self.crf is None:
            logp = np.log(_softmax(em))
            for b, p in enumerate(paths):
                out[b] = logp[b, np.arange(len(p)), p].sum()
            return out
        t = self.crf
        _, _, log_z = self.forward_backward(em, mask)
        for b, p in enumerate(paths):
            if p:
                score = t.start[p[0]] + em[b, np.arange(len(p)), p].sum() + t.trans[p[:-1], p[1:]].sum() + t.end[p[-1]]
                out[b] = score - log_z[b]
        return out

    def span_scores(self, em: np.ndarray, mask: np.ndarray, spans, probs: np.ndarray, temperature: float
                    ) -> list[float]:
        """The probability that the model puts exactly this entity here: its tags B-X I-X ... and the next word not
        I-X. With a CRF, the exact marginal (forward-backward, tested against enumeration); without one, the same
        event under independent per-word softmaxes: the product of the tags' probabilities times P(next word is not
        I-X)."""
        if not spans:
            return []
        cont = self.labels.continuation
        lengths = mask.sum(1)
        if self.crf is None:
            out = []
            for b, s, e, p in spans:
                score = float(np.prod(probs[b, np.arange(s, e + 1), p]))
                if e + 1 < lengths[b]:
                    score *= 1.0 - float(probs[b, e + 1, cont[p[0]]])
                out.append(score)
            return out
        alpha, beta, log_z = self.forward_backward(em, mask, temperature)
        em = em / temperature
        trans, start, end = self.crf.trans / temperature, self.crf.start / temperature, self.crf.end / temperature
        out = []
        for b, s, e, path in spans:
            inner = em[b, np.arange(s, e + 1), path].sum() + trans[path[:-1], path[1:]].sum()
            into = start[path[0]] if s == 0 else _lse(alpha[b, s - 1] + trans[:, path[0]], 0)
            if e == lengths[b] - 1:
                out_of = end[path[-1]]
            else:
                nxt = trans[path[-1]] + em[b, e + 1] + beta[b, e + 1]  # (C,) over the next tag
                nxt[cont[path[0]]] = -np.inf
                out_of = _lse(nxt, 0)
            out.append(min(float(np.exp(into + inner + out_of - log_z[b])), 1.0))
        return out
