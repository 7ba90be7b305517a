"""README's first results table, rendered from the run records in docs/runs (scripts/keep_run.sh keeps them): test F1
(conlleval) and CleanCoNLL as mean ± sample sd over the seeds recorded, minutes of training as their mean. A row
whose runs predate the records carries its number typed, from the docs/results.md section named beside it, and says
so (†). tests/test_readme.py checks that README.md holds exactly this output, so a number changes with its records.

    python scripts/results_table.py            # prints the table
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "docs" / "runs"
SEEDS = (42, 1, 2)

# (system, training sentences, recipe, record-name pattern) — one row per recipe, in the order the README reads.
RECORDED = [
    ("**EmbeddingGemma-300M (encoder), exit after layer 12 of 24 → CRF** (`llm-ner quickstart`)", "2,000",
     "lr 2e-5, head 3e-3, 8 a step; exit chosen on dev", "qs_exit12_embeddinggemma-300m_{seed}"),
    ("EmbeddingGemma-300M (encoder), all 24 layers → CRF (issue 33's quickstart)", "2,000",
     "lr 2e-5, head 3e-3, 8 a step", "qs_embeddinggemma-300m_{seed}"),
    ("EmbeddingGemma-300M → linear (the encoder baseline)", "2,000", "the same",
     "qs_embeddinggemma-300m_linear_{seed}"),
    ("Gemma 3 270M (decoder, unmasked) → CRF (`--model gemma3-270m`)", "2,000", "lr 5e-5, head 3e-4, 8 a step",
     "qs_gemma3-270m_{seed}"),
    ("Gemma 3 270M adapted first (`llm-ner adapt`: MNTP, 100 steps, 13.7 min once) → CRF", "2,000",
     "its base's: lr 5e-5, head 3e-4, 8 a step", "qsa_gemma3-270m_{seed}"),
    ("EmbeddingGemma-300M adapted first (`llm-ner adapt`: masked-LM, 100 steps, 15.0 min once) → CRF", "2,000",
     "its base's: lr 2e-5, head 3e-3, 8 a step", "qsa_embeddinggemma-300m_{seed}"),
    ("Qwen2.5-Coder-0.5B-Instruct (decoder, unmasked) → CRF (`--model qwen2.5-0.5b`)", "2,000",
     "lr 5e-5, head 3e-3, 16 a step", "qs_qwen2.5-0.5b_{seed}"),
    ("**Gemma 3 270M → CRF, document context**", "14,041", "`--config conll2003_full_gemma_doc`",
     "gemma_doc_f6_{seed}"),
    ("Gemma 3 270M adapted first (the same adaptation) → CRF, document context", "14,041",
     "`--config conll2003_full_gemma_doc --model runs/adapted/gemma3-270m`", "gemma_doc_adapted_{seed}"),
    ("EmbeddingGemma-300M → CRF, document context", "14,041", "`--config conll2003_full_embeddinggemma_doc`",
     "conll2003_full_embeddinggemma_doc_{seed}"),
    ("Gemma 3 270M → CRF, sentence level", "14,041", "`--config conll2003_full_gemma`", "gemma_full_f6_{seed}"),
    ("EmbeddingGemma-300M → CRF, sentence level", "14,041", "`--config conll2003_full_embeddinggemma`",
     "conll2003_full_embeddinggemma_{seed}"),
]
# Measured before run records were kept (their run dirs are gone): (system, sentences, recipe, seeds, F1, minutes).
TYPED = [
    ("Gemma 3 270M, its earlier recipe", "2,000", "lr 2e-4, head 1e-3, 16 a step", "3", "80.70 ± 1.26",
     "1.5–2"),
    ("all-MiniLM-L6-v2 (uncased, 22.6M) → linear", "2,000", "8 a step, fp32", "4", "69.00 ± 1.13", "0.8"),
    ("prompted SmolLM2-135M-Instruct, 3-shot (`llm-ner compare`)", "—", "—", "1", "4.49 (50 sentences)",
     "—"),
]


def _f1(path: Path) -> float | None:
    return json.loads(path.read_text())["f1"] if path.is_file() else None


def _pm(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")


def row(system: str, sentences: str, recipe: str, pattern: str) -> str:
    dirs = [RUNS / pattern.format(seed=s) for s in SEEDS if (RUNS / pattern.format(seed=s)).is_dir()]
    if not dirs:
        raise SystemExit(f"no record for {pattern} in {RUNS}")
    test = [_f1(d / "test_metrics.json") for d in dirs]
    clean = [f for f in (_f1(d / "cleanconll_test_metrics.json") for d in dirs) if f is not None]
    minutes = statistics.mean(json.loads((d / "summary.json").read_text())["train_seconds"] for d in dirs) / 60
    bold = "**" if system.startswith("**") else ""
    return (f"| {system} | {sentences} | {recipe} | {' / '.join(d.name.rsplit('_', 1)[1] for d in dirs)} | "
            f"{bold}{_pm(test)}{bold} | {_pm(clean) if len(clean) == len(dirs) else 'not measured'} | "
            f"{minutes:.1f} |")


def table() -> str:
    lines = ["| system | training sentences | recipe (chosen on dev) | seeds | CoNLL-2003 test F1 | CleanCoNLL | "
             "train min |", "|---|---|---|---|---|---|---|"]
    lines += [row(*r) for r in RECORDED]
    lines += [f"| {s} † | {n} | {r} | {k} | {f1} | not measured | {m} |" for s, n, r, k, f1, m in TYPED]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
