"""Word logits -> tags, entity scores and path probabilities: the decoder the model and NERModel hold.

Constrained Viterbi through the CRF (crf.py; IOB2-illegal transitions are impossible), or a per-word argmax without
one. A word inside a predicted entity gets the probability of that whole entity; an O word its probability of O.
`temperature` divides every logit and CRF potential (calibration) and never changes the tags.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..labels import LabelSet
from .crf import CRF


class Decoder:
    def __init__(self, labels: LabelSet, crf: CRF | None):
        self.labels = labels
        self.crf = crf

    @torch.no_grad()
    def decode(self, word_logits: torch.Tensor, word_mask: torch.Tensor,
               temperature: float = 1.0) -> tuple[list[list[int]], list[list[float]]]:
        """(B,W,C) logits, (B,W) mask -> best tag ids per word, and a confidence per word (`span_scores` for the
        words of an entity, the softmax probability of O for the others)."""
        probs = F.softmax(word_logits.float() / temperature, -1)
        if self.crf is not None:
            paths = self.crf.decode(word_logits, word_mask)
        else:
            paths = [row[: int(n)].tolist() for row, n in zip(word_logits.argmax(-1), word_mask.sum(1), strict=True)]
        conf = [[probs[b, i, t].item() for i, t in enumerate(p)] for b, p in enumerate(paths)]
        spans = [(b, s, e, p[s : e + 1]) for b, p in enumerate(paths) for s, e in self.labels.span_bounds(p)]
        for (b, s, e, _), score in zip(spans, self.span_scores(word_logits, word_mask, spans, probs, temperature),
                                       strict=True):
            conf[b][s : e + 1] = [score] * (e - s + 1)
        return paths, conf

    @torch.no_grad()
    def path_logprob(self, word_logits: torch.Tensor, word_mask: torch.Tensor, paths: list[list[int]]) -> torch.Tensor:
        """(B,) log-probability of each row's decoded tag path: with a CRF, log p(path | words) (forward algorithm);
        without one, the sum of the per-word log-softmax of its tags. Active learning ranks texts by it."""
        tags = torch.zeros(word_mask.shape, dtype=torch.long, device=word_logits.device)  # (B,W)
        for b, p in enumerate(paths):
            tags[b, : len(p)] = torch.tensor(p, dtype=torch.long)
        if self.crf is not None:
            return self.crf.log_likelihood(word_logits, tags, word_mask)
        logp = F.log_softmax(word_logits.float(), -1).gather(2, tags.unsqueeze(2)).squeeze(2)  # (B,W)
        return (logp * word_mask).sum(1)

    def span_scores(self, word_logits, word_mask, spans, probs, temperature: float) -> list[float]:
        """The probability that the model puts exactly this entity here: its tags B-X I-X ... and the next word not
        I-X. With a CRF, the exact marginal (forward-backward); without one, the same event under independent
        per-word softmaxes: the product of the tags' probabilities times P(next word is not I-X)."""
        cont = self.labels.continuation
        if self.crf is not None:
            return self.crf.span_probs(word_logits, word_mask, [(b, s, e, p, cont[p[0]]) for b, s, e, p in spans],
                                       temperature)
        lengths = word_mask.sum(1).tolist()
        out = []
        for b, s, e, p in spans:
            score = float(torch.prod(probs[b, torch.arange(s, e + 1), torch.tensor(p)]))
            if e + 1 < lengths[b]:
                score *= 1.0 - float(probs[b, e + 1, cont[p[0]]])
            out.append(score)
        return out
