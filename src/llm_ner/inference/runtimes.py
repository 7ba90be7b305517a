"""Exported networks: a trained model's network written as an ONNX graph or an OpenVINO IR (`write_graph`), and run by
ONNX Runtime or OpenVINO in the place of LLMForTokenClassification (`ExportedNetwork`).

What is exported is the network alone — tokens in, word logits (B,W,C) out: the unmasked backbone, the head and the
gather of each word's first sub-token, exactly `LLMForTokenClassification.forward` at prediction. Windows, batching,
packing, Viterbi through the CRF and entity scores stay NERModel's and the Decoder's, one path for every runtime (the
CRF's transition table is read from the export's head.safetensors, as a PyTorch model dir holds it).

    packable model (unmask: all):  input_ids, segment_ids, position_ids, word_positions  ->  word_logits
    otherwise:                     input_ids, attention_mask, word_positions              ->  word_logits

A packed row holds several windows (segment_ids k = the k-th, 0 = pad; positions restart at each); an unpacked batch
is the one-window-a-row case (segment_ids = attention_mask, positions 0..T-1).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..config import NERConfig
from ..errors import UserError
from ..labels import LabelSet
from ..modeling.crf import CRF
from ..modeling.decoding import Decoder
from ..modeling.persistence import EXPORT_RECORD, GRAPH_FILES, HEAD_NAME

log = logging.getLogger(__name__)
OPSET = 18


class _Graph(torch.nn.Module):
    """What is exported: the model's forward at prediction, with plain tensor inputs and one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, segment_ids, position_ids, word_positions):  # packable
        return self.model(input_ids, (segment_ids > 0).long(), word_positions, None, segment_ids=segment_ids,
                          position_ids=position_ids).logits


class _UnpackedGraph(_Graph):
    def forward(self, input_ids, attention_mask, word_positions):
        return self.model(input_ids, attention_mask, word_positions, None).logits


def graph_inputs(packable: bool) -> list[str]:
    return (["input_ids", "segment_ids", "position_ids", "word_positions"] if packable
            else ["input_ids", "attention_mask", "word_positions"])


def write_graph(model, folder: Path, fmt: str, int8: bool = False) -> None:
    """model (fp32, eval) -> folder/model.onnx, or folder/openvino_model.{xml,bin} (converted from the ONNX graph).
    int8: weights quantised to 8 bits (ONNX Runtime's dynamic quantisation; NNCF's weight compression for OpenVINO)."""
    names = graph_inputs(model.packable)
    graph = (_Graph if model.packable else _UnpackedGraph)(model).eval()
    B, T, W = 2, 9, 4  # example sizes; every axis is dynamic
    example = {"input_ids": torch.ones(B, T, dtype=torch.long), "attention_mask": torch.ones(B, T, dtype=torch.long),
               "segment_ids": torch.ones(B, T, dtype=torch.long),
               "position_ids": torch.arange(T).expand(B, T).contiguous(),
               "word_positions": torch.arange(W).expand(B, W).contiguous()}
    batch, tokens, words = (torch.export.Dim(n) for n in ("batch", "tokens", "words"))
    shapes = {n: {0: batch, 1: words if n == "word_positions" else tokens} for n in names}
    onnx_path = folder / ("model.onnx" if fmt == "onnx" else "graph.onnx")
    with torch.no_grad():
        torch.onnx.export(graph, tuple(example[n] for n in names), str(onnx_path), input_names=names,
                          output_names=["word_logits"], dynamic_shapes=shapes, dynamo=True, opset_version=OPSET,
                          external_data=True, verbose=False)
    if fmt == "onnx" and int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = folder / "fp32.onnx"
        _move_onnx(onnx_path, fp32)
        quantize_dynamic(fp32, onnx_path, weight_type=QuantType.QInt8, use_external_data_format=True)
        _remove_onnx(fp32)
    elif fmt == "openvino":
        import openvino as ov

        ov_model = ov.convert_model(str(onnx_path))
        if int8:
            import nncf

            ov_model = nncf.compress_weights(ov_model)  # int8 weights, activations as the runtime runs them
        ov.save_model(ov_model, str(folder / GRAPH_FILES["openvino"]), compress_to_fp16=False)
        _remove_onnx(onnx_path)


def _move_onnx(src: Path, dst: Path) -> None:
    """An ONNX file names its external-data file inside it: load and save again under the new name."""
    import onnx

    m = onnx.load(str(src))
    onnx.save(m, str(dst), save_as_external_data=True, location=dst.name + ".data")
    _remove_onnx(src)


def _remove_onnx(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()


class ExportedNetwork:
    """An export's network, called as LLMForTokenClassification is at prediction (`net(**batch).logits`), with the
    attributes NERModel reads (config, labels, packable, length_factor, decoder)."""

    def __init__(self, path: str | Path, config: NERConfig, runtime: str, precision: str = "auto"):
        from safetensors.torch import load_file

        path = Path(path)
        self.config, self.runtime = config, runtime
        self.labels = LabelSet.from_dict(config.labels)
        self.record = json.loads((path / EXPORT_RECORD).read_text())
        self.packable, self.length_factor = bool(self.record["packed"]), 1
        self.crf = None
        if config.model.crf:
            self.crf = CRF(len(self.labels), self.labels.allowed_transitions(), self.labels.allowed_starts())
            head = load_file(str(path / HEAD_NAME))
            self.crf.load_state_dict({k[4:]: v for k, v in head.items() if k.startswith("crf.")})
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
        if self.packable and segment_ids is None:  # an unpacked batch: a window a row
            segment_ids = attention_mask
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "segment_ids": segment_ids,
                 "position_ids": position_ids, "word_positions": word_positions}
        feeds = {n: given[n].cpu().numpy().astype(np.int64) for n in self.names}
        return SimpleNamespace(logits=torch.from_numpy(np.asarray(self._run(feeds), dtype=np.float32)))


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
