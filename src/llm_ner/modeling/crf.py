"""A linear-chain CRF with hard IOB2 constraints, as trained: its scores and the log-likelihood (forward algorithm) the
loss needs. Decoding them — Viterbi, forward-backward for the marginal probability of a decoded span (an entity's
confidence) — is decoding.py's, in NumPy (`CRF.tables`), so that any runtime's logits decode the same way.

Why our own: ~100 lines, vectorised over the batch, and the constraints are part of the model (a forbidden transition
gets a score of -10_000 in training *and* decoding, so Viterbi can never output `O -> I-X` or `B-X -> I-Y`).
Tested against brute-force enumeration in tests/test_crf.py.

Shapes: B batch, L sequence length (words), C number of tags.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoding import Transitions

NEG = -10_000.0  # "impossible", but finite so that log-sum-exp stays NaN-free


class CRF(nn.Module):
    def __init__(self, num_tags: int, allowed: torch.Tensor | None = None, allowed_start: torch.Tensor | None = None):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))
        if allowed is None:
            allowed = torch.ones(num_tags, num_tags, dtype=torch.bool)
        if allowed_start is None:
            allowed_start = torch.ones(num_tags, dtype=torch.bool)
        # Buffers (saved with the model) so constraints survive save/load.
        self.register_buffer("trans_mask", torch.where(allowed, 0.0, NEG))
        self.register_buffer("start_mask", torch.where(allowed_start, 0.0, NEG))

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transitions + self.trans_mask, self.start + self.start_mask

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) per sequence -> (B,). emissions (B,L,C) float; tags (B,L) long; mask (B,L) bool,
        each row a prefix of True (a row of all False gives 0)."""
        emissions = emissions.float()
        mask = mask.bool()
        tags = tags.masked_fill(~mask, 0)
        trans, start = self._scores()
        B, L, C = emissions.shape
        lengths = mask.sum(1)  # (B,)
        has = lengths > 0

        # Score of the gold path.
        em = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B,L)
        score = start[tags[:, 0]] + em[:, 0]
        step = trans[tags[:, :-1], tags[:, 1:]] + em[:, 1:]  # (B,L-1)
        score = score + (step * mask[:, 1:]).sum(1)
        last = tags.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        score = score + self.end[last]

        # Partition function by the forward algorithm.
        alpha = start + emissions[:, 0]  # (B,C)
        for t in range(1, L):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans.unsqueeze(0), dim=1) + emissions[:, t]  # (B,C)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        log_z = torch.logsumexp(alpha + self.end, dim=1)
        return torch.where(has, score - log_z, torch.zeros_like(score))

    @torch.no_grad()
    def tables(self) -> Transitions:
        """The scores decoding reads (decoding.py, NumPy on the CPU): the same numbers an export's head.safetensors
        holds."""
        return Transitions.from_state({k: v.detach().float().cpu().numpy() for k, v in self.state_dict().items()})
