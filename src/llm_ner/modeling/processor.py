"""Words <-> sub-word tokens <-> character offsets, and sliding windows for texts longer than the context. (Raw text
is split into words by data/words.py.)

One path for training and prediction: a text plus the (start, end) of each word in it is tokenised *as text* with
offsets (so a decoder sees " German" with its leading space, as in pre-training — SmolLM2's tokenizer drops that space
with `is_split_into_words=True`), and every token is mapped to the word its first non-space character falls in.
A word's label/prediction lives on its first sub-token (`word_positions`).

The processor between texts and the network, one module for training and prediction: windows (encode_texts /
encode_sentences), features and collation (window_feature, collate, split_batch), the merge of overlapping windows
(merge_windows), and how prediction groups windows into model inputs (pure functions over window lengths), two
strategies, both on windows sorted longest first:
  * `budget_batches`: as many windows per batch as fit in a token budget (padded), so short sentences make big
    batches and big matmuls run nearer the machine's peak.
  * `pack_rows` + `packed_inputs`: several short windows share one row, kept apart by a block-diagonal mask
    (`segment_ids`) with positions restarting per window, so almost no token fed is padding (models bidirectional in
    every layer only). `unpack_word_logits` puts each window's words back in a row of its own for decoding.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the processor never imports data at run time
    from ..data import Sentence


@dataclass
class Window:
    """One model input: a slice of one text's words, tokenised."""

    item: int  # index of the text/sentence it came from
    first_word: int  # index of its first word in that text
    input_ids: list[int]
    word_positions: list[int]  # token index of each word's first sub-token (len = words in window)
    token_word: list[int]  # word index (within window) of each token, -1 for special/space tokens
    labels: list[int] | None = None  # word-level label ids (len = words in window)

    @property
    def n_words(self) -> int:
        return len(self.word_positions)


def sentence_text(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join pre-tokenised words with single spaces; return the text and each word's offsets."""
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append((pos, pos + len(tok)))
        pos += len(tok) + 1
    return " ".join(tokens), offsets


def texts_and_offsets(sentences: Sequence[Sentence]) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """The text each sentence is seen as — its own raw text if it has one (span-annotated JSONL), else its words
    joined by spaces — and each word's offsets in it. Training, evaluation and prediction all go through here, so the
    model is scored on exactly the text it was trained on."""
    texts, offsets = [], []
    for s in sentences:
        t, o = (s.text, list(s.offsets)) if s.text is not None and s.offsets is not None else sentence_text(s.tokens)
        texts.append(t)
        offsets.append(o)
    return texts, offsets


def document_groups(sentences: Sequence[Sentence]) -> list[list[int]]:
    """Runs of consecutive sentences with the same doc_id (a sentence without one is a document of its own)."""
    groups: list[list[int]] = []
    for i, s in enumerate(sentences):
        if groups and s.doc_id is not None and sentences[groups[-1][-1]].doc_id == s.doc_id:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def document_texts(sentences: Sequence[Sentence]) -> tuple[list[str], list[list[tuple[int, int]]], list[list[int]]]:
    """Document context: each document's sentences as one text (their texts joined by newlines), the offsets of all
    its words in it, and which sentences it holds (for `split_documents`)."""
    texts, offsets = texts_and_offsets(sentences)
    groups = document_groups(sentences)
    doc_texts, doc_offsets = [], []
    for g in groups:
        parts, offs, pos = [], [], 0
        for i in g:
            parts.append(texts[i])
            offs += [(a + pos, b + pos) for a, b in offsets[i]]
            pos += len(texts[i]) + 1
        doc_texts.append("\n".join(parts))
        doc_offsets.append(offs)
    return doc_texts, doc_offsets, groups


def split_documents(per_doc: Sequence[Sequence], groups: Sequence[Sequence[int]], sizes: Sequence[int]) -> list[list]:
    """Per-word results of whole documents -> per sentence again (`sizes`: each sentence's word count)."""
    out: list[list] = [[] for _ in sizes]
    for res, g in zip(per_doc, groups, strict=True):
        pos = 0
        for i in g:
            out[i] = list(res[pos : pos + sizes[i]])
            pos += sizes[i]
    return out


def _map_tokens(text: str, offsets: list[tuple[int, int]], tok_offsets: list[tuple[int, int]]) -> tuple[list, list]:
    """token -> word index (via each token's first non-space char), and word -> its first token."""
    char_word = [-1] * len(text)
    for w, (s, e) in enumerate(offsets):
        for c in range(s, e):
            char_word[c] = w
    token_word = []
    for s, e in tok_offsets:
        w = -1
        for c in range(s, min(e, len(text))):
            if not text[c].isspace():
                w = char_word[c]
                break
        token_word.append(w)
    first = [-1] * len(offsets)
    for t, w in enumerate(token_word):
        if w >= 0 and first[w] < 0:
            first[w] = t
    # A word with no token starting inside it (a tokenizer merged it into the previous token, e.g. "can" + "'t")
    # borrows the token that covers its first character.
    # (A char -> first covering token table, not a scan of every token per word: that was quadratic on a long text
    # of such words.)
    char_tok = [-1] * len(text) if -1 in first else []
    for t, (ts, te) in enumerate(tok_offsets if char_tok else ()):
        for c in range(ts, min(te, len(text))):
            if char_tok[c] < 0:
                char_tok[c] = t
    for w, (s, _) in enumerate(offsets):
        if first[w] < 0 and s < len(char_tok):
            first[w] = char_tok[s]
        if first[w] < 0:  # nothing covers it (should not happen with real tokenizers): use the previous word's
            first[w] = first[w - 1] if w > 0 else 0
    return token_word, first


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    word_offsets: Sequence[Sequence[tuple[int, int]]],
    max_length: int,
    stride: int,
    labels: Sequence[Sequence[int]] | None = None,
    no_start: frozenset[int] = frozenset(),
    prefix: str = "",
) -> list[Window]:
    """Tokenise texts and cut each into windows of at most `max_length` tokens at word boundaries; consecutive
    windows share about `stride` tokens of words so every word is seen with context on both sides in some window.
    `no_start`: label ids a labelled window may not begin with (I-X: a window cut inside an entity). `prefix`: a text
    every window reads first, after its leading special tokens (model.instruction), inside the max_length."""
    if not prefix:
        return _encode(tokenizer, texts, word_offsets, max_length, stride, labels, no_start)
    ids = tokenizer(prefix + "\n", add_special_tokens=False)["input_ids"]
    windows = _encode(tokenizer, texts, word_offsets, max_length - len(ids), stride, labels, no_start)
    at = _n_leading_specials(tokenizer)
    return [_with_prefix(w, ids, at) for w in windows]


def _encode(tokenizer, texts: Sequence[str], word_offsets: Sequence[Sequence[tuple[int, int]]], max_length: int,
            stride: int, labels: Sequence[Sequence[int]] | None, no_start: frozenset[int]) -> list[Window]:
    """encode_texts without a prefix."""
    if max_length < 8:
        raise ValueError("max_length must be at least 8 tokens")
    windows: list[Window] = []
    enc = tokenizer(list(texts), return_offsets_mapping=True, add_special_tokens=True)
    for i, (text, offs) in enumerate(zip(texts, word_offsets, strict=True)):
        ids = enc["input_ids"][i]
        tok_offs = [tuple(o) for o in enc["offset_mapping"][i]]
        token_word, first = _map_tokens(text, list(offs), tok_offs)
        if len(ids) <= max_length or not offs:
            lab = list(labels[i]) if labels is not None else None
            windows.append(Window(i, 0, list(ids), first, token_word, lab))
            continue
        # Too long: choose word ranges whose token span fits, then re-tokenise each slice on its own.
        n_special = len(tokenizer("a", add_special_tokens=True)["input_ids"]) - len(
            tokenizer("a", add_special_tokens=False)["input_ids"]
        )
        budget = max_length - n_special - 2  # margin: re-tokenising a slice can shift a token at its edges
        word_tok = [f for f in first]  # first token of each word
        ends = [(first[w + 1] if w + 1 < len(offs) else len(ids)) for w in range(len(offs))]
        start_w = 0
        while True:
            end_w = start_w
            while end_w < len(offs) and ends[end_w] - word_tok[start_w] <= budget:
                end_w += 1
            end_w = max(end_w, start_w + 1)  # a single over-long word still makes progress
            cs, ce = offs[start_w][0], offs[end_w - 1][1]
            sub_offs = [(s - cs, e - cs) for s, e in offs[start_w:end_w]]
            sub = _encode(tokenizer, [text[cs:ce]], [sub_offs], 10**9, 0,
                          [labels[i][start_w:end_w]] if labels is not None else None, frozenset())[0]
            sub.item, sub.first_word = i, start_w
            if len(sub.input_ids) > max_length:  # one pathological word longer than the window: truncate it
                sub.input_ids = sub.input_ids[:max_length]
                sub.token_word = sub.token_word[:max_length]
                sub.word_positions = [min(p, max_length - 1) for p in sub.word_positions]
            windows.append(sub)
            if end_w >= len(offs):
                break
            # Next window starts `stride` tokens before this one ended (but always moves forward).
            nxt = end_w
            while nxt - 1 > start_w and word_tok[end_w - 1] - word_tok[nxt - 1] < stride:
                nxt -= 1
            # A training window cut inside an entity would begin with I-X, a tag the CRF forbids at a start: its gold
            # path would score -10,000 — a loss spike no weight can lower (1.6% of Gemma's document windows were).
            # Begin it earlier, at the entity's first word.
            while labels is not None and nxt - 1 > start_w and labels[i][nxt] in no_start:
                nxt -= 1
            start_w = max(nxt, start_w + 1)
    return windows


def _n_leading_specials(tokenizer) -> int:
    """How many special tokens the tokenizer puts before a text's own (BOS: 1 for Gemma and Llama; 0 for none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return tokenizer("a", add_special_tokens=True)["input_ids"].index(plain[0])


def _with_prefix(win: Window, ids: list[int], at: int) -> Window:
    """`ids` inserted into a window after its `at` leading special tokens; its words' positions move past them."""
    n = len(ids)
    win.input_ids = win.input_ids[:at] + list(ids) + win.input_ids[at:]
    win.token_word = win.token_word[:at] + [-1] * n + win.token_word[at:]
    win.word_positions = [p + n if p >= at else p for p in win.word_positions]
    return win


def encode_sentences(tokenizer, sentences: Sequence[Sentence], label_ids, max_length: int, stride: int,
                     context: str = "sentence", no_start: frozenset[int] = frozenset(), prefix: str = ""
                     ) -> list[Window]:
    """Training/evaluation data: pre-tokenised sentences -> windows with word-level label ids. context "document":
    the windows run over whole documents (`document_texts`), so a window holds a sentence and its neighbours.
    `no_start`, `prefix`: as encode_texts'."""
    if context == "document":
        texts, offsets, groups = document_texts(sentences)
        labels = ([[t for i in g for t in label_ids(sentences[i].tags)] for g in groups]
                  if label_ids is not None else None)
    else:
        texts, offsets = texts_and_offsets(sentences)
        labels = [label_ids(s.tags) for s in sentences] if label_ids is not None else None
    return encode_texts(tokenizer, texts, offsets, max_length, stride, labels, no_start, prefix)


def merge_windows(windows: Sequence[Window], n_words: Sequence[int], per_window: Sequence[Sequence]) -> list[list]:
    """Combine per-word results of overlapping windows: each word takes the result from the window in which it is
    farthest from an edge (most context on both sides). Returns one list per item, of length n_words[item]."""
    out: list[list] = [[None] * n for n in n_words]
    best: list[list[int]] = [[-1] * n for n in n_words]
    for win, res in zip(windows, per_window, strict=True):
        for k, r in enumerate(res):
            margin = min(k, win.n_words - 1 - k)
            w = win.first_word + k
            if margin > best[win.item][w]:
                best[win.item][w] = margin
                out[win.item][w] = r
    return out


def window_feature(win: Window, continuation: Sequence[int] | None = None) -> dict:
    """A Window as a training example. With `continuation` (tag id -> the id its non-first sub-tokens get, B-X ->
    I-X), every sub-token is labelled (label_all_subtokens); otherwise only the first one is."""
    feat = {"input_ids": win.input_ids, "word_positions": win.word_positions}
    if win.labels is not None:
        feat["labels"] = win.labels
        if continuation is not None:
            tok = [-100] * len(win.input_ids)
            firsts = set(win.word_positions)
            for t, w in enumerate(win.token_word):
                if w >= 0:
                    lab = win.labels[w]
                    tok[t] = lab if t in firsts else continuation[lab]
            feat["token_labels"] = tok
    return feat


def collate(batch: Sequence[dict], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad a list of features into arrays (dynamic padding: to the longest in the batch). NumPy, so that an
    exported model predicts without PyTorch; `to_tensors` hands a batch to a PyTorch model."""
    T = max(len(f["input_ids"]) for f in batch)
    W = max(max(len(f["word_positions"]) for f in batch), 1)
    B = len(batch)
    out = {
        "input_ids": np.full((B, T), pad_id, dtype=np.int64),
        "attention_mask": np.zeros((B, T), dtype=np.int64),
        "word_positions": np.zeros((B, W), dtype=np.int64),
        "word_mask": np.zeros((B, W), dtype=bool),
    }
    if "labels" in batch[0]:
        out["labels"] = np.full((B, W), -100, dtype=np.int64)
    if "token_labels" in batch[0]:
        out["token_labels"] = np.full((B, T), -100, dtype=np.int64)
    for b, f in enumerate(batch):
        n, w = len(f["input_ids"]), len(f["word_positions"])
        out["input_ids"][b, :n] = f["input_ids"]
        out["attention_mask"][b, :n] = 1
        if w:
            out["word_positions"][b, :w] = f["word_positions"]
            out["word_mask"][b, :w] = True
        if "labels" in out:
            out["labels"][b, :w] = f["labels"]
        if "token_labels" in out:
            out["token_labels"][b, :n] = f["token_labels"]
    return out


def to_tensors(batch: dict[str, np.ndarray], device=None) -> dict:
    """A collated batch as PyTorch tensors (on `device`), for a PyTorch model."""
    import torch

    return {k: torch.from_numpy(v).to(device) if device is not None else torch.from_numpy(v) for k, v in batch.items()}


T_KEYS = ("input_ids", "attention_mask", "token_labels", "segment_ids", "position_ids")  # (B,T) in a collated batch
W_KEYS = ("word_positions", "word_mask", "labels")  # (B,W)


def split_batch(batch: dict, max_tokens: int) -> list[dict]:  # training: a batch of tensors
    """A collated batch as passes of at most `max_tokens` padded tokens each (rows x longest row), rows sorted by
    length so each pass pads little, every pass trimmed to its own longest row. A row longer than `max_tokens` is a
    pass of its own. Memory for activations is bounded by the pass, not the batch (issue 22: 32 sentences of up to
    200 tokens held 13-17 GB)."""
    import torch

    lengths = batch["attention_mask"].sum(1)
    if batch["attention_mask"].numel() <= max_tokens:
        return [batch]
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    passes, rows = [], []
    for r in order:
        longest = int(lengths[rows[0]]) if rows else int(lengths[r])
        if rows and (len(rows) + 1) * longest > max_tokens:
            passes.append(rows)
            rows = []
        rows.append(r)
    passes.append(rows)
    words = batch["word_mask"].sum(1)
    out = []
    for rows in passes:
        idx = torch.tensor(rows)
        t, w = int(lengths[idx].max()), max(int(words[idx].max()), 1)
        out.append({k: (v[idx, :t] if k in T_KEYS else v[idx, :w] if k in W_KEYS else v[idx])
                    for k, v in batch.items()})
    return out


# ---------------------------------------------------------------------------------------------------------------------
# prediction batches


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


def packed_inputs(windows: Sequence[Window], rows: Sequence[Sequence[int]], pad_id: int
                  ) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """Rows of windows -> model inputs (R,T) with segment and position ids, and where each window's words went:
    (window index, row, first word slot in the row, number of words)."""
    R = len(rows)
    T = max(sum(len(windows[i].input_ids) for i in row) for row in rows)
    W = max(sum(windows[i].n_words for i in row) for row in rows) or 1
    input_ids = np.full((R, T), pad_id, dtype=np.int64)
    segment_ids = np.zeros((R, T), dtype=np.int64)
    position_ids = np.zeros((R, T), dtype=np.int64)
    word_positions = np.zeros((R, W), dtype=np.int64)
    where = []
    for r, row in enumerate(rows):
        t = w = 0
        for seg, i in enumerate(row, 1):
            win = windows[i]
            n, nw = len(win.input_ids), win.n_words
            input_ids[r, t : t + n] = win.input_ids
            segment_ids[r, t : t + n] = seg
            position_ids[r, t : t + n] = np.arange(n)
            if nw:
                word_positions[r, w : w + nw] = np.asarray(win.word_positions) + t
            where.append((i, r, w, nw))
            t, w = t + n, w + nw
    batch = {"input_ids": input_ids, "attention_mask": (segment_ids > 0).astype(np.int64), "segment_ids": segment_ids,
             "position_ids": position_ids, "word_positions": word_positions, "word_mask": np.ones((R, W), dtype=bool)}
    return batch, where


def unpack_word_logits(logits: np.ndarray, where: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(R,W,C) packed word logits -> (N,Wmax,C) one row per window, and its word mask, for the CRF."""
    Wmax = max(max(nw for *_, nw in where), 1)
    per_window = np.zeros((len(where), Wmax, logits.shape[-1]), dtype=logits.dtype)
    word_mask = np.zeros((len(where), Wmax), dtype=bool)
    for j, (_, r, w, nw) in enumerate(where):
        per_window[j, :nw] = logits[r, w : w + nw]
        word_mask[j, :nw] = True
    return per_window, word_mask
