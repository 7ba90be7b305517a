"""NERModel: load a saved model dir once, predict entity spans (with character offsets) for raw texts, or tags for
pre-tokenised sentences.

The prediction pass is two public steps, as spaCy's predict / set_annotations:
    run(texts | sentences)  ──> words ──> windows (modeling/processor.py) ──> sorted, batched or packed forward
                            ──> a Pass: each window's word logits (W,C) on the CPU
    decode(pass, T)         ──> tags + confidences per window (model.decoder at temperature T) ──> merged per text
                            (per sentence for pre-tokenised input), entity scores recalibrated
`__call__`, `pipe`, `Scorer` (one run, many temperatures: calibration, evaluation) and `select` compose them."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .. import rundir
from ..data import Sentence
from ..data.words import split_words
from ..device import cpu_has_native_bf16
from ..errors import UserError
from ..labels import instruction
from ..modeling import backbones
from ..modeling.persistence import check_runtime, fastest_export, read_model_config
from ..modeling.processor import (
    Window,
    budget_batches,
    collate,
    document_texts,
    encode_texts,
    merge_windows,
    pack_rows,
    packed_inputs,
    split_documents,
    texts_and_offsets,
    to_tensors,
    unpack_word_logits,
    window_feature,
)
from . import precision as q
from .confidence import Logistic
from .outputs import Entity, Predictions, Thresholds, tags_to_entities
from .runtimes import BareTokenizer, ExportedNetwork

if TYPE_CHECKING:  # PyTorch is imported where a PyTorch model is loaded: an export predicts without it
    from ..modeling.model import LLMForTokenClassification

log = logging.getLogger(__name__)
AUTO_CHECK_TEXTS = 32  # news sentences run in fp32 and bf16 when precision is "auto"
AUTO_AGREEMENT = 0.98  # the share of fp32's spans bf16 must keep to be chosen


@dataclass
class Pass:
    """What `NERModel.run` computed for some inputs and `decode` reads: the texts the model read, their words, the
    windows and each window's word logits (W,C) on the CPU."""
    texts: list[str]
    offsets: list  # per text: (start, end) of each word
    keep: list[int]  # the texts that have words (the others predict nothing)
    windows: list[Window]
    logits: list[np.ndarray]
    sentences: Sequence[Sentence] | None = None  # pre-tokenised input: results go back per sentence
    groups: list[list[int]] | None = None  # a document model: the sentences each text holds
    paths: list[list[int]] | None = None  # each window's tag ids, set by the first decode (no temperature moves them)


def load_tokenizer(path_or_name: str | Path, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    path, gguf = backbones.resolve(str(path_or_name), gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:  # decoders often have none; any id works, padding is masked
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


class NERModel:
    def __init__(self, model: LLMForTokenClassification | ExportedNetwork, tokenizer, batch_size: int = 16,
                 device: str | None = None, sort_by_length: bool = True, max_batch_tokens: int | None = -1,
                 pack: bool = True):
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
        self.runtime = "torch"  # what runs the network (runtimes.RUNTIMES): from_pretrained chooses
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
                        max_batch_tokens: int | None = -1, min_score: float | None = None,
                        runtime: str = "auto") -> NERModel:
        """The one way every caller loads a model for prediction (predict, batch-predict, serve, the spaCy component,
        evaluate): runtime, precision and thresholds are chosen and checked here, once. `precision`
        (quantize.PRECISIONS): "auto" (bf16 where it is native and holds: `_auto_precision`), "fp32" (None), "bf16"
        (the backbone's weights and activations; head and CRF stay fp32), "int8" (or a `quantize.Int8Spec`:
        SmoothQuant-calibrated int8 Linear layers, CPU only). `runtime` (runtimes.RUNTIMES): "auto" = what the dir
        holds — a PyTorch model, or an `llm-ner export` to ONNX / OpenVINO (run by its runtime; "auto" precision is
        the one its export check chose); for a PyTorch dir with exports inside (MODEL/openvino, ...), at "auto"
        precision on the CPU, the fastest that held its check and beat PyTorch there (`persistence.fastest_export`).
        `min_score`: entities below it (or their type's calibrated threshold) are for review."""
        Thresholds(min_score)  # checked before minutes of loading
        precision = "fp32" if precision is None else precision
        if isinstance(precision, str):
            q.check_precision(precision)
        chosen = check_runtime(path, runtime)
        if chosen != "torch":
            return cls._exported(path, chosen, precision, batch_size, max_batch_tokens, min_score)
        if runtime == "auto" and precision == "auto" and device in (None, "cpu"):
            found = fastest_export(path)
            if found:  # the default follows what the export's check measured on this model
                folder, rec, wps, torch_wps = found
                why = (f"runtime auto: the {rec['format']} export in {folder} ({rec['precision']}; {wps:.0f} words/s "
                       f"in its check against PyTorch's {torch_wps:.0f}; --runtime torch runs the PyTorch model)")
                return cls._exported(folder, rec["format"], "auto", batch_size, max_batch_tokens, min_score, why)
        try:
            import torch
        except ImportError:  # the serving image for exports (Dockerfile.export) has none
            raise UserError(f"{path}: a PyTorch model dir, and this environment has no PyTorch: run its `llm-ner "
                            "export --format onnx | openvino` where PyTorch is installed and load that") from None

        from ..modeling.model import LLMForTokenClassification

        spec = q.Int8Spec.parse(precision) if precision not in ("auto", "fp32", "bf16") else None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if spec and device != "cpu":
            raise q.PrecisionError(f"--precision int8 runs on the CPU only (this model would load on {device}); use "
                                   "bf16 or fp32 on a GPU")
        model = LLMForTokenClassification.from_pretrained(path, device=device, trust_remote_code=trust_remote_code)
        if precision == "bf16":
            model.backbone.to(torch.bfloat16)
        ner = cls(model, load_tokenizer(path), batch_size, device, max_batch_tokens=max_batch_tokens)
        ner._read_calibration(path, min_score)
        ner.precision = "int8" if spec else precision
        if precision == "auto":
            ner = ner._auto_precision(path, trust_remote_code)
        if spec:
            from .quantize import quantize_int8

            texts = q.calibration_texts()
            quantize_int8(model, lambda: ner(texts), spec.alpha, spec.keep_fp32, spec.scheme)
            ner.stats.clear()
        return ner

    @classmethod
    def _exported(cls, path: str | Path, runtime: str, precision: str, batch_size: int,
                  max_batch_tokens: int | None, min_score: float | None, why: str | None = None) -> NERModel:
        """An export's network (runtimes.ExportedNetwork) in the model's place; the rest of the pass is the same."""
        net = ExportedNetwork(path, read_model_config(path), runtime, precision)
        tokenizer = BareTokenizer(path) if net.record.get("bare_tokenizer") else load_tokenizer(path)
        ner = cls(net, tokenizer, batch_size, "cpu", max_batch_tokens=max_batch_tokens)
        ner.precision, ner.runtime = net.precision, runtime
        ner._read_calibration(path, min_score)
        log.info("%s", why or f"runtime {runtime}, precision {net.precision}")  # once: why auto chose it, if it did
        return ner

    def _auto_precision(self, path: str | Path, trust_remote_code: bool) -> NERModel:
        """"auto": bf16 if this device runs it natively (a CPU with AVX512-BF16 or AMX, a GPU that supports it) and
        the model's spans on AUTO_CHECK_TEXTS news sentences agree with fp32's (>= AUTO_AGREEMENT, Jaccard over
        (text, start, end, label)); else fp32, reloaded. Reported in issue 35 for the document-context model (AMD
        EPYC, native bf16): 2.5x the words/s, 99.3 % of spans identical, test F1 within 0.1."""
        import torch

        from ..modeling.model import LLMForTokenClassification

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

    def _read_calibration(self, path: str | Path, min_score: float | None) -> None:
        """The model dir's calibration.json (if any) and the thresholds from it and `min_score`."""
        cal = Path(path) / rundir.CALIBRATION
        if cal.is_file():
            self.calibration = json.loads(cal.read_text())
            self.use_calibration(self.calibration)
        self.thresholds = Thresholds.of(min_score, self.calibration.get("thresholds"))

    def use_calibration(self, cal: dict) -> None:
        """Apply a calibration.json's choice: its temperature, or its logistic (at T = 1)."""
        if cal.get("method") == "logistic":
            self.temperature, self.recalibration = 1.0, Logistic.from_dict(cal["logistic"])
        else:
            self.temperature, self.recalibration = float(cal.get("temperature", 1.0)), None

    # -- the prediction pass --------------------------------------------------------------------------------------
    def run(self, inputs: Sequence[str] | Sequence[Sentence], progress: bool = False) -> Pass:
        """Raw texts (split into words here) or pre-tokenised sentences (a document model reads each document as one
        text) -> windows -> every window's word logits."""
        sentences = None
        if inputs and all(isinstance(x, Sentence) for x in inputs):
            sentences = inputs
            if self.model.config.context == "document":
                texts, offsets, groups = document_texts(sentences)
            else:
                (texts, offsets), groups = texts_and_offsets(sentences), None
        elif all(isinstance(x, str) for x in inputs):
            texts, groups = list(inputs), None
            offsets = [split_words(t) for t in texts]
        else:
            raise TypeError("predict raw texts (str) or pre-tokenised Sentences, not a mix or other objects")
        keep, windows = self._windows(texts, offsets)
        logits = self._forward(windows, progress) if windows else []
        return Pass(texts, offsets, keep, windows, logits, sentences, groups)

    def decode(self, p: Pass, temperature: float | None = None, recalibrate: bool = True
               ) -> tuple[list[list[str]], list[list[float]]]:
        """A pass's logits -> IOB2 tags and per-word confidences (an entity's words carry its score) per text, or per
        sentence when the pass read sentences. `temperature`: the model's own when None (calibration tries others);
        `recalibrate`: entity scores through the saved logistic recalibration when there is one."""
        t0 = time.perf_counter()
        res = self._decode_windows(p.logits, self.temperature if temperature is None else temperature)
        self.stats["decode_s"] += time.perf_counter() - t0
        p.paths = [r[0] for r in res]
        n_words = [len(p.offsets[i]) for i in p.keep]
        merged_tags = merge_windows(p.windows, n_words, [r[0] for r in res])
        merged_conf = merge_windows(p.windows, n_words, [r[1] for r in res])
        tags: list[list[str]] = [[] for _ in p.texts]
        confs: list[list[float]] = [[] for _ in p.texts]
        id2tag = self.labels.tags
        for k, i in enumerate(p.keep):
            tags[i], confs[i] = [id2tag[t] for t in merged_tags[k]], merged_conf[k]
        if self.recalibration is not None and recalibrate:
            confs = self.recalibration.apply(p.texts, p.offsets, tags, confs)
        if p.groups is not None:  # a document's tags back to its sentences
            sizes = [len(s.tokens) for s in p.sentences]
            return split_documents(tags, p.groups, sizes), split_documents(confs, p.groups, sizes)
        return tags, confs

    def sequence_scores(self, p: Pass) -> list[float]:
        """Per text: the mean over its words of log p(decoded tags), as trained — the "maximum normalised
        log-probability" of Shen et al. (2018): near 0 sure, very negative unsure. A text cut into windows takes its
        least sure window's; a text without words scores 0."""
        scores = [0.0] * len(p.texts)
        paths = p.paths if p.paths is not None else [r[0] for r in self._decode_windows(p.logits, 1.0)]
        for i in range(0, len(p.logits), 256):
            lg, mask = _padded(p.logits[i : i + 256])
            lp = self.model.decoder.path_logprob(lg, mask, paths[i : i + 256]) / np.maximum(mask.sum(1), 1)
            for win, v in zip(p.windows[i : i + 256], lp.tolist(), strict=True):
                scores[p.keep[win.item]] = min(scores[p.keep[win.item]], v)
        return scores

    def _windows(self, texts: Sequence[str], word_offsets: Sequence[Sequence[tuple[int, int]]]
                 ) -> tuple[list[int], list[Window]]:
        """The texts that have words, and their model windows."""
        keep = [i for i, o in enumerate(word_offsets) if len(o) > 0]  # texts with no words predict nothing
        if not keep:  # (and the tokenizer must not see an empty batch)
            return [], []
        cfg = self.model.config.model
        t0 = time.perf_counter()
        windows = encode_texts(self.tokenizer, [texts[i] for i in keep], [word_offsets[i] for i in keep],
                               cfg.max_length, cfg.stride, prefix=instruction(self.labels, cfg.instruction))
        self.stats["tokenize_s"] += time.perf_counter() - t0
        return keep, windows

    def _forward(self, windows: list[Window], progress: bool = False) -> list[np.ndarray]:
        """Every window's word logits (W,C) on the CPU, in the windows' order; computed longest first, in batches
        under a token budget or packed rows."""
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
            t0 = time.perf_counter()
            logits = self._network(batch)  # (B,W,C); packed: every window's words side by side in its row
            st["forward_s"] += time.perf_counter() - t0
            logits, word_mask = unpack_word_logits(logits, where) if packed else (logits, batch["word_mask"])
            st["tokens"] += int(batch["attention_mask"].sum())
            st["padded_tokens"] += batch["input_ids"].size
            st["batches"] += 1
            n_words = word_mask.sum(1).tolist()
            for j, i in enumerate(idx):
                results[i] = logits[j, : int(n_words[j])]
        return results

    def _network(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """A batch of arrays through the network -> (B,W,C) float32 word logits on the CPU: an export's runtime
        takes the arrays; a PyTorch model takes them as tensors on its device."""
        if self.runtime != "torch":
            return self.model(**batch).logits
        import torch

        with torch.no_grad():
            return self.model(**to_tensors(batch, self.device)).logits.float().cpu().numpy()

    def _decode_windows(self, logits: Sequence[np.ndarray], temperature: float, batch: int = 256) -> list[tuple]:
        """(tag ids, confidences) of each window, in order; decoded in batches of similar length (little padding)."""
        order = sorted(range(len(logits)), key=lambda i: -len(logits[i]))
        out: list = [None] * len(logits)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            lg, mask = _padded([logits[j] for j in idx])
            paths, conf = self.model.decoder.decode(lg, mask, temperature)
            for j, path, c in zip(idx, paths, conf, strict=True):
                out[j] = (path, c)
        return out

    # -- what users call -------------------------------------------------------------------------------------------
    def __call__(self, inputs: str | Sequence[str] | Sequence[Sentence], *, review: bool = False,
                 scored: bool = False, gold: bool = False, progress: bool = False) -> Predictions:
        """The one predict call. Raw text(s) -> entity spans with character offsets into each text; pre-tokenised
        `Sentence`s (CoNLL) -> the same, over their words (`gold`: they carried tags, CoNLL output keeps them).
        Each text's entities are split at `thresholds` into kept and for-review (`review`: the shapes that can show
        the latter show them); `scored` (raw text) adds each text's sequence score. Shape the result with
        `Predictions.to` (`outputs.OUTPUTS`), e.g. `ner(texts).to("pipeline")` for transformers' pipeline dicts."""
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        if scored and items and all(isinstance(x, Sentence) for x in items):
            raise ValueError("scored=True needs raw texts (a sequence score is per text read)")
        p = self.run(items, progress)
        tags, confs = self.decode(p)
        if p.sentences is not None:
            texts, offsets = texts_and_offsets(items)
            return Predictions(texts=texts, results=self._split(texts, offsets, tags, confs), review=review, tags=tags,
                               sentences=items, offsets=offsets, gold=gold)
        return Predictions(texts=items, results=self._split(items, p.offsets, tags, confs), review=review, tags=tags,
                           offsets=p.offsets, scores=self.sequence_scores(p) if scored else None)

    def pipe(self, texts: Iterable[str], chunk_size: int = 256, **options) -> Iterator[Predictions]:
        """`__call__` over a (possibly huge) iterable, a chunk of `chunk_size` texts at a time, in order: memory stays
        flat however large the corpus (sorting for padding happens within each chunk)."""
        it = iter(texts)
        while chunk := list(islice(it, chunk_size)):
            yield self(chunk, **options)

    def _split(self, texts, offsets, tags, confs) -> list[tuple[list[Entity], list[Entity]]]:
        """Word tags -> entities per text, split at the thresholds: (kept, below them — for review)."""
        return [self.thresholds.split(tags_to_entities(t, o, tg, c))
                for t, o, tg, c in zip(texts, offsets, tags, confs, strict=True)]


def _span_set(p: Predictions) -> set[tuple]:
    return {(i, e.start, e.end, e.label) for i, (kept, low) in enumerate(p.results) for e in kept + low}


def _padded(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Word logits of several windows, (W_i, C) each -> (B, max W, C) zero-padded, and the (B, max W) word mask."""
    W, C = max(len(x) for x in rows), rows[0].shape[-1]
    lg = np.zeros((len(rows), max(W, 1), C), dtype=np.float32)
    mask = np.zeros((len(rows), max(W, 1)), dtype=bool)
    for b, x in enumerate(rows):
        lg[b, : len(x)], mask[b, : len(x)] = x, True
    return lg, mask


class Scorer:
    """Runs the model once over `sentences` (keeping the word logits), then gives (tags, per-word confidences) at any
    temperature without another forward pass: evaluation reports scores before and after calibration, and
    calibrate.py searches the temperature, from one pass."""

    def __init__(self, ner: NERModel, sentences: Sequence[Sentence], progress: bool = False):
        self.ner, self.sentences = ner, sentences
        self.pass_ = ner.run(sentences, progress)

    def at(self, temperature: float, recalibrate: bool = False) -> tuple[list[list[str]], list[list[float]]]:
        """Scores at `temperature`; with `recalibrate`, through the model's logistic recalibration if it has one (the
        scores a user gets: `served`)."""
        return self.ner.decode(self.pass_, temperature, recalibrate)
