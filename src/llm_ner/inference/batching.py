"""How prediction groups windows into model inputs — pure functions over window lengths, no model needed.

Two strategies, both on windows sorted longest first:
  * `budget_batches`: as many windows per batch as fit in a token budget (padded), so short sentences make big
    batches and big matmuls run nearer the machine's peak.
  * `pack_rows` + `packed_inputs`: several short windows share one row, kept apart by a block-diagonal mask
    (`segment_ids`) with positions restarting per window, so almost no token fed is padding (models bidirectional in
    every layer only). `unpack_word_logits` puts each window's words back in a row of its own for decoding.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from ..modeling.align import Window


def budget_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                   max_batch_tokens: int | None) -> list[list[int]]:
    """Consecutive windows of `order` -> batches: fixed `batch_size` without a budget; with one, as many as fit in
    `max_batch_tokens` padded tokens (up to 8 x batch_size)."""
    if not max_batch_tokens:
        return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    cap = 8 * batch_size
    batches, cur, longest = [], [], 0
    for i in order:
        m = max(longest, lengths[i])
        if cur and (len(cur) >= cap or (len(cur) + 1) * m > max_batch_tokens):
            batches.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        longest = m
    return batches + ([cur] if cur else [])


def pack_rows(order: Sequence[int], lengths: Sequence[int], max_batch_tokens: int,
              min_row: int = 64) -> list[list[list[int]]]:
    """Windows (longest first) -> batches of rows of window indices. Each batch's rows are as wide as its longest
    window (at least `min_row`), and there are max_batch_tokens // width of them; windows go, longest first, into the
    row with the most room (worst fit), and what fits nowhere waits for the next batch."""
    batches, rest = [], list(order)
    while rest:
        width = max(lengths[rest[0]], min_row)
        n_rows = max(1, max_batch_tokens // width)
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        room = [(-width, r) for r in range(n_rows)]  # max-heap of free space
        left = []
        for k, i in enumerate(rest):
            if -room[0][0] < lengths[rest[-1]]:  # not even the shortest window fits any more
                left.extend(rest[k:])
                break
            free, r = room[0]
            if -free >= lengths[i]:
                rows[r].append(i)
                heapq.heapreplace(room, (free + lengths[i], r))
            else:
                left.append(i)
        batches.append([row for row in rows if row])
        rest = left
    return batches


def packed_inputs(windows: Sequence[Window], rows: Sequence[Sequence[int]], pad_id: int) -> tuple[dict, list[tuple]]:
    """Rows of windows -> model inputs (R,T) with segment and position ids, and where each window's words went:
    (window index, row, first word slot in the row, number of words)."""
    R = len(rows)
    T = max(sum(len(windows[i].input_ids) for i in row) for row in rows)
    W = max(sum(windows[i].n_words for i in row) for row in rows) or 1
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    segment_ids = torch.zeros(R, T, dtype=torch.long)
    position_ids = torch.zeros(R, T, dtype=torch.long)
    word_positions = torch.zeros(R, W, dtype=torch.long)
    where = []
    for r, row in enumerate(rows):
        t = w = 0
        for seg, i in enumerate(row, 1):
            win = windows[i]
            n, nw = len(win.input_ids), win.n_words
            input_ids[r, t : t + n] = torch.tensor(win.input_ids)
            segment_ids[r, t : t + n] = seg
            position_ids[r, t : t + n] = torch.arange(n)
            if nw:
                word_positions[r, w : w + nw] = torch.tensor(win.word_positions) + t
            where.append((i, r, w, nw))
            t, w = t + n, w + nw
    batch = {"input_ids": input_ids, "attention_mask": (segment_ids > 0).long(), "segment_ids": segment_ids,
             "position_ids": position_ids, "word_positions": word_positions,
             "word_mask": torch.ones(R, W, dtype=torch.bool)}
    return batch, where


def unpack_word_logits(logits: torch.Tensor, where: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,W,C) packed word logits -> (N,Wmax,C) one row per window, and its word mask, for the CRF."""
    Wmax = max(max(nw for *_, nw in where), 1)
    per_window = logits.new_zeros(len(where), Wmax, logits.size(-1))
    word_mask = torch.zeros(len(where), Wmax, dtype=torch.bool, device=logits.device)
    for j, (_, r, w, nw) in enumerate(where):
        per_window[j, :nw] = logits[r, w : w + nw]
        word_mask[j, :nw] = True
    return per_window, word_mask
