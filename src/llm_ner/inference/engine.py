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
from ..data import Sentence
from ..data.words import split_words
from ..device import cpu_has_native_bf16
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
from .outputs import Entity, Predictions, Thresholds, tags_to_entities

log = logging.getLogger(__name__)
AUTO_CHECK_TEXTS = 32  # news sentences run in fp32 and bf16 when precision is "auto"
AUTO_AGREEMENT = 0.98  # the share of fp32's spans bf16 must keep to be chosen


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
        self.precision = "fp32"  # what from_pretrained chose (quantize.PRECISIONS; "auto" resolves to fp32 or bf16)
        # Calibration (calibrate.py, calibration.json in the model dir): every logit and CRF potential is divided by
        # it before entity scores are computed; 1.0 = as trained. Tags never change with it.
        self.temperature = 1.0
        self.calibration: dict = {}
        # ... or, when calibration.json chose it, a logistic over the score as trained and what it does not know
        # (seen in training, length, type): confidence.py. Then the temperature stays 1.
        self.recalibration: Logistic | None = None
        # Acting on scores: which entities are kept and which go for review (outputs.Thresholds, checked where made).
        self.thresholds = Thresholds()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, batch_size: int = 16,
                        trust_remote_code: bool = False, precision: str | q.Int8Spec | None = "auto",
                        max_batch_tokens: int | None = -1, min_score: float | None = None) -> NERModel:
        """The one way every caller loads a model for prediction (predict, batch-predict, serve, the spaCy component,
        evaluate): precision and thresholds are chosen and checked here, once. `precision` (quantize.PRECISIONS):
        "auto" (bf16 where it is native and holds: `_auto_precision`), "fp32" (None), "bf16" (the backbone's weights
        and activations; head and CRF stay fp32), "int8" (or a `quantize.Int8Spec`: SmoothQuant-calibrated int8
        Linear layers, CPU only). `min_score`: entities below it (or their type's calibrated threshold) are for
        review."""
        Thresholds(min_score)  # checked before minutes of loading
        precision = "fp32" if precision is None else precision
        if isinstance(precision, str) and precision not in q.PRECISIONS:
            raise q.PrecisionError(f"precision={precision!r}: use one of {', '.join(q.PRECISIONS)}")
        spec = q.Int8Spec.parse(precision) if precision not in ("auto", "fp32", "bf16") else None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if spec and device != "cpu":
            raise q.PrecisionError(f"--precision int8 runs on the CPU only (this model would load on {device}); use "
                                   "bf16 or fp32 on a GPU")
        model = LLMForTokenClassification.from_pretrained(path, device=device, trust_remote_code=trust_remote_code)
        if precision == "bf16":
            model.backbone.to(torch.bfloat16)
        ner = cls(model, load_tokenizer(path), batch_size, device, max_batch_tokens=max_batch_tokens)
        cal = Path(path) / rundir.CALIBRATION
        if cal.is_file():
            ner.calibration = json.loads(cal.read_text())
            ner.use_calibration(ner.calibration)
        ner.thresholds = Thresholds.of(min_score, ner.calibration.get("thresholds"))
        ner.precision = "int8" if spec else precision
        if precision == "auto":
            ner = ner._auto_precision(path, trust_remote_code)
        if spec:
            texts = q.calibration_texts()
            q.quantize_int8(model, lambda: ner(texts), spec.alpha, spec.keep_fp32, spec.scheme)
            ner.stats.clear()
        return ner

    def _auto_precision(self, path: str | Path, trust_remote_code: bool) -> NERModel:
        """"auto": bf16 if this device runs it natively (a CPU with AVX512-BF16 or AMX, a GPU that supports it) and
        the model's spans on AUTO_CHECK_TEXTS news sentences agree with fp32's (>= AUTO_AGREEMENT, Jaccard over
        (text, start, end, label)); else fp32, reloaded. Reported in issue 35 for the document-context model (AMD
        EPYC, native bf16): 2.5x the words/s, 99.3 % of spans identical, test F1 within 0.1."""
        cuda = str(self.device).startswith("cuda")
        native = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
        if not native:
            self.precision = "fp32"
            log.info("precision auto: fp32 (no native bf16 on this %s)", "GPU" if cuda else "CPU")
            return self
        texts = q.calibration_texts(AUTO_CHECK_TEXTS)
        ref = _span_set(self(texts))
        self.model.backbone.to(torch.bfloat16)
        got = _span_set(self(texts))
        self.stats.clear()
        agree = len(ref & got) / max(len(ref | got), 1)
        if agree >= AUTO_AGREEMENT:
            self.precision = "bf16"
            log.info("precision auto: bf16 (native; %.1f %% of fp32's spans on %d check sentences)", 100 * agree,
                     len(texts))
            return self
        log.info("precision auto: fp32 (bf16 kept only %.1f %% of fp32's spans on %d check sentences)", 100 * agree,
                 len(texts))
        self.model = LLMForTokenClassification.from_pretrained(path, device=str(self.device),
                                                               trust_remote_code=trust_remote_code).eval()
        self.precision = "fp32"
        return self

    def use_calibration(self, cal: dict) -> None:
        """Apply a calibration.json's choice: its temperature, or its logistic (at T = 1)."""
        if cal.get("method") == "logistic":
            self.temperature, self.recalibration = 1.0, Logistic.from_dict(cal["logistic"])
        else:
            self.temperature, self.recalibration = float(cal.get("temperature", 1.0)), None

    @torch.no_grad()
    def _run(self, windows: list[Window], progress: bool = False, keep_logits: bool = False) -> list[tuple]:
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
            paths, conf = self.model.decoder.decode(logits, word_mask, self.temperature)
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
            paths, conf = self.model.decoder.decode(lg, mask, temperature)
            out += list(zip(paths, conf, strict=True))
        return out

    @torch.no_grad()
    def mean_logprobs(self, res: Sequence[tuple], batch: int = 256) -> list[float]:
        """Per window of `_run(keep_logits=True)`: the mean over its words of log p(decoded tags), as trained —
        the "maximum normalised log-probability" of Shen et al. (2018): near 0 sure, very negative unsure."""
        out: list[float] = []
        for i in range(0, len(res), batch):
            chunk = res[i : i + batch]
            lg, mask = _padded([r[2] for r in chunk])
            lp = self.model.decoder.path_logprob(lg, mask, [list(r[0]) for r in chunk])
            out += (lp / mask.sum(1).clamp(min=1)).tolist()
        return out

    def _windows(self, texts: Sequence[str], word_offsets: Sequence[Sequence[tuple[int, int]]]
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

    def _merge(self, texts: Sequence[str], word_offsets, keep: list[int], windows: list[Window], res: Sequence[tuple],
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

    def _sentence_texts(self, sentences: Sequence[Sentence]) -> tuple[list[str], list, list[list[int]] | None]:
        """The texts the model reads for pre-tokenised sentences and their word offsets: one text per sentence, or,
        for a model trained with document context, one per document (then also which sentences each holds)."""
        if self.model.config.context == "document":
            return document_texts(sentences)
        return (*texts_and_offsets(sentences), None)

    @staticmethod
    def _per_sentence(tags: list, confs: list, groups: list[list[int]] | None, sentences: Sequence[Sentence]
                     ) -> tuple[list[list[str]], list[list[float]]]:
        """Results per text of `_sentence_texts` -> per sentence."""
        if groups is None:
            return tags, confs
        sizes = [len(s.tokens) for s in sentences]
        return split_documents(tags, groups, sizes), split_documents(confs, groups, sizes)

    def __call__(self, inputs: str | Sequence[str] | Sequence[Sentence], *, review: bool = False,
                 scored: bool = False, gold: bool = False, progress: bool = False) -> Predictions:
        """The one predict call. Raw text(s) -> entity spans with character offsets into each text; pre-tokenised
        `Sentence`s (CoNLL) -> the same, over their words (`gold`: they carried tags, CoNLL output keeps them).
        Each text's entities are split at `thresholds` into kept and for-review (`review`: the shapes that can show
        the latter show them); `scored` (raw text) adds each text's sequence score. Shape the result with
        `Predictions.to` (`outputs.OUTPUTS`), e.g. `ner(texts).to("pipeline")` for transformers' pipeline dicts."""
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        if items and all(isinstance(x, Sentence) for x in items):
            if scored:
                raise ValueError("scored=True needs raw texts (a sequence score is per text read)")
            texts, offsets = texts_and_offsets(items)
            tags, confs = self._sentences(items, progress)
            return Predictions(texts=texts, results=self._split(texts, offsets, tags, confs), review=review, tags=tags,
                               sentences=items, offsets=offsets, gold=gold)
        if not all(isinstance(x, str) for x in items):
            raise TypeError("predict raw texts (str) or pre-tokenised Sentences, not a mix or other objects")
        offsets = [split_words(t) for t in items]
        keep, windows = self._windows(items, offsets)
        res = self._run(windows, progress, keep_logits=scored) if windows else []
        scores = None
        if scored:  # a text cut into windows takes its least sure window's score; a text without words scores 0
            scores = [0.0] * len(items)
            for win, lp in zip(windows, self.mean_logprobs(res), strict=True):
                scores[keep[win.item]] = min(scores[keep[win.item]], lp)
        tags, confs = self._merge(items, offsets, keep, windows, res)
        return Predictions(texts=items, results=self._split(items, offsets, tags, confs), review=review, tags=tags,
                           offsets=offsets, scores=scores)

    def pipe(self, texts: Iterable[str], chunk_size: int = 256, **options) -> Iterator[Predictions]:
        """`__call__` over a (possibly huge) iterable, a chunk of `chunk_size` texts at a time, in order: memory stays
        flat however large the corpus (sorting for padding happens within each chunk)."""
        it = iter(texts)
        while chunk := list(islice(it, chunk_size)):
            yield self(chunk, **options)

    def _words(self, texts: Sequence[str], word_offsets: Sequence[Sequence[tuple[int, int]]], progress: bool = False
               ) -> tuple[list[list[str]], list[list[float]]]:
        """Tags and confidences per word for texts whose word offsets are given."""
        keep, windows = self._windows(texts, word_offsets)
        res = self._run(windows, progress) if windows else []
        return self._merge(texts, word_offsets, keep, windows, res)

    def _sentences(self, sentences: Sequence[Sentence], progress: bool = False
                   ) -> tuple[list[list[str]], list[list[float]]]:
        """IOB2 tags and per-word confidences (an entity's words carry its score) for pre-tokenised sentences. A model
        trained with document context predicts each document's sentences together (joined into one text, windowed),
        then splits the tags per sentence."""
        texts, offsets, groups = self._sentence_texts(sentences)
        return self._per_sentence(*self._words(texts, offsets, progress), groups, sentences)

    def _split(self, texts, offsets, tags, confs) -> list[tuple[list[Entity], list[Entity]]]:
        """Word tags -> entities per text, split at the thresholds: (kept, below them — for review)."""
        return [self.thresholds.split(tags_to_entities(t, o, tg, c))
                for t, o, tg, c in zip(texts, offsets, tags, confs, strict=True)]


def _span_set(p: Predictions) -> set[tuple]:
    return {(i, e.start, e.end, e.label) for i, (kept, low) in enumerate(p.results) for e in kept + low}


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
        self.texts, self.offsets, self.groups = ner._sentence_texts(sentences)
        self.keep, self.windows = ner._windows(self.texts, self.offsets)
        self.logits = [r[2] for r in ner._run(self.windows, progress, keep_logits=True)] if self.windows else []

    def at(self, temperature: float, recalibrate: bool = False) -> tuple[list[list[str]], list[list[float]]]:
        """Scores at `temperature`; with `recalibrate`, through the model's logistic recalibration if it has one (the
        scores a user gets: `served`)."""
        res = self.ner.redecode(self.logits, temperature) if self.logits else []
        tags, confs = self.ner._merge(self.texts, self.offsets, self.keep, self.windows, res, recalibrate)
        return self.ner._per_sentence(tags, confs, self.groups, self.sentences)
