"""`llm-ner export --format onnx | openvino`: a trained model dir -> a dir that ONNX Runtime or OpenVINO runs
(inference/runtimes.py), checked against the PyTorch model in fp32 before it is written.

The check predicts a labelled check set with both (the bundled CoNLL-2003 dev for a CoNLL-typed model, or the user's
`--check` file): the export must keep >= AGREEMENT of fp32 PyTorch's spans (Jaccard over sentence, start, end, type)
and its F1 must be within F1_DROP of PyTorch's. The precisions an export may run at are tried fastest first (int8 as
exported; OpenVINO's bf16 where the CPU runs it natively, then fp32); the first that holds is recorded as the
export's "auto" precision. If none holds, nothing is written and the error says so (int8 is refused, not shipped).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import NERConfig
from ..data import Sentence
from ..data.formats import load_corpus
from ..data.schemes import spans
from ..device import cpu_has_native_bf16
from ..errors import UserError
from ..fsutil import atomic_write_text, replace_dir
from ..inference.engine import NERModel
from ..inference.runtimes import BareTokenizer
from ..labels import LabelSet
from ..modeling.graph import write_graph
from ..modeling.persistence import CONFIG_NAME, EXPORT_RECORD, GRAPH_FILES, HEAD_NAME, read_model_config
from ..rundir import CALIBRATION
from .evaluate import compute_metrics

log = logging.getLogger(__name__)
AGREEMENT = 0.99  # share of fp32 PyTorch's spans the export must keep on the check set
F1_DROP = 0.3  # and its F1 on the check set may be at most this lower
CONLL_TYPES = ["LOC", "MISC", "ORG", "PER"]


def default_output(model_dir: str | Path, fmt: str, int8: bool = False) -> Path:
    """Where an export goes unless told: inside the model dir (MODEL/openvino, MODEL/onnx-int8, ...), where
    `--runtime auto` finds it (persistence.fastest_export)."""
    return Path(model_dir) / (fmt + ("-int8" if int8 else ""))


def export_model(model_dir: str | Path, output: str | Path | None, fmt: str, int8: bool = False,
                 check: str | None = None, check_sentences: int | None = 1000, progress: bool = False) -> dict:
    """Export, check, write `output` (default: `default_output`; atomically; an existing non-empty dir is refused).
    -> the export's record."""
    model_dir = Path(model_dir)
    output = Path(output) if output is not None else default_output(model_dir, fmt, int8)
    if fmt not in GRAPH_FILES:
        raise UserError(f"--format {fmt!r}: use one of safetensors, {', '.join(GRAPH_FILES)}")
    cfg = read_model_config(model_dir)
    if cfg.backbone_saved in GRAPH_FILES:
        raise UserError(f"{model_dir} is already an {cfg.backbone_saved} export: export the model it came from")
    if cfg.model.transform == "repeat":
        raise UserError(f"{model_dir}: a model with sequence repetition (model.transform: repeat) cannot be exported "
                        "yet; its rows change length inside the network")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"--output {output} exists and is not an empty dir: choose a new one")
    sentences = check_set(LabelSet.from_dict(cfg.labels).types, check, check_sentences)
    ref = NERModel.from_pretrained(model_dir, device="cpu", precision="fp32")
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log.info("writing the %s graph%s", fmt, " (int8 weights)" if int8 else "")
        write_graph(ref.model, tmp, fmt, int8)
        _copy_model_files(model_dir, tmp, ref, cfg.model_copy(update={"backbone_saved": fmt}))
        record = {"format": fmt, "int8": int8, "packed": ref.model.packable, "precision": None,
                  "source": str(model_dir), "check_set": check or "conll2003:dev", "check_sentences": len(sentences),
                  "bare_tokenizer": _bare_tokenizer_matches(tmp, ref.tokenizer, sentences)}
        atomic_write_text(tmp / EXPORT_RECORD, json.dumps(record, indent=2))
        record["check"], record["torch_words_per_second"] = _check(model_dir, ref, tmp, sentences,
                                                                   _candidates(fmt, int8), progress)
        chosen = [p for p, m in record["check"].items() if m["holds"]]
        if not chosen:
            raise UserError(_failure(fmt, int8, record["check"]))
        record["precision"] = chosen[0]
        atomic_write_text(tmp / EXPORT_RECORD, json.dumps(record, indent=2))
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def check_set(types: Sequence[str], check: str | None, limit: int | None) -> list[Sentence]:
    """The labelled sentences the export is checked on: `check` (any labelled format), else CoNLL-2003 dev when the
    model's types are CoNLL's; else a one-line error asking for one."""
    if check is None:
        if sorted(types) != CONLL_TYPES:
            raise UserError(f"the model's types {list(types)} are not CoNLL-2003's: give --check a labelled file of "
                            "your own (your dev set) to check the export on")
        check = "conll2003:dev"
    sentences = load_corpus(check, limit=limit)
    if not sentences:
        raise UserError(f"--check {check}: no sentences")
    return sentences


def _candidates(fmt: str, int8: bool) -> list[str]:
    """The precisions an export may run at, fastest first."""
    if int8:
        return ["int8"]
    if fmt == "openvino" and cpu_has_native_bf16():
        return ["bf16", "fp32"]
    return ["fp32"]


def _check(model_dir: Path, ref: NERModel, folder: Path, sentences: list[Sentence], precisions: list[str],
           progress: bool) -> tuple[dict, dict]:
    """Per precision tried (stopping at the first that holds): span agreement with fp32 PyTorch, both F1s, and the
    words a second each predicted the check set at; and PyTorch's own words a second on it (fp32, and the precision
    its "auto" chooses here) — what `--runtime auto` compares."""
    gold = [s.tags for s in sentences]
    want, fp32_wps = _timed(ref, sentences, progress)
    torch_wps = {"fp32": fp32_wps}
    auto = NERModel.from_pretrained(model_dir, device="cpu", runtime="torch")
    if auto.precision != "fp32":
        torch_wps[auto.precision] = _timed(auto, sentences, progress)[1]
    del auto
    ref_f1 = float(compute_metrics(gold, want)["f1"])
    out = {}
    for precision in precisions:
        got, wps = _timed(NERModel.from_pretrained(folder, precision=precision), sentences, progress)
        a, b = _span_set(want), _span_set(got)
        agree = len(a & b) / max(len(a | b), 1)
        f1 = float(compute_metrics(gold, got)["f1"])
        holds = bool(agree >= AGREEMENT and f1 >= ref_f1 - F1_DROP)
        out[precision] = {"span_agreement": round(100 * agree, 2), "f1": round(f1, 2),
                          "torch_fp32_f1": round(ref_f1, 2), "holds": holds, "words_per_second": wps}
        log.info("export check at %s: %.2f %% of fp32 PyTorch's spans, F1 %.2f (PyTorch fp32 %.2f), %.0f words/s "
                 "(PyTorch %s)%s", precision, 100 * agree, f1, ref_f1, wps,
                 ", ".join(f"{k} {v:.0f}" for k, v in torch_wps.items()), "" if holds else ": does not hold")
        if holds:
            break
    return out, torch_wps


def _timed(ner: NERModel, sentences: list[Sentence], progress: bool) -> tuple[list[list[str]], float]:
    """Tags of the check set, and the words a second the pass ran at (load and checks excluded)."""
    t0 = time.perf_counter()
    tags = ner(sentences, progress=progress).tags
    return tags, round(sum(len(s.tokens) for s in sentences) / (time.perf_counter() - t0), 1)


def _bare_tokenizer_matches(folder: Path, tokenizer, sentences: list[Sentence]) -> bool:
    """Whether the export may tokenize without transformers (runtimes.BareTokenizer): the same ids and offsets as the
    model's tokenizer on the check sentences' text."""
    if not (folder / "tokenizer.json").is_file():
        return False
    texts = [" ".join(s.tokens) for s in sentences[:200]] + ["Ünïcödé  spaces\ttab 😀 ok", ""]
    return BareTokenizer(folder).matches(tokenizer, texts)


def _span_set(tags: Sequence[Sequence[str]]) -> set[tuple]:
    return {(i, *s) for i, t in enumerate(tags) for s in spans(t)}


def _failure(fmt: str, int8: bool, check: dict) -> str:
    worst = "; ".join(f"{p}: {m['span_agreement']} % of the spans, F1 {m['f1']} vs {m['torch_fp32_f1']}"
                      for p, m in check.items())
    what = ("int8 is refused: export without --int8" if int8
            else "the export does not reproduce the model: report it with the model's config")
    return (f"the {fmt} export changes the model's predictions on the check set beyond {100 * AGREEMENT:.0f} % of "
            f"the spans / {F1_DROP} F1 ({worst}); {what}; nothing was written")


def _copy_model_files(model_dir: Path, folder: Path, ref: NERModel, cfg: NERConfig) -> None:
    """What prediction reads besides the graph: the head and CRF, the tokenizer, the calibration, the config (last,
    saying what the dir holds)."""
    shutil.copy2(model_dir / HEAD_NAME, folder / HEAD_NAME)
    ref.tokenizer.save_pretrained(folder)
    if (model_dir / CALIBRATION).is_file():
        shutil.copy2(model_dir / CALIBRATION, folder / CALIBRATION)
    atomic_write_text(folder / CONFIG_NAME, cfg.to_json())
