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

from . import rundir as R
from .analyze import analyze
from .compare import system_row, table_markdown
from .data import spans
from .fsutil import atomic_write_text

# Published CoNLL-2003 test F1 (full training set) for the comparison: not run here. `llm-ner baseline encoder
# --model bert-base-cased` runs the first where the Hugging Face hub is reachable.
PUBLISHED = [
    ("bert-base-cased, fine-tuned (Hugging Face run_ner example)", 91.4, "transformers examples, as cited in issue 12"),
    ("RoBERTa-base + CRF", 92.4, "as cited in issue 12; source not re-checked here"),
    ("Qwen3-0.6B, causal mask removed", 89.7, "Kukić et al. 2026, arXiv 2601.17585"),
    ("Qwen3-1.7B, causal mask removed", 90.3, "Kukić et al. 2026, arXiv 2601.17585"),
    ("Mistral-7B, causal mask removed", 93.7, "Kukić et al. 2026, arXiv 2601.17585"),
    ("GPT-NER (prompted GPT-3 with retrieved demonstrations)", 90.9, "Wang et al. 2023, arXiv 2304.10428"),
]


def published_table() -> str:
    rows = "\n".join(f"| {name} | {f1:.1f} | {src} |" for name, f1, src in PUBLISHED)
    return ("| published, not run here | CoNLL-2003 test F1 | source |\n|---|---|---|\n" + rows)


CATS = ["correct", "wrong_type", "boundary_short", "boundary_long", "boundary_shift", "type_and_boundary", "missed",
        "spurious"]
COLORS = ["#7aecec", "#feca74", "#aa9cfc", "#bfe1d9", "#e4e7d2", "#c887fb", "#9cc9cc", "#ffeb80", "#ff8197"]


def _load(run_dir: Path) -> dict:
    run = R.load_run(run_dir)
    analysis = run.analysis
    if analysis is None and (run.dir / R.TEST_PREDICTIONS).is_file():
        analysis = analyze(*run.predictions())
    return {"dir": run.dir, "name": run.name, "kind": run.kind, "model": run.model_name, "metrics": run.metrics,
            "summary": run.summary or None, "prompt_stats": run.prompt_stats, "analysis": analysis,
            "config": run.model_config, "curve": run.curve, "run": run}


def _expand(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "comparison.json").is_file():
            out += [Path(r["run_dir"]) for r in json.loads((p / "comparison.json").read_text())["rows"]]
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# plots


def _plots(runs: list[dict], out: Path, study: dict | None) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, Path] = {}

    trained = [r for r in runs if r["curve"]]
    if trained:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
        for r in trained:
            tl = [(c["step"], c["loss"]) for c in r["curve"] if "loss" in c]
            ev = [(c["step"], c["eval_f1"]) for c in r["curve"] if "eval_f1" in c]
            if tl:
                a1.plot(*zip(*tl, strict=True), label=r["name"], lw=1)
            if ev:
                a2.plot(*zip(*ev, strict=True), marker="o", label=r["name"])
        a1.set(title="training loss", xlabel="step", yscale="log")
        a2.set(title="dev entity F1", xlabel="step", ylabel="F1")
        a1.legend()
        a2.legend()
        fig.tight_layout()
        files["curves"] = out / "curves.png"
        fig.savefig(files["curves"], dpi=110)
        plt.close(fig)

    types = sorted({t for r in runs for t in r["metrics"]["per_type"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(types)), 3.8))
    w = 0.8 / max(1, len(runs))
    for k, r in enumerate(runs):
        f1s = [r["metrics"]["per_type"].get(t, {}).get("f1", 0) for t in types]
        ax.bar([i + k * w for i in range(len(types))], f1s, w, label=r["name"])
    ax.set_xticks([i + w * (len(runs) - 1) / 2 for i in range(len(types))], types)
    ax.set(title="test F1 per entity type", ylabel="F1", ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    files["per_type"] = out / "per_type_f1.png"
    fig.savefig(files["per_type"], dpi=110)
    plt.close(fig)

    main = runs[0]
    conf = main["analysis"]["confusion"]
    labels = sorted(({g for g in conf} | {p for c in conf.values() for p in c}) - {"O"}) + ["O"]
    mat = [[conf.get(g, {}).get(p, 0) for p in labels] for g in labels]
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="gold", title=f"entity type confusion ({main['name']})")
    vmax = max(max(row) for row in mat) or 1
    for i, row in enumerate(mat):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > vmax / 2 else "black")
    fig.colorbar(im)
    fig.tight_layout()
    files["confusion"] = out / "confusion.png"
    fig.savefig(files["confusion"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.8))
    cats = CATS[1:]
    for k, r in enumerate(runs):
        tot = r["analysis"]["taxonomy_total"]
        ax.bar([i + k * w for i in range(len(cats))], [tot.get(c, 0) for c in cats], w, label=r["name"])
    ax.set_xticks([i + w * (len(runs) - 1) / 2 for i in range(len(cats))], cats, rotation=20)
    ax.set(title="errors by category (test set)", ylabel="entities")
    ax.legend()
    fig.tight_layout()
    files["errors"] = out / "errors.png"
    fig.savefig(files["errors"], dpi=110)
    plt.close(fig)

    cal_runs = [r for r in runs if r["metrics"].get("calibration", {}).get("bins")]
    if cal_runs:  # reliability diagram + precision/recall by score threshold, for the first scored run
        r = cal_runs[0]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
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
        fig.tight_layout()
        files["calibration"] = out / "calibration.png"
        fig.savefig(files["calibration"], dpi=110)
        plt.close(fig)

    if study:
        rows = study["rows"]
        fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
        y = range(len(rows))
        ax.barh([r["name"] for r in rows], [r["test_f1"] for r in rows], color="#6a9fd8",
                xerr=[r["test_f1_sd"] or 0 for r in rows], label="test F1 (mean ± sd over seeds)")
        ax.plot([r["dev_f1"] for r in rows], list(y), "k|", markersize=14, label="dev F1")
        lo = min(min(r["test_f1"] for r in rows), min(r["dev_f1"] for r in rows))
        for i, r in enumerate(rows):
            ax.text(max(r["test_f1"], r["dev_f1"]) + 0.4, i,
                    f"{r['test_f1']:.1f}  ({r['train_seconds']:.0f} s, {r['predict_words_per_s']:.0f} w/s)",
                    va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="F1", title="decoder study (quickstart budget)", xlim=(max(0, lo - 10), 100))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
        fig.tight_layout()
        files["study"] = out / "study.png"
        fig.savefig(files["study"], dpi=110)
        plt.close(fig)
    return files


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


# ---------------------------------------------------------------------------------------------------------------------
# prose


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _sections(runs: list[dict], study: dict | None) -> list[tuple[str, str]]:
    llm = next((r for r in runs if r["kind"] == "llm"), runs[0])
    s = llm["summary"] or {}
    cfg = llm["config"] or {}
    mcfg, loss = cfg.get("model", {}), cfg.get("loss", {})
    data = s.get("data", {})
    tr, te = data.get("train", {}), data.get("test", {})
    lab = [t for t in (s.get("labels") or []) if t != "O"]
    types = sorted({t[2:] for t in lab})
    enc = next((r for r in runs if r["kind"] == "encoder"), None)
    pr = next((r for r in runs if r["kind"] == "prompt"), None)
    out: list[tuple[str, str]] = []

    out.append(("Dataset and why", (
        f"Training used {tr.get('sentences', 'n/a'):,} sentences ({tr.get('tokens', 0):,} tokens, "
        f"{tr.get('entities', 0):,} entities) and the test set has {te.get('sentences', 0):,} sentences with "
        f"{te.get('entities', 0):,} entities of {len(types)} types ({', '.join(types)}). CoNLL-2003 is the standard "
        "English NER benchmark, so numbers can be set against published ones (bert-base-cased ≈ 91–92 test F1 with "
        "the full training set); it ships with this package, so the run needs no network. The training subset keeps "
        "a CPU run short; the test set is scored in full.")))

    n_layers = len(mcfg.get("unmask", [])) if isinstance(mcfg.get("unmask"), list) else mcfg.get("unmask")
    params = s.get("parameters", {})
    out.append(("Model and why", (
        f"Backbone `{llm['model']}` ({params.get('total', 0) / 1e6:.1f}M parameters, "
        f"{params.get('trainable', 0) / 1e6:.2f}M trained in `{cfg.get('mode')}` mode). "
        + _backbone_why(str(llm["model"])))))

    out.append(("How the LLM was transformed", (
        f"1. **Bidirectional attention** (unmask = `{n_layers}`): transformers builds a causal mask once and passes it "
        "to every decoder layer as a keyword argument; a forward pre-hook on each chosen layer swaps it for a 4-D "
        "additive mask that hides only padding. A test proves it: with unmasking on, changing a later token changes "
        "an earlier token's hidden state; with it off, it does not (sdpa and eager). One pitfall: passing no mask "
        "makes sdpa fall back to `is_causal=True`, so an all-zero mask is passed instead.\n"
        f"2. **Head**: dropout {mcfg.get('head_dropout')} + a linear layer over the final hidden state, on the first "
        "sub-token of each word.\n"
        f"3. **CRF**: {'on' if mcfg.get('crf') else 'off'} — transitions that IOB2 forbids (O→I-X, B-X→I-Y) are "
        "fixed at −10,000 in training and Viterbi decoding, so predictions are always well-formed spans.\n"
        f"4. **Loss**: {loss.get('ce_weight')} × cross-entropy (label smoothing {loss.get('label_smoothing')}) + "
        f"{loss.get('crf_weight')} × CRF negative log-likelihood per word.\n"
        "5. **Challenges met**: SmolLM2's tokenizer drops the leading-space marker with `is_split_into_words=True`, so "
        "words are tokenised as running text with offsets; texts longer than the window are split into overlapping "
        "windows at word boundaries and each word takes its prediction from the window where it is most central; "
        "PyTorch's default AdamW step dominated full fine-tuning on CPU (0.6 s/step), the fused one takes 0.08 s.")))

    out.append(("How training differs from language-model training", (
        "Objective: per-word classification into IOB2 tags (and a sequence-level CRF likelihood) instead of "
        "next-token prediction. Labels: human annotations on the first sub-token of each word; other sub-tokens carry "
        "no loss. Attention: every token sees the whole sentence (bidirectional), where a language model may only "
        f"look back. Data: {tr.get('sentences', 0):,} labelled sentences instead of trillions of raw tokens; a fresh "
        "head gets a 10× higher learning rate than the pre-trained backbone. Decoding: a single forward pass and "
        "Viterbi, no sampling and no generation loop.")))

    res = [f"- **{r['name']}** ({r['kind']}): test F1 {_pct(r['metrics']['f1'])} (P {_pct(r['metrics']['precision'])}, "
           f"R {_pct(r['metrics']['recall'])}, macro F1 {_pct(r['metrics']['macro_f1'])}; strict IOB2 F1 "
           f"{_pct(r['metrics'].get('strict', {}).get('f1'))}) on {r['metrics']['sentences']:,} sentences"
           for r in runs]
    if enc:
        d = llm["metrics"]["f1"] - enc["metrics"]["f1"]
        res.append(f"- The LLM model is {abs(d):.1f} F1 points {'above' if d >= 0 else 'below'} the encoder baseline "
                   "on the same split and scorer.")
    if pr:
        c = pr["prompt_stats"]["counts"]
        res.append(f"- The prompted baseline ({pr['model']}, {pr['prompt_stats']['k_shot']}-shot) "
                   f"made {c.get('requests', 0)} requests: {c.get('malformed', 0)} malformed answers, "
                   f"{c.get('hallucinated', 0)} entities not in the sentence, {c.get('unknown_type', 0)} with an "
                   f"unknown type, {c.get('refusal', 0)} refusals; latency p50 "
                   f"{pr['prompt_stats'].get('latency_p50')} s.")
    out.append(("Results", "\n".join(res)))
    cal = llm["metrics"].get("calibration")
    if cal:
        th = {t["threshold"]: t for t in cal["thresholds"]}
        txt = [f"Every entity's score is the model's probability of exactly that entity (CRF forward-backward), "
               f"divided by a temperature fitted on dev after training (T = {cal.get('temperature', 1.0):.2f}; the "
               f"tags, and so F1, do not change). Expected calibration error of the test entities' scores (10 bins): "
               f"**{cal['ece']:.3f}**"]
        unc = llm["metrics"].get("calibration_uncalibrated")
        if unc:
            txt[-1] += f" (as trained, T = 1: {unc['ece']:.3f})"
        kept = "; ".join(f"≥ {k}: precision {th[k]['precision']:.1f}, recall {th[k]['recall']:.1f}"
                         for k in (0.5, 0.9, 0.95) if k in th)
        txt[-1] += (f". Entities kept above a score threshold: {kept}. `llm-ner calibrate --target-precision 0.95` "
                    "saves per-type thresholds that `predict`, `serve` and the spaCy component apply (the rest is "
                    "returned as needs-review when asked).")
        out.append(("Confidence", "\n".join(txt)))

    a = llm["analysis"]
    tot = a["taxonomy_total"]
    errs = sorted(((k, v) for k, v in tot.items() if k != "correct"), key=lambda kv: -kv[1])
    forms = "; ".join(f"“{f['text']}” {f['gold']}→{f['pred']} ×{f['count']}" for f in a["confused_forms"][:6])
    su = a.get("seen_unseen") or {}
    fail = [f"Largest error categories for {llm['name']}: " + ", ".join(f"{k} {v}" for k, v in errs[:4]) + ".",
            f"Most frequent confusions: {forms}."]
    if su:
        fail.append(f"Entities seen in training (same surface form and type): F1 {su.get('seen', {}).get('f1')}; "
                    f"unseen: F1 {su.get('unseen', {}).get('f1')} — most of the gap to the reference comes from "
                    "names the small training subset never showed.")
    bl = a.get("by_entity_length", {})
    if bl:
        fail.append("F1 by entity length (tokens): " + ", ".join(f"{k}: {v['f1']}" for k, v in bl.items()) + ".")
    out.append(("Failure cases", "\n\n".join(fail)))

    lim = [
        f"- Trained on {tr.get('sentences', 0):,} sentences on a CPU; the full training set and a GPU would close "
        "much of the gap to published numbers.",
        *_fact_limits(str(llm["model"]), cfg),
        "- Larger decoders (Qwen2.5-0.5B/1.5B, Llama-3.2-1B) with LoRA and a GPU, layer-mixing heads, and a dev-set "
        "learning-rate sweep per model are the improvements to try first.",
    ]
    if pr:
        lim.append("- The prompted baseline here is a 135M local model; hosted models (OpenAI/Anthropic) use the same "
                   "code path with a key and network and will do far better.")
    out.append(("Limitations and improvements", "\n".join(lim)))
    if study:
        out.append(("Decoder study", study_text(study)))
    return out


def _backbone_why(name: str) -> str:
    """Why a bundled backbone was chosen: the backbone table's own text (backbones.ALIASES), said once."""
    from .backbones import ALIASES

    m = ALIASES.get(name)
    if m is None or not m.why:
        return "A decoder the user chose; the transformation does not depend on it."
    return m.why + (f" Its weights went through {m.quantisation} quantisation in the GGUF they ship in, which costs "
                    "some quality." if m.quantisation else "")


def _fact_limits(backbone: str, cfg: dict) -> list[str]:
    """The limitations that depend on the run: what its backbone's weights went through, and whether it saw document
    context — from the backbone table and the run's saved config, so the prose cannot go stale."""
    from .backbones import ALIASES

    out = []
    q = ALIASES[backbone].quantisation if backbone in ALIASES else None
    if q:
        out.append(f"- The backbone's weights went through {q} quantisation in the GGUF they ship in, before we "
                   "de-quantised them: some quality is lost against the original weights.")
    if cfg.get("context") == "document":
        out.append("- Document context is used: each window holds a sentence's neighbours from its document, which "
                   "helps with the wrong-type errors (sports teams named after cities: ORG vs LOC) that single "
                   "sentences cannot settle.")
    else:
        out.append("- Wrong entity type is a large share of the errors (e.g. sports teams named after cities: ORG vs "
                   "LOC; nationalities: MISC vs LOC) — this run reads single sentences; document context "
                   "(`data.context: document`) feeds the neighbouring sentences into the window.")
    return out


def _pm(v: float, sd: float | None) -> str:
    return f"{v:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def study_table(rows: list[dict]) -> str:
    """The decoder study's rows (scripts/study.py) as a Markdown table."""
    lines = ["| variant | seeds | dev F1 | test F1 | train s | predict words/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {len(r['runs'])} | {_pm(r['dev_f1'], r['dev_f1_sd'])} | "
              f"{_pm(r['test_f1'], r['test_f1_sd'])} | {r['train_seconds']:.0f} | {r['predict_words_per_s']:.0f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


# Why each kind of change can win — the mechanism, said once, cited where it comes from; the numbers say whether it did.
STUDY_WHY = {
    "model.exit_layer": "a decoder's top layers specialise in predicting the next token, while a middle layer's states "
                        "still describe the word itself (Kukić et al. 2026 read layer 23 of Mistral-7B's 32); dropping "
                        "the layers above also makes every step cheaper",
    "data.context": "the other sentences of the document disambiguate a name (the same entity is often spelled out "
                    "or typed elsewhere in the article), which a sentence-level tagger never sees",
    "model.transform": "repeating the input lets each word's last copy attend to the whole first copy, so a causal "
                       "model sees right-hand context without any change to its attention",
    "model.unmask": "unmasking gives every word its right-hand context; which layers need it decides how much of the "
                    "pre-trained behaviour is disturbed",
    "model.backbone": "a different pre-trained model: its size, corpus and tokenizer",
}


def study_text(study: dict) -> str:
    """The study's table, and what the numbers say: the best row on dev against the quickstart's, with the spread."""
    rows = study["rows"]
    base = next((r for r in rows if not r["overrides"]), None)
    best = max(rows, key=lambda r: r["dev_f1"])
    fastest = max(rows, key=lambda r: r["predict_words_per_s"])
    say = [f"Each row trains on the `{study.get('config', 'quickstart')}` config's budget with one change "
           "(`scripts/study.py`); F1 is mean ± sample sd where a row ran over several seeds."]
    if base is not None and best is not base:
        noise = max(x for x in (best["dev_f1_sd"], base["dev_f1_sd"], 0.0) if x is not None)
        verdict = ("more than the larger seed spread" if best["dev_f1"] - base["dev_f1"] > noise
                   else "within seed noise" if noise else "one seed each, so no spread yet")
        seeds = len(best["runs"])
        say.append(f"Best on dev: **{best['name']}** (dev {_pm(best['dev_f1'], best['dev_f1_sd'])}, test "
                   f"{_pm(best['test_f1'], best['test_f1_sd'])}, {seeds} seed{'s' if seeds > 1 else ''}): "
                   f"{best['dev_f1'] - base['dev_f1']:+.2f} dev F1 over the quickstart's own setting, {verdict}.")
        why = [STUDY_WHY[k] for k in best["overrides"] if k in STUDY_WHY]
        if why:
            say.append("Why it can help: " + "; ".join(why) + ".")
    elif base is not None:
        say.append("Best on dev: the quickstart's own setting.")
    say.append(f"Fastest prediction: **{fastest['name']}** ({fastest['predict_words_per_s']:.0f} words/s, test F1 "
               f"{fastest['test_f1']:.2f}).")
    return " ".join(say) + "\n\n" + study_table(rows).rstrip("\n")


def write_report(paths: list[str], output: str | Path, study_path: str | None = None) -> tuple[Path, Path]:
    """`study_path`: scripts/study.py's results.json."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    runs = [_load(p) for p in _expand(paths)]
    study = json.loads(Path(study_path).read_text()) if study_path else None
    files = _plots(runs, out, study)
    sections = _sections(runs, study)
    subset = runs[[r["kind"] for r in runs].index("prompt")]["metrics"]["sentences"] if any(
        r["kind"] == "prompt" for r in runs) else None
    table = table_markdown([system_row(r["run"], subset, r["name"]) for r in runs])
    types = sorted({t for r in runs for t in r["metrics"]["per_type"]})

    md = ["# llm-ner report", "", f"Runs: {', '.join(str(r['dir']) for r in runs)}", "", "## Comparison", "",
          table, "", "Published references (full CoNLL-2003 training set; **not run here**, for scale):", "",
          published_table(), ""]
    for title, body in sections:
        md += [f"## {title}", "", body, ""]
        if title == "Results":
            md += [f"![{k}]({p.name})" for k, p in files.items() if k in ("curves", "per_type")] + [""]
        if title == "Failure cases":
            md += [f"![{k}]({p.name})" for k, p in files.items() if k in ("confusion", "errors")] + [""]
        if title == "Confidence" and "calibration" in files:
            md += [f"![calibration]({files['calibration'].name})", ""]
        if title == "Decoder study" and "study" in files:
            md += [f"![study]({files['study'].name})", ""]
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
        if title == "Results":
            body.append(img("curves") + img("per_type"))
        if title == "Failure cases":
            body.append(img("confusion") + img("errors"))
            body.append(f"<h3>Worst sentences ({html.escape(runs[0]['name'])})</h3>" + _examples_html(runs[0], types))
        if title == "Confidence":
            body.append(img("calibration"))
        if title == "Decoder study":
            body.append(img("study"))
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
