"""Exported networks (modeling/graph.py writes them) run by ONNX Runtime or OpenVINO in the place of
LLMForTokenClassification (`ExportedNetwork`), without PyTorch: NERModel hands it NumPy arrays and decodes its word
logits with the same Decoder (the CRF's scores read from the export's head.safetensors, as a PyTorch model dir holds
them). Graph inputs: persistence.graph_inputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config import NERConfig
from ..errors import UserError
from ..labels import LabelSet
from ..modeling.decoding import Decoder, Transitions
from ..modeling.persistence import EXPORT_RECORD, GRAPH_FILES, HEAD_NAME, graph_inputs

log = logging.getLogger(__name__)


class BareTokenizer:
    """An export's tokenizer.json run by the `tokenizers` library alone, with the calls NERModel makes of a
    transformers fast tokenizer (ids, offsets, special tokens, the pad id). transformers imports PyTorch wherever it
    is installed — seconds of every process start (docs/scaling.md) — and a fast tokenizer is this same Rust object
    underneath. Used only when the export's check found it gives transformers' ids and offsets (`matches`)."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self._tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        ids = [self._tk.token_to_id(t["content"] if isinstance(t, dict) else t)
               for t in (cfg.get("pad_token"), cfg.get("eos_token"), cfg.get("unk_token")) if t]
        self.pad_token_id = next((i for i in ids if i is not None), 0)  # as load_tokenizer: pad, else eos, else unk

    def __call__(self, text, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> dict:
        single = isinstance(text, str)
        enc = self._tk.encode_batch([text] if single else list(text), add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in enc]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in enc]
        return {k: v[0] for k, v in out.items()} if single else out

    def matches(self, tokenizer, texts: list[str]) -> bool:
        """The same ids, offsets and pad id as `tokenizer` (transformers') on `texts`, with and without specials."""
        for specials in (True, False):
            a = tokenizer(texts, add_special_tokens=specials, return_offsets_mapping=True)
            b = self(texts, add_special_tokens=specials, return_offsets_mapping=True)
            if a["input_ids"] != b["input_ids"] or [[tuple(o) for o in x] for x in a["offset_mapping"]] != [
                    [tuple(o) for o in x] for x in b["offset_mapping"]]:
                return False
        return self.pad_token_id == tokenizer.pad_token_id


class ExportedNetwork:
    """An export's network, called as LLMForTokenClassification is at prediction (`net(**batch).logits`), with the
    attributes NERModel reads (config, labels, packable, length_factor, decoder)."""

    def __init__(self, path: str | Path, config: NERConfig, runtime: str, precision: str = "auto"):
        from safetensors.numpy import load_file

        path = Path(path)
        self.config, self.runtime = config, runtime
        self.labels = LabelSet.from_dict(config.labels)
        self.record = json.loads((path / EXPORT_RECORD).read_text())
        self.packable, self.length_factor = bool(self.record["packed"]), 1
        self.crf = None
        if config.model.crf:
            head = load_file(str(path / HEAD_NAME))
            self.crf = Transitions.from_state({k[4:]: v for k, v in head.items() if k.startswith("crf.")})
        self.names = graph_inputs(self.packable)
        self.precision = self.record["precision"] or "fp32" if precision == "auto" else precision
        if (self.precision == "int8") != bool(self.record["int8"]):
            has = "with" if self.record["int8"] else "without"
            raise UserError(f"{path}: --precision {precision} on an export {has} int8 weights: use auto (an export "
                            "runs at the precision it was exported and checked at)")
        self._run = (_onnx_runner if runtime == "onnx" else _openvino_runner)(path / GRAPH_FILES[runtime],
                                                                           self.precision)

    @property
    def decoder(self) -> Decoder:
        return Decoder(self.labels, self.crf)

    def eval(self) -> ExportedNetwork:
        return self

    def __call__(self, input_ids, attention_mask, word_positions, word_mask=None, segment_ids=None,
                 position_ids=None) -> SimpleNamespace:
        """NumPy arrays in (a collated or packed batch), (B,W,C) float32 word logits out (`.logits`)."""
        if self.packable and segment_ids is None:  # an unpacked batch: a window a row
            segment_ids = attention_mask
            position_ids = np.broadcast_to(np.arange(input_ids.shape[1]), input_ids.shape)
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "segment_ids": segment_ids,
                 "position_ids": position_ids, "word_positions": word_positions}
        feeds = {n: np.ascontiguousarray(given[n], dtype=np.int64) for n in self.names}
        return SimpleNamespace(logits=np.asarray(self._run(feeds), dtype=np.float32))


def _onnx_runner(graph: Path, precision: str):
    import onnxruntime as ort

    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision {precision!r}: an ONNX export runs as exported (fp32, or int8 with --int8)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def _openvino_runner(graph: Path, precision: str):
    """OpenVINO on the CPU; its inference precision: f32, or bf16 (where the CPU runs it natively) for bf16."""
    import openvino as ov

    hint = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}.get(precision)
    if hint is None:
        raise ValueError(f"precision {precision!r}: an OpenVINO export runs in fp32, bf16 or int8 (as exported)")
    compiled = ov.Core().compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)[0]
