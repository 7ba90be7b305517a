"""A linear-chain CRF with hard IOB2 constraints: forward algorithm (log-likelihood) and Viterbi decoding.

Why our own: ~100 lines, vectorised over the batch, and the constraints are part of the model (a forbidden transition
gets a score of -10_000 in training *and* decoding, so Viterbi can never output `O -> I-X` or `B-X -> I-Y`).
Tested against brute-force enumeration in tests/test_crf.py.

Shapes: B batch, L sequence length (words), C number of tags.
"""

from __future__ import annotations

import torch
from torch import nn

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
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Viterbi: the best allowed tag path for each sequence, as lists of length mask.sum(1)."""
        emissions = emissions.float()
        mask = mask.bool()
        trans, start = self._scores()
        B, L, C = emissions.shape
        lengths = mask.sum(1).tolist()
        score = start + emissions[:, 0]  # (B,C)
        history = []
        for t in range(1, L):
            cand = score.unsqueeze(2) + trans.unsqueeze(0)  # (B, C_from, C_to)
            best, idx = cand.max(dim=1)  # (B,C)
            nxt = best + emissions[:, t]
            m = mask[:, t].unsqueeze(1)
            score = torch.where(m, nxt, score)
            # Where masked, point each tag to itself so back-tracking passes through unchanged.
            history.append(torch.where(m, idx, torch.arange(C, device=idx.device).expand(B, C)))
        score = score + self.end
        paths = []
        best_last = score.argmax(1)
        for b in range(B):
            n = lengths[b]
            if n == 0:
                paths.append([])
                continue
            tag = best_last[b].item()
            path = [tag]
            for t in range(n - 1, 0, -1):
                tag = history[t - 1][b, tag].item()
                path.append(tag)
            paths.append(path[::-1])
        return paths
