"""llm-ner benchmarks: speed, memory and F1 of our model, its speed-ups and the alternatives, on this machine, in one
run (so the ratios are fair). Every measurement runs in its own process, so peak memory and load time are per
system. Usage (from the repo root; `benchmarks/run` is the same):

    python benchmarks/bench.py                 # everything, ~25 min on 2 CPU cores
    python benchmarks/bench.py --quick         # small inputs, no full-test-set F1, ~5 min

Writes benchmarks/results/{results.json, results.md, scaling.png}. Not a test: nothing here asserts a speed.
The models it measures are trained first (each reproduces its number in the README / docs/results.md):

    llm-ner quickstart                                                            # runs/quickstart/model
    llm-ner baseline encoder --config quickstart --output runs/encoder_quickstart # runs/encoder_quickstart/model
    python scripts/ablation.py --only "LoRA r=16 (lr 1e-3)"                      # runs/ablation/row4/model

FLOPs: a forward pass costs ~2 x (non-embedding parameters) FLOPs per token (attention score FLOPs are not counted:
at 48 tokens they are < 2 %); training ~6x (full), ~4x (LoRA: activation gradients through every layer, weight
gradients only for the adapters), ~2x (frozen backbone: forward only). MFU = achieved / measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the benchmark modules beside this file

from predict_bench import (  # noqa: E402
    w_matmul,
    w_paired,
    w_pipeline,
    w_predict,
    w_predict_process,
    w_raw_text,
    w_scaling,
    w_serve,
    w_spacy,
    w_splitter,
)
from train_bench import (  # noqa: E402
    w_backbone_paired,
    w_bf16_true_paired,
    w_compile_paired,
    w_exit_paired,
    w_freeze_paired,
    w_passes_memory,
    w_passes_paired,
    w_train,
    w_train_padding,
    w_train_paired,
    w_train_recipe,
)

WORKERS = {"matmul": w_matmul, "predict_process": w_predict_process, "predict": w_predict,
           "pipeline": w_pipeline, "spacy": w_spacy,
           "train": w_train, "raw_text": w_raw_text, "splitter": w_splitter,
           "train_paired": w_train_paired,
           "exit_paired": w_exit_paired,
           "passes_memory": w_passes_memory, "passes_paired": w_passes_paired,
           "bf16_true_paired": w_bf16_true_paired, "freeze_paired": w_freeze_paired,
           "backbone_paired": w_backbone_paired, "compile_paired": w_compile_paired, "train_recipe": w_train_recipe,
           "train_padding": w_train_padding,
           "scaling": w_scaling, "paired": w_paired, "serve": w_serve}


def run_worker(name: str, *args: str, timeout: int = 3600) -> dict:
    cmd = [sys.executable, __file__, "worker", name, *args]
    print(f"[bench] {name} {' '.join(args)}", flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    if r.returncode:
        err = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[bench]   failed: {err}", flush=True)
        return {"error": err}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"[bench]   {time.perf_counter() - t:.0f} s: {json.dumps(res)[:300]}", flush=True)
    return res


def section_table(a) -> dict:
    """Every section: a name -> the worker run (its arguments) that measures it."""
    n = "64" if a.quick else "256"
    f1 = [] if a.quick else ["--f1"]
    full_grid = "1:sorted,8:sorted,32:sorted,32:unsorted,32:budget_nopack,32:budget"
    return {
        "matmul": lambda: run_worker("matmul"),
        "llm": lambda: run_worker("predict", a.llm_model, "--n", n, "--grid", full_grid, "--ideal", *f1),
        "llm_int8": lambda: run_worker("predict", a.llm_model, "--n", n, "--grid", "1:sorted,32:budget", "--int8",
                                       *f1),
        "int8_paired": lambda: run_worker("paired", a.llm_model, "--n", n, "--rounds", "2" if a.quick else "5"),
        "llm_int8_torchao": lambda: run_worker("predict", a.llm_model, "--n", n, "--grid", "1:sorted,32:budget",
                                               "--int8", "--scheme", "torchao", *f1),
        "int8_torchao_paired": lambda: run_worker("paired", a.llm_model, "--n", n, "--rounds",
                                                  "2" if a.quick else "5", "--base", "int8", "--other", "int8-torchao"),
        "llm_bf16": lambda: run_worker("predict", a.llm_model, "--n", n, "--grid", "32:budget", "--bf16", *f1),
        "bf16_paired": lambda: run_worker("paired", a.llm_model, "--n", n, "--rounds", "2" if a.quick else "5",
                                          "--other", "bf16"),
        # issue 35: the default precision ("auto") against fp32, in one process and as whole `llm-ner predict` runs
        "auto_paired": lambda: run_worker("paired", a.llm_model, "--n", n, "--rounds", "2" if a.quick else "5",
                                          "--other", "auto"),
        "auto_process": lambda: run_worker("predict_process", a.llm_model, "--n", "512" if a.quick else "3453",
                                           "--rounds", "1" if a.quick else "3"),
        # SmoothQuant strength chosen on dev F1 (fp32 reference first)
        **({} if a.quick else {
            "dev_fp32": lambda: run_worker("predict", a.llm_model, "--n", "16", "--grid", "32:budget", "--f1",
                                           "--split", "valid"),
            **{f"dev_int8_{sc}_alpha{al}_{keep}": (lambda sc=sc, al=al, keep=keep: run_worker(
                "predict", a.llm_model, "--n", "16", "--grid", "32:budget", "--f1", "--split", "valid", "--int8",
                "--scheme", sc, "--alpha", al, "--keep-fp32", "none" if keep == "all_int8" else "down_proj"))
               for sc, al, keep in [*(("per_token", al, "all_int8") for al in ("0.35", "0.5", "0.65", "0.8", "0.9")),
                                    ("per_token", "0.8", "down_fp32"), ("per_tensor", "0.8", "all_int8"),
                                    ("per_tensor", "0.8", "down_fp32")]}}),
        "raw_text": lambda: run_worker("raw_text", a.llm_model),
        "splitter": lambda: run_worker("splitter"),
        "llm_1thread": lambda: run_worker("predict", a.llm_model, "--n", n, "--grid", "32:budget", "--threads", "1"),
        # compiled with dynamic shapes; packed batches (a new segment layout per batch) make it recompile, so it is
        # measured on the unpacked budget too
        "llm_compile": lambda: run_worker("predict", a.llm_model, "--n", n, "--grid", "32:budget_nopack,32:budget",
                                          "--compile"),
        "lora": lambda: run_worker("predict", a.lora_model, "--n", n, "--grid", "32:budget", *f1),
        "lora_merged": lambda: run_worker("predict", a.lora_model, "--n", n, "--grid", "32:budget", "--merge", *f1),
        "encoder": lambda: run_worker("predict", a.encoder_model, "--n", n, "--grid", full_grid, *f1),
        "encoder_int8": lambda: run_worker("predict", a.encoder_model, "--n", n, "--grid", "32:budget", "--int8",
                                           *f1),
        "hf_pipeline": lambda: run_worker("pipeline", a.llm_model, "--n", n, "--rounds", "2" if a.quick else "3"),
        "spacy": lambda: run_worker("spacy", "--n", n, *f1),
        "serve": lambda: run_worker("serve", a.llm_model, "--n", n, "--clients", "16"),
        "serve_int8": lambda: run_worker("serve", a.llm_model, "--n", n, "--clients", "16", "--int8"),
        **{f"train_{m}": (lambda m=m: run_worker("train", "--mode", m, "--steps", "3" if a.quick else "6"))
           for m in ("full", "lora", "frozen")},
        "train_full_bf16": lambda: run_worker("train", "--mode", "full", "--precision", "bf16", "--steps",
                                              "3" if a.quick else "6"),
        "train_paired": lambda: run_worker("train_paired", "--mode", "full", "--steps", "2" if a.quick else "4",
                                           "--rounds", "2" if a.quick else "5"),
        "exit_paired": lambda: run_worker("exit_paired", "--mode", "full", "--steps", "2" if a.quick else "3",
                                          "--rounds", "2" if a.quick else "5"),
        "backbone_paired": lambda: run_worker("backbone_paired", "--mode", "full", "--steps", "2" if a.quick else "3",
                                              "--rounds", "2" if a.quick else "5"),
        "compile_paired": lambda: run_worker("compile_paired", "--mode", "full", "--steps", "2" if a.quick else "3",
                                             "--rounds", "2" if a.quick else "5"),
        # issue 22: peak RSS of the full configs' longest batch, one pass against passes of <= N tokens (a process
        # each: peak RSS is per process), and the speed of passes alternated with one pass on the same model
        **{f"passes_memory_{c}_{mt}": (lambda c=c, mt=mt: run_worker(
            "passes_memory", "--config", c, "--max-tokens", str(mt), "--steps", "1" if a.quick else "4"))
           for c in ("conll2003_full", "conll2003_full_gemma") for mt in (0, 2048, 1024)},
        "passes_paired": lambda: run_worker("passes_paired", "--config", "conll2003_full", "--max-tokens", "1024",
                                            "--steps", "2" if a.quick else "4", "--rounds", "2" if a.quick else "5"),
        "bf16_true_paired": lambda: run_worker("bf16_true_paired", "--mode", "full", "--steps",
                                               "2" if a.quick else "4", "--rounds", "2" if a.quick else "5"),
        "freeze_paired": lambda: run_worker("freeze_paired", "--mode", "full", "--freeze", "6", "--steps",
                                            "2" if a.quick else "4", "--rounds", "2" if a.quick else "5"),
        "train_padding": lambda: run_worker("train_padding"),
        "train_recipe": lambda: run_worker("train_recipe", "--mode", "full", "--steps", "1" if a.quick else "2",
                                           "--rounds", "2" if a.quick else "5"),
        "scaling": lambda: run_worker("scaling", a.llm_model, "--stream", "512" if a.quick else "2048",
                                      "--lengths", *(["512", "2048", "8192"] if a.quick else
                                                     ["512", "1024", "2048", "4096", "8192", "16384", "32768"])),
        "matmul_end": lambda: run_worker("matmul"),  # again: the VM's speed drifts over a 30-minute run
    }


def machine_facts(quick: bool) -> dict:
    """Where and when: the CPU, cores, torch and its threads, the date."""
    import platform

    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": quick,
               "date": time.strftime("%Y-%m-%d")}
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return machine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small inputs, no full-test F1")
    p.add_argument("--llm-model", default="runs/quickstart/model", help="saved llm-ner model (llm-ner quickstart)")
    p.add_argument("--encoder-model", default="runs/encoder_quickstart/model")
    p.add_argument("--lora-model", default="runs/ablation/row4/model", help="a LoRA model (scripts/ablation.py)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--only", default="", help="comma-separated subset of sections")
    a = p.parse_args()
    sections = section_table(a)
    only = [s for s in a.only.split(",") if s]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.json"
    results = json.loads(res_file.read_text()) if only and res_file.is_file() else {}
    machine = machine_facts(a.quick)
    if only and "machine" in results:  # a partial re-run: keep where and when every section was measured
        results.setdefault("reruns", []).append({**machine, "sections": only, "llm_model": a.llm_model})
    else:
        results["machine"], results["reruns"] = machine, []
    for name, fn in sections.items():
        if only and name not in only:
            continue
        results[name] = fn()
        res_file.write_text(json.dumps(results, indent=2) + "\n")  # partial results survive a crash
    from report import write_report  # benchmarks/report.py: tables + plot

    write_report(results, out)
    print(f"[bench] wrote {out}/results.md, results.json, scaling.png")


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("model", nargs="?")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--grid", default="32:sorted")
    p.add_argument("--f1", action="store_true")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--bf16", action="store_true", help="predict: backbone in bf16")
    p.add_argument("--base", default="fp32", help="paired: fp32 | bf16 | int8 | int8-torchao")
    p.add_argument("--other", default="int8", help="paired: int8 | bf16 | int8-torchao | auto, timed against --base")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--scheme", default=None, help="int8 activation scales: per_token (default) | per_tensor | torchao")
    p.add_argument("--split", default="test")
    p.add_argument("--keep-fp32", default=None,
                   help="comma-separated Linear name parts left fp32 under --int8 ('none': all int8; default: the "
                        "library default: none)")
    p.add_argument("--merge", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--ideal", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--mode", default="full")
    p.add_argument("--precision", default="fp32", help="train: fp32 | bf16 (autocast)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8, help="train: windows per step")
    p.add_argument("--config", default="conll2003_full", help="passes_*: the full-data config")
    p.add_argument("--backbones", default="smollm2-135m,gemma3-270m", help="backbone_paired: A,B")
    p.add_argument("--max-tokens", type=int, default=0, help="passes_*: tokens per pass (0: the whole batch)")
    p.add_argument("--freeze", type=int, default=6, help="freeze_paired: model.freeze_layers")
    p.add_argument("--stream", type=int, default=2048)
    p.add_argument("--lengths", type=int, nargs="*", default=[512, 2048])
    a = p.parse_args(argv)
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(json.dumps(WORKERS[a.name](a)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(sys.argv[2:])
    else:
        main()
