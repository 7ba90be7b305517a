"""A trained model's network written as a graph file another runtime runs: an ONNX graph (ONNX Runtime), or an OpenVINO
IR converted from it (`write_graph`; `llm-ner export`, evaluation/export.py, checks it before anything is kept).

What is written is the network alone — tokens in, word logits (B,W,C) out: the unmasked backbone, the head and the
gather of each word's first sub-token, exactly `LLMForTokenClassification.forward` at prediction. Windows, batching,
packing, Viterbi through the CRF and entity scores stay NERModel's and the Decoder's (inference/runtimes.py runs the
graph in the model's place), one path for every runtime.

    packable model (unmask: all):  input_ids, segment_ids, position_ids, word_positions  ->  word_logits
    otherwise:                     input_ids, attention_mask, word_positions              ->  word_logits

A packed row holds several windows (segment_ids k = the k-th, 0 = pad; positions restart at each); an unpacked batch
is the one-window-a-row case (segment_ids = attention_mask, positions 0..T-1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .persistence import GRAPH_FILES, graph_inputs

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
