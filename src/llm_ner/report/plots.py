"""The report's figures: one function a figure, each (runs or study, output dir) -> the PNG it wrote, or None when the
runs hold nothing to draw. `FIGURES` lists them in the order the report shows them."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from .sections import by_recipe

CATS = ["correct", "wrong_type", "boundary_short", "boundary_long", "boundary_shift", "type_and_boundary", "missed",
        "spurious"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, bottom: float = 0.0) -> Path:
    fig.tight_layout(rect=(0, bottom, 1, 1))  # `bottom`: the figure's share left free for a legend below
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def systems(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """The runs as systems: the seeds of one recipe together (sections.by_recipe), named by their first run without
    its seed, then each run without a config alone. A figure draws a system once, not once per seed."""
    out = []
    for rs in by_recipe(runs):
        name = rs[0]["name"]
        if len(rs) > 1:
            seed = f"_{(rs[0]['run'].config.get('training') or {}).get('seed')}"
            name = f"{name.removesuffix(seed)} ({len(rs)} seeds)"
        out.append((name, rs))
    return out + [(r["name"], [r]) for r in runs if not r["run"].config]


def _legend(ax, n: int) -> None:
    """Below the axes, where it hides no data however many systems there are."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2 if n > 3 else 1, fontsize=8)


def curves(runs: list[dict], out: Path) -> Path | None:
    """Training loss and dev F1 per step, every trained run; the seeds of a system in one colour."""
    groups = [(name, [r for r in rs if r["curve"]]) for name, rs in systems(runs)]
    groups = [(name, rs) for name, rs in groups if rs]
    if not groups:
        return None
    rows = -(-len(groups) // 3)  # the legend's rows, 3 systems a row, below both plots
    height = 3.8 + 0.25 * rows
    fig, (a1, a2) = _plt().subplots(1, 2, figsize=(11, height))
    for k, (name, rs) in enumerate(groups):
        color = f"C{k % 10}"
        for j, r in enumerate(rs):
            tl = [(c["step"], c["loss"]) for c in r["curve"] if "loss" in c]
            ev = [(c["step"], c["eval_f1"]) for c in r["curve"] if "eval_f1" in c]
            label = name if j == 0 else None
            if tl:
                a1.plot(*zip(*tl, strict=True), label=label, lw=0.8, alpha=0.7, color=color)
            if ev:
                a2.plot(*zip(*ev, strict=True), marker="o", ms=3, label=label, color=color)
    a1.set(title="training loss", xlabel="step", yscale="log")
    a2.set(title="dev entity F1", xlabel="step", ylabel="F1")
    handles = {label: h for ax in (a1, a2) for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(3, len(groups)), fontsize=8)
    return _save(fig, out / "curves.png", bottom=(0.25 * rows + 0.1) / height)


def _grouped_bars(ax, groups: list[tuple[str, list[dict]]], keys: list[str],
                  value: Callable[[dict, str], float]) -> None:
    """A bar per system (`systems`) and key: the mean over the system's seeds, their sd as an error bar."""
    w = 0.8 / max(1, len(groups))
    for k, (name, rs) in enumerate(groups):
        vals = [[value(r, c) for r in rs] for c in keys]
        ax.bar([i + k * w for i in range(len(keys))], [statistics.mean(v) for v in vals], w, label=name,
               yerr=[statistics.stdev(v) for v in vals] if len(rs) > 1 else None, capsize=2)
    ax.set_xticks([i + w * (len(groups) - 1) / 2 for i in range(len(keys))], keys)
    _legend(ax, len(groups))


def per_type(runs: list[dict], out: Path) -> Path:
    """Test F1 per entity type, a bar per system (mean over its seeds)."""
    types = sorted({t for r in runs for t in r["metrics"]["per_type"]})
    groups = systems(runs)
    fig, ax = _plt().subplots(figsize=(max(6, 1.6 * len(types)), 3.8 + 0.2 * len(groups)))
    _grouped_bars(ax, groups, types, lambda r, t: r["metrics"]["per_type"].get(t, {}).get("f1", 0))
    ax.set(title="test F1 per entity type", ylabel="F1", ylim=(0, 100))
    return _save(fig, out / "per_type_f1.png")


def confusion(runs: list[dict], out: Path) -> Path:
    """Gold type x predicted type of the first run's entities (O: none)."""
    main = runs[0]
    conf = main["analysis"]["confusion"]
    labels = sorted(({g for g in conf} | {p for c in conf.values() for p in c}) - {"O"}) + ["O"]
    mat = [[conf.get(g, {}).get(p, 0) for p in labels] for g in labels]
    fig, ax = _plt().subplots(figsize=(5.5, 4.6))
    im = ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="gold", title=f"entity type confusion ({main['name']})")
    vmax = max(max(row) for row in mat) or 1
    for i, row in enumerate(mat):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > vmax / 2 else "black")
    fig.colorbar(im)
    return _save(fig, out / "confusion.png")


def errors(runs: list[dict], out: Path) -> Path:
    """Errors by category (analyze.py's taxonomy), a bar per system (mean over its seeds)."""
    groups = systems(runs)
    fig, ax = _plt().subplots(figsize=(10, 3.8 + 0.2 * len(groups)))
    _grouped_bars(ax, groups, CATS[1:], lambda r, c: r["analysis"]["taxonomy_total"].get(c, 0))
    ax.tick_params(axis="x", rotation=20)
    ax.set(title="errors by category (test set)", ylabel="entities")
    return _save(fig, out / "errors.png")


def calibration(runs: list[dict], out: Path) -> Path | None:
    """Reliability diagram (as trained and calibrated) and precision/recall by score threshold, first scored run."""
    r = next((r for r in runs if r["metrics"].get("calibration", {}).get("bins")), None)
    if r is None:
        return None
    fig, (a1, a2) = _plt().subplots(1, 2, figsize=(11, 4))
    a1.plot([0, 1], [0, 1], "k:", lw=1, label="perfectly calibrated")
    for key in ("calibration_uncalibrated", "calibration"):
        c = r["metrics"].get(key)
        if c:
            label = "as trained (T = 1)" if key == "calibration_uncalibrated" else f"T = {c['temperature']:.2f}"
            a1.plot([b["mean_score"] for b in c["bins"]], [b["accuracy"] for b in c["bins"]], marker="o",
                    label=f"{label}: ECE {c['ece']:.3f}")
    a1.set(title=f"reliability of entity scores ({r['name']})", xlabel="mean score in bin",
           ylabel="share of entities right", xlim=(0, 1), ylim=(0, 1))
    a1.legend(fontsize=8)
    th = r["metrics"]["calibration"]["thresholds"]
    a2.plot([t["threshold"] for t in th], [t["precision"] for t in th], marker="o", label="precision")
    a2.plot([t["threshold"] for t in th], [t["recall"] for t in th], marker="s", label="recall")
    a2.set(title="entities kept at score >= threshold", xlabel="threshold", ylabel="%")
    a2.legend(fontsize=8)
    return _save(fig, out / "calibration.png")


def study(study: dict, out: Path) -> Path:
    """The decoder study's rows: test F1 (mean ± sd over seeds), dev F1, training time and prediction speed."""
    rows = study["rows"]
    fig, ax = _plt().subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    ax.barh([r["name"] for r in rows], [r["test_f1"] for r in rows], color="#6a9fd8",
            xerr=[r["test_f1_sd"] or 0 for r in rows], label="test F1 (mean ± sd over seeds)")
    ax.plot([r["dev_f1"] for r in rows], list(range(len(rows))), "k|", markersize=14, label="dev F1")
    lo = min(min(r["test_f1"] for r in rows), min(r["dev_f1"] for r in rows))
    for i, r in enumerate(rows):
        ax.text(max(r["test_f1"], r["dev_f1"]) + 0.4, i,
                f"{r['test_f1']:.1f}  ({r['train_seconds']:.0f} s, {r['predict_words_per_s']:.0f} w/s)",
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="F1", title="decoder study (quickstart budget)", xlim=(max(0, lo - 10), 100))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
    return _save(fig, out / "study.png")


def learning_curve(curve: dict, out: Path) -> Path:
    """Test F1 (mean ± sd over seeds) against training sentences, a line per system (active/curve.py)."""
    from ..active.curve import trained

    fig, ax = _plt().subplots(figsize=(7, 4))
    named = {system: f"{system}: {t['backbone']}" for system, t in trained(curve).items()}
    for system in sorted({r["system"] for r in curve["summary"]}):
        pts = [r for r in curve["summary"] if r["system"] == system and r["test_f1"] is not None]
        ax.errorbar([r["sentences"] for r in pts], [r["test_f1"] for r in pts], marker="o", capsize=3,
                    yerr=[r["test_f1_sd"] or 0 for r in pts], label=named.get(system, system))
    ax.set(xscale="log", xlabel="training sentences", ylabel="test F1", title="how much labelled data")
    # the measured sizes as the ticks ("250", "1,000"): matplotlib's log minor labels overlap ("3×10², 4×10²")
    sizes = sorted({r["sentences"] for r in curve["summary"] if r["sentences"]})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.legend()
    return _save(fig, out / "learning_curve.png")


def active_learning(al: dict, out: Path) -> Path:
    """Test F1 (mean ± sd over seeds) after each round of the active-learning simulation, a line per strategy; against
    labelled sentences, and against their tokens (what an annotator reads: the strategies pick sentences of different
    lengths; Shen et al. 2018 plot against words)."""
    from .sections import al_points

    fig, axes = _plt().subplots(1, 2, figsize=(11, 4), sharey=True)
    for strategy, pts in al_points(al).items():
        for ax, key in zip(axes, ("labelled", "tokens"), strict=True):
            shown = [p for p in pts if p[key] is not None]
            if shown:
                ax.errorbar([p[key] for p in shown], [p["test_f1"] for p in shown],
                            yerr=[p["test_sd"] for p in shown], marker="o", capsize=3, label=strategy)
    axes[0].set(xlabel="labelled sentences", ylabel="test F1")
    axes[1].set(xlabel="their tokens (mean over seeds)")
    fig.suptitle("active learning (simulated on CoNLL-2003)")
    axes[0].legend()
    return _save(fig, out / "active_learning.png")


# figure -> (the function that draws it, the section it is shown under, what it draws: the runs, or an extra result
# file given to `llm-ner report`)
FIGURES: dict[str, tuple[Callable, str, str]] = {
    "curves": (curves, "Results", "runs"), "per_type": (per_type, "Results", "runs"),
    "confusion": (confusion, "Failure cases", "runs"), "errors": (errors, "Failure cases", "runs"),
    "calibration": (calibration, "Confidence", "runs"), "study": (study, "Decoder study", "study"),
    "learning_curve": (learning_curve, "How much labelled data", "curve"),
    "active_learning": (active_learning, "Active learning", "al"),
}


def draw(runs: list[dict], out: Path, extras: dict[str, dict]) -> dict[str, Path]:
    """Every figure there is data for: name -> PNG."""
    files = {}
    for name, (fn, _, source) in FIGURES.items():
        data = runs if source == "runs" else extras.get(source)
        if data and (path := fn(data, out)) is not None:
            files[name] = path
    return files
