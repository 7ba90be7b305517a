"""NERModel: load a saved model dir once, predict entity spans (with character offsets) for raw texts, or tags for
pre-tokenised sentences. Inputs are windowed (align.py), sorted by length and batched, so padding stays small."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import rundir
from ..config import check_min_score
from ..data import Sentence
from ..data.words import split_words
from ..modeling import backbones
from ..modeling.align import (
    Window,
    collate,
    document_texts,
    encode_texts,
    merge_windows,
    split_documents,
    texts_and_offsets,
    window_feature,
)
from ..modeling.model import LLMForTokenClassification
from . import quantize as q
from .batching import budget_batches, pack_rows, packed_inputs, unpack_word_logits
from .confidence import Logistic
from .outputs import Entity, Predictions, pipeline_dicts, tags_to_entities

log = logging.getLogger(__name__)


def load_tokenizer(path_or_name: str | Path, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    path, gguf = backbones.resolve(str(path_or_name), gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:  # decoders often have none; any id works, padding is masked
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


class NERModel:
    def __init__(self, model: LLMForTokenClassification, tokenizer, batch_size: int = 16, device: str | None = None,
                 sort_by_length: bool = True, max_batch_tokens: int | None = -1, pack: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = device or next(model.parameters()).device
        self.labels = model.labels
        self.sort_by_length = sort_by_length  # longest first: batches of similar length waste little on padding
        # With a token budget, a batch holds as many windows as fit in max_batch_tokens (padded), up to 8 x batch_size:
        # short sentences then make big batches, and big matmuls run nearer the machine's peak. -1 = default: 1024 on
        # a CPU (measured best of 1024-4096: +27 % tokens/s over a fixed 32, benchmarks/results/results.md), 16384
        # on a GPU; None = fixed batch_size.
        if max_batch_tokens == -1:
            max_batch_tokens = 1024 if str(self.device).startswith("cpu") else 16384
        self.max_batch_tokens = max_batch_tokens
        # Packing (with a token budget, on a model bidirectional in every layer): short windows share a row, kept
        # apart by a block-diagonal mask, so almost no token fed is padding. CoNLL sentences run from 1 to 160+
        # tokens, and even sorted batches were 19 % padding on a 256-sentence sample.
        self.pack = pack
        # running totals for benchmarks: real / padded tokens fed, seconds in tokenisation, forward, decoding
        self.stats: Counter = Counter()
        # Calibration (calibrate.py, calibration.json in the model dir): every logit and CRF potential is divided by
        # it before entity scores are computed; 1.0 = as trained. Tags never change with it.
        self.temperature = 1.0
        self.calibration: dict = {}
        # ... or, when calibration.json chose it, a logistic over the score as trained and what it does not know
        # (seen in training, length, type): confidence.py. Then the temperature stays 1.
        self.recalibration: Logistic | None = None
        # Acting on scores: an entity is returned if its score reaches both the global floor (`min_score`, e.g.
        # --min-score) and its type's threshold (calibrate --target-precision, saved in calibration.json); the rest
        # are "needs review" — `predict_with_review` returns them separately, `predict` leaves them out.
        self._min_score: float | None = None
        self.thresholds: dict[str, float] = {}

    @property
    def min_score(self) -> float | None:
        return self._min_score

    @min_score.setter
    def min_score(self, value: float | None) -> None:
        self._min_score = check_min_score(value)  # here, where every caller (CLI, service, spaCy, batch) sets it

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, batch_size: int = 16,
                        trust_remote_code: bool = False, quantize: str | q.Int8Spec | None = None,
                        max_batch_tokens: int | None = -1, min_score: float | None = None) -> NERModel:
        """The one way every caller loads a model for prediction (predict, batch-predict, serve, the spaCy component,
        evaluation): precision and thresholds are chosen and checked here, once.
        `quantize="int8"` (or a `quantize.Int8Spec`): SmoothQuant-calibrated int8 Linear layers (CPU only).
        `quantize="bf16"`: the backbone's weights and activations in bf16 (head and CRF stay fp32).
        `min_score`: entities below it (or below their type's calibrated threshold) are left out / for review."""
        check_min_score(min_score)  # before minutes of loading
        bf16 = quantize == "bf16"
        spec = None if bf16 else q.Int8Spec.parse(quantize)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if spec and device != "cpu":
            raise ValueError("int8 dynamic quantisation runs on the CPU only; use bf16 on a GPU")
        model = LLMForTokenClassification.from_pretrained(path, device=device, trust_remote_code=trust_remote_code)
        if bf16:
            model.backbone.to(torch.bfloat16)
        ner = cls(model, load_tokenizer(path), batch_size, device, max_batch_tokens=max_batch_tokens)
        cal = Path(path) / rundir.CALIBRATION
        if cal.is_file():
            ner.calibration = json.loads(cal.read_text())
            ner.use_calibration(ner.calibration)
            ner.thresholds = dict(ner.calibration.get("thresholds", {}))
        ner.min_score = min_score
        if spec:
            texts = q.calibration_texts()
            q.quantize_int8(model, lambda: ner.predict(texts), spec.alpha, spec.keep_fp32, spec.scheme)
            ner.stats.clear()
        return ner

    def use_calibration(self, cal: dict) -> None:
        """Apply a calibration.json's choice: its temperature, or its logistic (at T = 1)."""
        if cal.get("method") == "logistic":
            self.temperature, self.recalibration = 1.0, Logistic.from_dict(cal["logistic"])
        else:
            self.temperature, self.recalibration = float(cal.get("temperature", 1.0)), None

    @torch.no_grad()
    def run_windows(self, windows: list[Window], progress: bool = False, keep_logits: bool = False) -> list[tuple]:
        """Forward + decode every window, longest first in batches; results (tag ids, confidences[, word logits
        (W,C) on the CPU if keep_logits]) in the windows' order."""
        lengths = [len(w.input_ids) * self.model.length_factor for w in windows]  # what the backbone sees
        order = list(range(len(windows)))
        if self.sort_by_length:
            order.sort(key=lambda i: -lengths[i])
        packed = self.pack and self.max_batch_tokens and self.sort_by_length and self.model.packable
        batches = (pack_rows(order, lengths, self.max_batch_tokens) if packed
                   else budget_batches(order, lengths, self.batch_size, self.max_batch_tokens))
        results: list = [None] * len(windows)
        st = self.stats
        for item in tqdm(batches, desc="predict", disable=not progress, leave=False):
            if packed:
                batch, where = packed_inputs(windows, item, self.tokenizer.pad_token_id)
                idx = [i for i, *_ in where]
            else:
                batch, idx = collate([window_feature(windows[i]) for i in item], self.tokenizer.pad_token_id), item
            batch = {k: v.to(self.device) for k, v in batch.items()}
            t0 = time.perf_counter()
            logits = self.model(**batch).logits  # (B,W,C); packed: every window's words side by side in its row
            t1 = time.perf_counter()
            logits, word_mask = unpack_word_logits(logits, where) if packed else (logits, batch["word_mask"])
            paths, conf = self.model.decode(logits, word_mask, self.temperature)
            st["forward_s"] += t1 - t0
            st["decode_s"] += time.perf_counter() - t1
            st["tokens"] += int(batch["attention_mask"].sum())
            st["padded_tokens"] += batch["input_ids"].numel()
            st["batches"] += 1
            for j, i in enumerate(idx):
                results[i] = ((paths[j], conf[j], logits[j, : len(paths[j])].float().cpu()) if keep_logits
                              else (paths[j], conf[j]))
        return results

    @torch.no_grad()
    def redecode(self, logits: Sequence[torch.Tensor], temperature: float, batch: int = 256) -> list[tuple]:
        """Decode kept word logits again at another temperature (calibration: no forward pass needed)."""
        out: list[tuple] = []
        for i in range(0, len(logits), batch):
            lg, mask = _padded(logits[i : i + batch])
            paths, conf = self.model.decode(lg, mask, temperature)
            out += list(zip(paths, conf, strict=True))
        return out

    @torch.no_grad()
    def mean_logprobs(self, res: Sequence[tuple], batch: int = 256) -> list[float]:
        """Per window of `run_windows(keep_logits=True)`: the mean over its words of log p(decoded tags), as trained —
        the "maximum normalised log-probability" of Shen et al. (2018): near 0 sure, very negative unsure."""
        out: list[float] = []
        for i in range(0, len(res), batch):
            chunk = res[i : i + batch]
            lg, mask = _padded([r[2] for r in chunk])
            lp = self.model.path_logprob(lg, mask, [list(r[0]) for r in chunk])
            out += (lp / mask.sum(1).clamp(min=1)).tolist()
        return out

    def predict_words(self, texts: Sequence[str], word_offsets: Sequence[Sequence[tuple[int, int]]],
                      progress: bool = False) -> tuple[list[list[str]], list[list[float]]]:
        """Tags and confidences per word for texts whose word offsets are given."""
        keep, windows = self.windows_for(texts, word_offsets)
        res = self.run_windows(windows, progress) if windows else []
        return self.merge(texts, word_offsets, keep, windows, res)

    def windows_for(self, texts: Sequence[str], word_offsets: Sequence[Sequence[tuple[int, int]]]
                    ) -> tuple[list[int], list[Window]]:
        """The texts that have words, and their model windows."""
        keep = [i for i, o in enumerate(word_offsets) if len(o) > 0]  # texts with no words predict nothing
        if not keep:  # (and the tokenizer must not see an empty batch)
            return [], []
        cfg = self.model.config.model
        t0 = time.perf_counter()
        windows = encode_texts(self.tokenizer, [texts[i] for i in keep], [word_offsets[i] for i in keep],
                               cfg.max_length, cfg.stride)
        self.stats["tokenize_s"] += time.perf_counter() - t0
        return keep, windows

    def merge(self, texts: Sequence[str], word_offsets, keep: list[int], windows: list[Window], res: Sequence[tuple],
              recalibrate: bool = True) -> tuple[list[list[str]], list[list[float]]]:
        """Per-window (tag ids, confidences) -> tags and confidences per word of each text; entity scores through the
        saved logistic recalibration when there is one (and `recalibrate`)."""
        n_texts = len(texts)
        n_words = [len(word_offsets[i]) for i in keep]
        merged_tags = merge_windows(windows, n_words, [r[0] for r in res])
        merged_conf = merge_windows(windows, n_words, [r[1] for r in res])
        tags: list[list[str]] = [[] for _ in range(n_texts)]
        confs: list[list[float]] = [[] for _ in range(n_texts)]
        id2tag = self.labels.tags
        for k, i in enumerate(keep):
            tags[i] = [id2tag[t] for t in merged_tags[k]]
            confs[i] = merged_conf[k]
        if self.recalibration is not None and recalibrate:
            confs = self.recalibration.apply(texts, word_offsets, tags, confs)
        return tags, confs

    def predict_sentences(self, sentences: Sequence[Sentence], progress: bool = False) -> list[list[str]]:
        """IOB2 tags for pre-tokenised sentences (evaluation). A model trained with document context predicts each
        document's sentences together (joined into one text, windowed), then splits the tags per sentence."""
        return self.predict_sentences_scored(sentences, progress)[0]

    def predict_sentences_scored(self, sentences: Sequence[Sentence], progress: bool = False
                                 ) -> tuple[list[list[str]], list[list[float]]]:
        """Tags and per-word confidences (an entity's words carry its score) for pre-tokenised sentences."""
        texts, offsets, groups = self.sentence_texts(sentences)
        return self.per_sentence(*self.predict_words(texts, offsets, progress), groups, sentences)

    def sentence_texts(self, sentences: Sequence[Sentence]) -> tuple[list[str], list, list[list[int]] | None]:
        """The texts the model reads for pre-tokenised sentences and their word offsets: one text per sentence, or,
        for a model trained with document context, one per document (then also which sentences each holds)."""
        if self.model.config.context == "document":
            return document_texts(sentences)
        return (*texts_and_offsets(sentences), None)

    @staticmethod
    def per_sentence(tags: list, confs: list, groups: list[list[int]] | None, sentences: Sequence[Sentence]
                     ) -> tuple[list[list[str]], list[list[float]]]:
        """Results per text of `sentence_texts` -> per sentence."""
        if groups is None:
            return tags, confs
        sizes = [len(s.tokens) for s in sentences]
        return split_documents(tags, groups, sizes), split_documents(confs, groups, sizes)

    def predict(self, texts: str | Sequence[str], progress: bool = False) -> list[list[Entity]] | list[Entity]:
        """Raw text(s) -> entity spans with character offsets into each text. A single str gives a single list.
        Entities scored below the thresholds (`min_score`, `thresholds`) are left out: see `predict_with_review`."""
        single = isinstance(texts, str)
        res = [kept for kept, _ in self.predict_with_review([texts] if single else list(texts), progress)]
        return res[0] if single else res

    def predict_with_review(self, texts: Sequence[str], progress: bool = False
                            ) -> list[tuple[list[Entity], list[Entity]]]:
        """Per text: (entities at or above the thresholds, entities below them — for a human to review)."""
        texts = list(texts)
        offsets = [split_words(t) for t in texts]
        return self._with_review(texts, offsets, *self.predict_words(texts, offsets, progress))

    def predict_texts(self, texts: Sequence[str], progress: bool = False) -> Predictions:
        """Raw texts -> `Predictions` (kept and for-review entities per text), for `outputs.OUTPUTS` to shape."""
        texts = list(texts)
        return Predictions(texts, self.predict_with_review(texts, progress))

    def predict_texts_scored(self, texts: Sequence[str], progress: bool = False) -> Predictions:
        """`predict_texts`, plus each text's sequence score (`Predictions.scores`): the mean log-probability per word
        of its tags (`mean_logprobs`); a text cut into windows takes its least sure window's; a text without words
        scores 0."""
        texts = list(texts)
        offsets = [split_words(t) for t in texts]
        keep, windows = self.windows_for(texts, offsets)
        res = self.run_windows(windows, progress, keep_logits=True) if windows else []
        scores = [0.0] * len(texts)
        for win, lp in zip(windows, self.mean_logprobs(res), strict=True):
            scores[keep[win.item]] = min(scores[keep[win.item]], lp)
        tags, confs = self.merge(texts, offsets, keep, windows, res)
        return Predictions(texts, self._with_review(texts, offsets, tags, confs), scores=scores)

    def predict_tokens(self, sentences: Sequence[Sentence], gold: bool = False, progress: bool = False
                       ) -> Predictions:
        """Token input (`gold`: it carried tags) -> `Predictions` with the same thresholds and review as raw text:
        each sentence's text, its words' offsets, and (entities at or above the thresholds, those below them)."""
        texts, offsets = texts_and_offsets(sentences)
        res = self._with_review(texts, offsets, *self.predict_sentences_scored(sentences, progress))
        return Predictions(texts, res, sentences, offsets, gold)

    def _with_review(self, texts, offsets, tags, confs) -> list[tuple[list[Entity], list[Entity]]]:
        """Word tags -> entities per text, split at the thresholds: (kept, below them — for review)."""
        out = []
        for t, o, tg, c in zip(texts, offsets, tags, confs, strict=True):
            ents = tags_to_entities(t, o, tg, c)
            out.append(([e for e in ents if e.score >= self.threshold(e.label)],
                        [e for e in ents if e.score < self.threshold(e.label)]))
        return out

    def threshold(self, label: str) -> float:
        return max(self.min_score or 0.0, self.thresholds.get(label, 0.0))

    def predict_stream(self, texts: Iterable[str], chunk_size: int = 256) -> Iterator[list[Entity]]:
        """Entities for each text of a (possibly huge) iterable, in order, holding only `chunk_size` texts at a time:
        memory stays flat however large the corpus (sorting for padding happens within each chunk)."""
        it = iter(texts)
        while chunk := list(islice(it, chunk_size)):
            yield from self.predict(chunk)

    def __call__(self, texts: str | Sequence[str]) -> list[dict] | list[list[dict]]:
        """Output shaped like transformers' `pipeline("token-classification", aggregation_strategy="simple")`:
        dicts with entity_group, score, word, start, end — a drop-in for code written against that pipeline."""
        single = isinstance(texts, str)
        out = [pipeline_dicts(ents) for ents in self.predict([texts] if single else list(texts))]
        return out[0] if single else out


def _padded(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word logits of several windows, (W_i, C) each -> (B, max W, C) zero-padded, and the (B, max W) word mask."""
    W, C = max(len(x) for x in rows), rows[0].shape[-1]
    lg = torch.zeros(len(rows), max(W, 1), C)
    mask = torch.zeros(len(rows), max(W, 1), dtype=torch.bool)
    for b, x in enumerate(rows):
        lg[b, : len(x)], mask[b, : len(x)] = x, True
    return lg, mask


class Scorer:
    """Runs the model once over `sentences` (keeping the word logits), then gives (tags, per-word confidences) at any
    temperature without another forward pass: evaluation reports scores before and after calibration, and
    calibrate.py searches the temperature, from one pass."""

    def __init__(self, ner: NERModel, sentences: Sequence[Sentence], progress: bool = False):
        self.ner, self.sentences = ner, sentences
        self.texts, self.offsets, self.groups = ner.sentence_texts(sentences)
        self.keep, self.windows = ner.windows_for(self.texts, self.offsets)
        self.logits = [r[2] for r in ner.run_windows(self.windows, progress, keep_logits=True)] if self.windows else []

    def at(self, temperature: float, recalibrate: bool = False) -> tuple[list[list[str]], list[list[float]]]:
        """Scores at `temperature`; with `recalibrate`, through the model's logistic recalibration if it has one (the
        scores a user gets: `served`)."""
        res = self.ner.redecode(self.logits, temperature) if self.logits else []
        tags, confs = self.ner.merge(self.texts, self.offsets, self.keep, self.windows, res, recalibrate)
        return self.ner.per_sentence(tags, confs, self.groups, self.sentences)
