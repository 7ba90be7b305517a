"""Report from finished run dirs: Markdown (report.md + PNG plots) and one self-contained HTML file (plots inlined).

Every number in the prose comes from the runs' files (summary.json, test_metrics.json, metrics.jsonl,
analysis/predictions, config); nothing is a placeholder. Plots: learning curves, per-type F1 per system, the type
confusion heat map, error-taxonomy bars, and displacy-style highlighted failure examples.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .. import rundir as R
from ..comparison.compare import system_row, table_markdown
from ..data import spans
from ..evaluation.analyze import analyze
from ..fsutil import atomic_write_text
from .plots import FIGURES, draw
from .sections import sections as section_list

# Published CoNLL-2003 test F1 (full training set): not run here, for scale. The one list: the report renders it and
# the README carries its rendering verbatim (tests/test_report.py checks). `llm-ner baseline encoder --model
# bert-base-cased` runs the first where the Hugging Face hub is reachable.
PUBLISHED = [
    ("bert-base-cased, fine-tuned (Hugging Face `run_ner` example)", "91.4",
     "transformers examples, as cited in issue 12"),
    ("RoBERTa-base + CRF (fine-tuned encoder, 125M), sentence level / with document context", "92.4–92.6 / ≈ 93.3",
     "syuoni/eznlp `docs/entity-recognition.md`; informal, GPU"),
    ("Gemma-2 2B decoder, unmasked / sequence repetition (k = 2)", "92.82 / 93.05",
     "Kukić et al. 2026; TakeLab/repetition-sl `results/conll2003/eval_stats_gemma-2-2B-{unmasked,repeat-k-2}_"
     "conll2003_test.json`, mean of 5 seeds, seqeval"),
    ("Qwen3-0.6B decoder, sequence repetition (k = 1 / 2 / 4)", "89.05 / 89.54 / 89.61",
     "same source, `eval_stats_qwen3-0.6B-repeat-k-{1,2,4}-early-exit-28_conll2003_test.json`, mean of 5 seeds"),
    ("Qwen3-0.6B / Qwen3-1.7B / Mistral-7B, causal mask removed", "89.7 / 90.3 / 93.7",
     "Kukić et al. 2026, arXiv 2601.17585, as cited in the issues (89.7 is not in the result files above)"),
    ("GPT-NER (prompted GPT-3 with retrieved demonstrations)", "90.9", "Wang et al. 2023, arXiv 2304.10428"),
]


def published_table() -> str:
    rows = "\n".join(f"| {name} | {f1} | {src} |" for name, f1, src in PUBLISHED)
    return "| published, not run here | CoNLL-2003 test F1 | source |\n|---|---|---|\n" + rows


COLORS = ["#7aecec", "#feca74", "#aa9cfc", "#bfe1d9", "#e4e7d2", "#c887fb", "#9cc9cc", "#ffeb80", "#ff8197"]


def _load(run_dir: Path) -> dict:
    run = R.load_run(run_dir)
    analysis = run.analysis
    if analysis is None and (run.dir / R.TEST_PREDICTIONS).is_file():
        analysis = analyze(*run.predictions())
    return {"dir": run.dir, "name": run.name, "kind": run.kind, "model": run.model_name, "metrics": run.metrics,
            "summary": run.summary or None, "prompt_stats": run.prompt_stats, "analysis": analysis,
            "config": run.model_config, "curve": run.curve, "run": run, "other_metrics": run.other_metrics,
            "calibration": run.calibration}


def _expand(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "comparison.json").is_file():
            out += [Path(r["run_dir"]) for r in json.loads((p / "comparison.json").read_text())["rows"]]
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# displacy-style examples


def _highlight(tokens: list[str], tags: list[str], color: dict[str, str]) -> str:
    parts, i = [], 0
    for t, a, b in spans(tags):
        parts += [html.escape(w) for w in tokens[i:a]]
        text = html.escape(" ".join(tokens[a : b + 1]))
        parts.append(f'<mark style="background:{color.get(t, "#ddd")};padding:0.1em 0.35em;border-radius:0.3em">'
                     f'{text} <b style="font-size:0.7em">{html.escape(t)}</b></mark>')
        i = b + 1
    parts += [html.escape(w) for w in tokens[i:]]
    return " ".join(parts)


def _examples_html(run: dict, types: list[str], n: int = 6) -> str:
    color = {t: COLORS[i % len(COLORS)] for i, t in enumerate(types)}
    rows = []
    for w in run["analysis"]["worst_sentences"][:n]:
        rows.append(f"<div style='margin:0.6em 0'><div><small>{html.escape(str(w['origin']))} — {w['errors']} "
                    f"errors</small></div><div>gold: {_highlight(w['tokens'], w['gold'], color)}</div>"
                    f"<div>pred: {_highlight(w['tokens'], w['pred'], color)}</div></div>")
    return "\n".join(rows)


def write_report(paths: list[str], output: str | Path, study_path: str | None = None, curve_path: str | None = None,
                 al_path: str | None = None, speed_path: str | None = None) -> tuple[Path, Path]:
    """Extra results (each a results.json): `study_path` scripts/study.py's, `curve_path` `llm-ner learning-curve`'s,
    `al_path` scripts/simulate_al.py's, `speed_path` benchmarks/runtimes.py's."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    runs = [_load(p) for p in _expand(paths)]
    extras = {k: json.loads(Path(p).read_text()) for k, p in (("study", study_path), ("curve", curve_path),
                                                              ("al", al_path), ("speed", speed_path)) if p}
    files = draw(runs, out, extras)
    sections = section_list(runs, extras)
    subset = runs[[r["kind"] for r in runs].index("prompt")]["metrics"]["sentences"] if any(
        r["kind"] == "prompt" for r in runs) else None
    table = table_markdown([system_row(r["run"], subset, r["name"]) for r in runs])
    types = sorted({t for r in runs for t in r["metrics"]["per_type"]})

    md = ["# llm-ner report", "", f"Runs: {', '.join(str(r['dir']) for r in runs)}", "", "## Comparison", "",
          table, "", "Published references (full CoNLL-2003 training set; **not run here**, for scale):", "",
          published_table(), ""]
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
        shown = [f"![{k}]({p.name})" for k, p in files.items() if FIGURES[k][1] == title]
        md += shown + [""] if shown else []
    md_path = out / "report.md"
    atomic_write_text(md_path, "\n".join(md))

    def img(k):
        return (f'<img src="data:image/png;base64,{base64.b64encode(files[k].read_bytes()).decode()}" '
                f'style="max-width:100%">' if k in files else "")

    def para(text: str) -> str:
        import re

        t = html.escape(text)
        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
        if t.lstrip().startswith("|"):
            return _md_table_html(text)
        return "".join(f"<p>{line}</p>" for line in t.split("\n") if line.strip())

    body = [f"<h1>llm-ner report</h1><h2>Comparison</h2>{_md_table_html(table)}<p>Published references (full "
            f"CoNLL-2003 training set; <b>not run here</b>, for scale):</p>{_md_table_html(published_table())}"]
    for title, text in sections:
        if "\n\n|" in text:
            pre, tab = text.split("\n\n", 1)
            body.append(f"<h2>{html.escape(title)}</h2>{para(pre)}{_md_table_html(tab)}")
        else:
            body.append(f"<h2>{html.escape(title)}</h2>{para(text)}")
        body.append("".join(img(k) for k in files if FIGURES[k][1] == title))
        if title == "Failure cases":
            body.append(f"<h3>Worst sentences ({html.escape(runs[0]['name'])})</h3>" + _examples_html(runs[0], types))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>llm-ner report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
            "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:0.25em 0.5em}"
            "code{background:#f3f3f3}</style></head><body>" + "\n".join(body) + "</body></html>")
    html_path = out / "report.html"
    atomic_write_text(html_path, page)
    return md_path, html_path


def _md_table_html(md: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in md.strip().splitlines() if r.strip().startswith("|")]
    rows = [r for r in rows if not all(set(c.strip()) <= set("-") for c in r)]
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"
