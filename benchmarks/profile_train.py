"""Where a training step's time goes (issue 22 item 1: "profile before changing"): the quickstart's recipe (Gemma 3
270M, bf16 autocast with fp32 master weights, eager attention, frozen input embeddings, 16 windows a step) on real
CoNLL-2003 batches; torch.profiler's operators by self CPU time over `--steps` steps, then the wall-clock split of
as many more steps into forward, backward and optimizer.

    python benchmarks/profile_train.py --steps 6
    python benchmarks/profile_train.py --steps 6 --precision bf16-true   # bench.bf16_true: bf16 weights, no autocast
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from bench import _quickstart_recipe, _train_setup, bf16_true  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rows", type=int, default=15, help="operators listed")
    p.add_argument("--precision", default="bf16", choices=["bf16", "bf16-true"],
                   help="bf16: the recipe's autocast; bf16-true: bench.bf16_true (bf16 weights, Kahan AdamW)")
    a = p.parse_args()
    run = argparse.Namespace(mode="full", batch=16, steps=a.steps, rounds=3, precision=a.precision)
    q, over, b = _quickstart_recipe(run)
    model, opt, batches = _train_setup(b, "quickstart", {**over, "model.backbone": q.model.backbone})
    if a.precision == "bf16-true":
        opt = bf16_true(model, opt)

    def step(batch) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    step(batches[0])  # allocations, AdamW state
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[1 : a.steps + 1]:
            step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows, max_name_column_width=36))
    f, bw, o = (sum(x) for x in zip(*(step(bt) for bt in batches[a.steps + 1 : 2 * a.steps + 1]), strict=True))
    total = f + bw + o
    print(f"{a.steps} steps: forward {f:.2f} s ({f / total:.0%}), backward {bw:.2f} s ({bw / total:.0%}), "
          f"optimizer {o:.2f} s ({o / total:.0%})")


if __name__ == "__main__":
    main()
