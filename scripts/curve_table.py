"""A learning-curve table over several curves' results (`llm-ner learning-curve` results.json files, kept in
docs/runs): a column per system (test F1, mean ± sample sd over seeds, and the seeds' mean minutes of training), a row
per training-set size, and the difference of two columns paired by seed (mean ± sd, range).

    python scripts/curve_table.py "NAME=RESULTS.json:SYSTEM" ... [--paired "NAME A" "NAME B"] [--merged OUT.json]

--merged writes the chosen points as one results.json, each under its NAME as its system, for `llm-ner report
--curve` (which reads "llm" and "encoder" as the two sides it compares, and plots and tabulates every system).

e.g. issue 44's table in README.md / docs/results.md:
    python scripts/curve_table.py "decoder (Gemma 3 270M, unmasked)=docs/runs/curve_eg.results.json:llm" \
        "decoder adapted=docs/runs/curve_adapted.results.json:llm" \
        "encoder (EmbeddingGemma-300M)=docs/runs/curve_eg.results.json:encoder" \
        --paired "decoder adapted" "encoder (EmbeddingGemma-300M)"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def merged(specs: list[str], out: Path) -> None:
    from llm_ner.active.curve import summarise

    rows = [{**r, "system": name} for spec in specs for name, by_size in [points(spec)]
            for by_seed in by_size.values() for r in by_seed.values()]
    out.write_text(json.dumps({"config": "quickstart", "rows": rows, "summary": summarise(rows)}, indent=2) + "\n")


def points(spec: str) -> tuple[str, dict[int, dict[int, dict]]]:
    """NAME=FILE:SYSTEM -> (NAME, {sentences: {seed: row}})."""
    name, rest = spec.split("=", 1)
    path, system = rest.rsplit(":", 1)
    out: dict[int, dict[int, dict]] = {}
    for r in json.loads(Path(path).read_text())["rows"]:
        if r["system"] == system and r.get("test_f1") is not None:
            out.setdefault(r["sentences"], {})[r["seed"]] = r
    return name, out


def cell(rows: dict[int, dict]) -> str:
    f1 = [r["test_f1"] for r in rows.values()]
    minutes = statistics.mean(r["train_seconds"] for r in rows.values()) / 60
    sd = f" ± {statistics.stdev(f1):.2f}" if len(f1) > 1 else ""
    return f"{statistics.mean(f1):.2f}{sd} ({len(f1)}; {minutes:.1f} min)"


def paired(a: dict[int, dict], b: dict[int, dict]) -> str:
    d = [a[s]["test_f1"] - b[s]["test_f1"] for s in sorted(a) if s in b]
    if not d:
        return "—"
    if len(d) == 1:
        return f"{d[0]:+.2f}"
    return f"{statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} ({min(d):+.2f} to {max(d):+.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("curves", nargs="+")
    ap.add_argument("--paired", nargs=2, metavar=("A", "B"))
    ap.add_argument("--merged", type=Path)
    a = ap.parse_args()
    if a.merged:
        merged(a.curves, a.merged)
    cols = dict(points(s) for s in a.curves)
    sizes = sorted({n for c in cols.values() for n in c})
    head = ["training sentences", *[f"{n}: test F1 (seeds; train min)" for n in cols]]
    if a.paired:
        head.append(f"{a.paired[0]} − {a.paired[1]}, paired by seed")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for n in sizes:
        row = [f"{n:,}", *[cell(c[n]) if n in c else "—" for c in cols.values()]]
        if a.paired:
            row.append(paired(cols[a.paired[0]].get(n, {}), cols[a.paired[1]].get(n, {})))
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
