"""The report's sections, one short function each: (title, Markdown) from one run's facts. Fixed prose lives in
templates/*.md.j2; every fact in it (backbone, quantisation, context, exit layer, data sizes, seed) comes from the
run's saved config and summary (`facts`), and the backbone's "why" and quirks from the backbone table
(modeling/backbones.py), so the prose follows the run and cannot go stale."""

from __future__ import annotations

import functools
import itertools
import json
import statistics
from importlib import resources

from ..config import NOT_THE_RECIPE
from ..evaluation.evaluate import SHOWN_THRESHOLDS
from ..modeling.backbones import BACKBONES, family


@functools.cache
def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FunctionLoader(
        lambda name: (resources.files("llm_ner") / "report" / "templates" / name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def render(template: str, facts: dict) -> str:
    """A template filled with facts; a fact the template names but the run lacks is an error, never a blank."""
    return _env().get_template(template).render(**facts).strip()


class _Sizes(dict):
    """A data split's counts, with 0 for what a run did not record (attribute access for the templates)."""

    def __getattr__(self, key: str) -> int:
        return self.get(key, 0)


def backbone_why(name: str) -> str:
    """Why a bundled backbone was chosen: the backbone table's own text (backbones.BACKBONES), said once."""
    m = BACKBONES.get(name)
    if m is None or not m.why:
        return "A decoder the user chose; the transformation does not depend on it."
    return m.why


def facts(llm: dict) -> dict:
    """Everything the templates may say about one run: from its saved model config, run config and summary."""
    s, mcfg, rcfg = llm["summary"] or {}, llm["config"] or {}, llm["run"].config or {}
    model, loss, train = mcfg.get("model", {}), mcfg.get("loss", {}), rcfg.get("training", {})
    data = s.get("data", {})
    backbone = str(llm["model"])
    bundled = BACKBONES.get(backbone)
    unmask = model.get("unmask")
    return {
        "run": llm["name"], "backbone": backbone, "why": backbone_why(backbone),
        "quantisation": bundled.quantisation if bundled else None,
        "licence": bundled.licence if bundled else None,
        "encoder": bundled.encoder if bundled else s.get("system") == "encoder",
        "quirks": family(s.get("model_type")).quirks, "mode": mcfg.get("mode"),
        "params_total": s.get("parameters", {}).get("total", 0),
        "params_trained": s.get("parameters", {}).get("trainable", 0),
        "unmask": unmask,
        "unmask_layers": isinstance(unmask, list), "exit_layer": model.get("exit_layer"),
        "freeze_layers": model.get("freeze_layers") or 0,
        "head_dropout": model.get("head_dropout"), "crf": model.get("crf"), "max_length": model.get("max_length"),
        "stride": model.get("stride"), "context": mcfg.get("context", "sentence"),
        "ce_weight": loss.get("ce_weight"), "crf_weight": loss.get("crf_weight"),
        "label_smoothing": loss.get("label_smoothing"),
        "train": _Sizes(data.get("train", {})), "test": _Sizes(data.get("test", {})),
        "types": sorted({t[2:] for t in (s.get("labels") or []) if t != "O"}),
        "subset": rcfg.get("data", {}).get("max_train_sentences") is not None,
        "epochs": train.get("epochs"), "batch_size": train.get("batch_size"), "seed": train.get("seed"),
        "lr": train.get("learning_rate"), "head_lr": train.get("head_learning_rate"),
    }


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def results(runs: list[dict]) -> str:
    rows = [{"name": r["name"], "kind": r["kind"], "f1": _pct(r["metrics"]["f1"]), "p": _pct(r["metrics"]["precision"]),
             "r": _pct(r["metrics"]["recall"]), "macro": _pct(r["metrics"]["macro_f1"]),
             "strict": _pct(r["metrics"].get("strict", {}).get("f1")), "sentences": r["metrics"]["sentences"]}
            for r in runs]
    pr = next((r for r in runs if r["kind"] == "prompt"), None)
    prompt = None
    if pr:
        c, ps = pr["prompt_stats"]["counts"], pr["prompt_stats"]
        prompt = {"model": pr["model"], "k_shot": ps["k_shot"], "latency_p50": ps.get("latency_p50"),
                  **{k: c.get(k, 0) for k in ("requests", "malformed", "hallucinated", "unknown_type", "refusal")}}
    return render("results.md.j2", {"runs": rows, "seed_lines": seeds_lines(runs), "prompt": prompt,
                                    "gaps": encoder_gaps(runs)})


def encoder_gaps(runs: list[dict]) -> list[dict]:
    """The LLM against the encoder where both read the same data (the runs' `data` config: splits, subsets, context),
    each recipe's test F1 averaged over the seeds it ran: a document-context LLM is set against a document-context
    encoder, not against whichever encoder run came first."""
    groups: dict[str, dict[str, list[list[dict]]]] = {}  # data -> kind -> one list of runs per recipe
    for rs in by_recipe(runs):
        if rs[0]["kind"] in ("llm", "encoder"):
            data = json.dumps(rs[0]["run"].config.get("data"), sort_keys=True)
            groups.setdefault(data, {}).setdefault(rs[0]["kind"], []).append(rs)
    out = []
    for data, kinds in groups.items():
        d = json.loads(data) or {}  # the data section both sides read
        for ls in kinds.get("llm", []):
            for es in kinds.get("encoder", []):
                gap = statistics.mean(r["metrics"]["f1"] for r in ls) - statistics.mean(r["metrics"]["f1"] for r in es)
                out.append({"gap": gap, "llm": ls[0]["model"], "encoder": es[0]["model"], "llm_seeds": len(ls),
                            "encoder_seeds": len(es), "context": d.get("context", "sentence"),
                            "llm_head": _head(ls[0]), "encoder_head": _head(es[0]),
                            "train": _train_size(d.get("max_train_sentences"))})
    return out


def _train_size(n: int | None) -> str:
    return "all training sentences" if n is None else f"the first {n:,} training sentences"


def _head(run: dict) -> str:
    return "CRF" if (run["run"].config.get("model") or {}).get("crf") else "linear"


def by_recipe(runs: list[dict]) -> list[list[dict]]:
    """The runs that have a config, one list per recipe (`_recipe`: the seeds of one recipe together)."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r["run"].config:
            groups.setdefault(_recipe(r), []).append(r)
    return list(groups.values())


def _recipe(run: dict) -> str:
    """A run's config without what a repeat of its recipe may change (config.NOT_THE_RECIPE: the seed, the output
    dir, how a step is computed)."""
    cfg = json.loads(json.dumps(run["run"].config or {}))
    for key in NOT_THE_RECIPE:
        *parents, leaf = key.split(".")
        d = functools.reduce(lambda d, k: d.get(k) or {}, parents, cfg)
        d.pop(leaf, None)
    return json.dumps(cfg, sort_keys=True)


def seeds_lines(runs: list[dict]) -> list[str]:
    """One line per recipe run over several seeds (`_seeds_line`)."""
    return [_seeds_line(rs) for rs in by_recipe(runs) if len(rs) > 1]


def _seed_list(rs: list[dict]) -> str:
    """"42 / 1 / 2": the seeds of runs, from their run configs."""
    return " / ".join(str((r["run"].config.get("training") or {}).get("seed")) for r in rs)


def _pm_text(xs: list[float], digits: int = 2) -> str:
    m, sd = _pm(xs)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def _seeds_line(rs: list[dict]) -> str:
    """Mean ± sample sd over the runs of test F1 (conlleval and strict), of every other set they were all scored on
    (RUN/NAME_metrics.json), of test ECE, and the range of training minutes."""
    seeds = _seed_list(rs)
    parts = [f"test F1 **{_pm_text([r['metrics']['f1'] for r in rs])}** (strict "
             f"{_pm_text([r['metrics'].get('strict', {}).get('f1', r['metrics']['f1']) for r in rs])})"]
    shared = set.intersection(*(set(r.get("other_metrics") or {}) for r in rs))
    for n in sorted(shared):  # named by the data it was run on, where a run recorded it
        name = next((r["other_metrics"][n]["data"] for r in rs if r["other_metrics"][n].get("data")), n)
        parts.append(f"{name} F1 {_pm_text([r['other_metrics'][n]['f1'] for r in rs])}")
    eces = [r["metrics"]["calibration"]["ece"] for r in rs if r["metrics"].get("calibration")]
    if len(eces) == len(rs):
        parts.append(f"test ECE {_pm_text(eces, 3)}")
    secs = [r["summary"]["train_seconds"] for r in rs if (r["summary"] or {}).get("train_seconds")]
    if len(secs) == len(rs):
        parts.append(f"training {min(secs) / 60:.1f}–{max(secs) / 60:.1f} min")
    return f"- **Over {len(rs)} seeds** ({seeds}; {', '.join(r['name'] for r in rs)}): " + "; ".join(parts)


def confidence(llm: dict) -> str | None:
    cal = llm["metrics"].get("calibration")
    if not cal:
        return None
    th = {t["threshold"]: t for t in cal["thresholds"]}
    unc = llm["metrics"].get("calibration_uncalibrated")
    txt = render("confidence.md.j2", {
        "method": cal.get("method", "temperature"), "temperature": cal.get("temperature", 1.0), "ece": cal["ece"],
        "ece_as_trained": unc["ece"] if unc else None, "kept": [th[k] for k in SHOWN_THRESHOLDS if k in th]})
    table = ece_table(llm)
    return txt + ("\n\n" + table if table else "")


def ece_table(llm: dict) -> str | None:
    """Entity-score ECE on every set the run's model was scored on: the set the temperature was fitted on
    (in-sample), the test set, and each RUN/NAME_metrics.json (`llm-ner evaluate --output`) — a temperature fitted
    on dev need not hold on other data (issue 22)."""
    rows = []
    fit = llm.get("calibration")
    if fit and "ece_after" in fit:
        rows.append((f"{fit['fitted_on']} ({fit['sentences']:,} sentences; fitted here, in-sample)", None,
                     fit["ece_after"], fit["ece_before"]))
    test_name = ((llm["run"].config or {}).get("data") or {}).get("test") or "test"  # config.yaml's data section
    for name, m in [(test_name, llm["metrics"]), *sorted((llm.get("other_metrics") or {}).items())]:
        cal = m.get("calibration")
        if cal:
            unc = (m.get("calibration_uncalibrated") or cal)["ece"]
            rows.append((m.get("data") or name, m.get("f1"), cal["ece"], unc))
    if len(rows) < 2:
        return None
    lines = ["| evaluation set | F1 | ECE (fitted T) | ECE as trained (T = 1) |", "|---|---|---|---|"]
    lines += [f"| {n} | {'' if f1 is None else f'{f1:.2f}'} | {e:.4f} | {u:.4f} |" for n, f1, e, u in rows]
    return "\n".join(lines)


def _confused_form(f: dict) -> str:
    """“Real Madrid” ORG, tagged “Madrid” ×2 (a boundary error: same type, other words); “Czech” LOC→MISC ×1.
    Records written before the predicted words were kept say only "wrong boundary"."""
    said = f.get("pred_text")
    if f["gold"] != f["pred"]:
        how = f"{f['gold']}→{f['pred']}" + (f" “{said}”" if said else "")
    else:
        how = f"{f['gold']}, " + (f"tagged “{said}”" if said else "wrong boundary")
    return f"“{f['text']}” {how} ×{f['count']}"


def failures(llm: dict) -> str:
    a = llm["analysis"]
    errs = sorted(((k, v) for k, v in a["taxonomy_total"].items() if k != "correct"), key=lambda kv: -kv[1])
    su = a.get("seen_unseen") or {}
    return render("failures.md.j2", {
        "run": llm["name"], "errors": errs[:4], "forms": [_confused_form(f) for f in a["confused_forms"][:6]],
        "seen": su.get("seen", {}).get("f1") if su else None, "unseen": su.get("unseen", {}).get("f1") if su else None,
        "by_length": [(k, v["f1"]) for k, v in a.get("by_entity_length", {}).items()]})


def _pm(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _against_encoder(by: dict, named: dict) -> list[dict]:
    """Each system but the two compared (a variant: an adapted decoder, ...), its mean minus the encoder's per size."""
    others = sorted({s for s, _ in by} - {"llm", "encoder"})
    return [{"system": s, "named": named.get(s, s),
             "diffs": [(n, by[(s, n)]["test_f1"] - by[("encoder", n)]["test_f1"])
                       for t, n in sorted(by, key=lambda k: k[1]) if t == s and ("encoder", n) in by]}
            for s in others]


def learning_curve_text(curve: dict) -> str:
    """The curve's table, and where the LLM's lead over the encoder is largest and lowest (from active/curve.py's
    summary)."""
    from ..active.curve import table, trained

    by = {(r["system"], r["sentences"]): r for r in curve["summary"] if r["test_f1"] is not None}
    leads = [(by[("llm", n)]["test_f1"] - by[("encoder", n)]["test_f1"], n) for s, n in by if s == "llm"
             and ("encoder", n) in by]
    hi, lo = (max(leads), min(leads)) if leads else ((None, None), (None, None))
    by_size = sorted((n, d) for d, n in leads)
    # where the sign of the lead changes between two measured sizes: the answer to "how much data before the LLM pays"
    turns = [{"who": "LLM" if d2 >= 0 else "encoder", "after": n1, "by": n2, "before_lead": d1, "lead": d2}
             for (n1, d1), (n2, d2) in itertools.pairwise(by_size) if (d1 >= 0) != (d2 >= 0)]
    ahead = None if turns or not leads else ("LLM" if lo[0] >= 0 else "encoder")
    named = {system: f"{t['backbone']} + {t['head']} head" for system, t in trained(curve).items()}
    text = render("curve.md.j2", {
        "config": curve["config"], "llm": named.get("llm"), "encoder": named.get("encoder"),
        "lead": hi[0], "lead_at": hi[1], "lowest": lo[0],
        "lowest_at": lo[1], "small": [d for d, m in leads if m <= 1000],
        "ten": sorted(m for d, m in leads if d >= 10),  # "does the LLM pay off for my few hundred sentences?"
        "turns": turns, "ahead": ahead, "others": _against_encoder(by, named)})
    return text + "\n\n" + table(curve["rows"]).rstrip("\n")


def al_complete_seeds(al: dict) -> tuple[list[str], list[str]]:
    """The seeds every strategy finished (all rounds), and the others: a simulation still running, or stopped and to
    be resumed, is shown on its finished seeds only, so every point compares the strategies on the same seeds."""
    res = al["results"]
    n_rounds = max((len(rows) for seeds in res.values() for rows in seeds.values()), default=0)
    seeds = sorted({k for v in res.values() for k in v}, key=int)
    done = [k for k in seeds if all(len(v.get(k, [])) == n_rounds for v in res.values())]
    return done, [k for k in seeds if k not in done]


def al_points(al: dict) -> dict[str, list[dict]]:
    """Per strategy, per round, over the finished seeds (`al_complete_seeds`): labelled sentences (and their tokens,
    mean over seeds, where recorded), test F1 mean and sd, dev F1 (mean, sd) where every seed recorded it, CPU
    seconds (training + choosing) summed over the rounds so far, mean over seeds."""
    out, (done, _) = {}, al_complete_seeds(al)
    for strategy, by_seed in al["results"].items():
        seeds = {k: by_seed[k] for k in done}
        n_rounds = min((len(rows) for rows in seeds.values()), default=0)
        pts = []
        for r in range(n_rounds):
            rows = [rs[r] for rs in seeds.values()]
            f1, sd = _pm([x["test_f1"] for x in rows])
            dev = [x["dev_f1"] for x in rows if x.get("dev_f1") is not None]
            # what it took to get here: training rounds 0..r, and the choices between them (not the one after r)
            cpu = statistics.mean(sum(x["train_seconds"] for x in rs[: r + 1])
                                  + sum(x.get("select_seconds") or 0 for x in rs[:r]) for rs in seeds.values())
            tokens = statistics.mean(x["tokens"] for x in rows) if all("tokens" in x for x in rows) else None
            pts.append({"labelled": rows[0]["labelled"], "tokens": tokens, "test_f1": f1, "test_sd": sd,
                        "dev": _pm(dev) if len(dev) == len(rows) else None, "cpu_s": cpu, "seeds": len(rows)})
        if pts:
            out[strategy] = pts
    return out


def _token_share(hit: dict, goal: dict) -> str:
    """", N % of the tokens": the sentences a strategy picks differ in length, and an annotator reads tokens."""
    if hit["tokens"] is None or not goal["tokens"]:
        return ""
    return f" of the sentences, {100 * hit['tokens'] / goal['tokens']:.0f} % of the tokens"


def active_learning_text(al: dict) -> str:
    """Per round and strategy, test F1; and the labels (and CPU minutes) each strategy needed to reach random's last."""
    pts, (done, partial) = al_points(al), al_complete_seeds(al)
    lines = ["| strategy | labelled sentences | their tokens | dev F1 | test F1 | seeds | CPU min so far |",
             "|---|---|---|---|---|---|---|"]
    for s, ps in pts.items():
        for p in ps:
            tokens = "" if p["tokens"] is None else f"{p['tokens']:,.0f}"
            dev = "" if p["dev"] is None else f"{p['dev'][0]:.2f} ± {p['dev'][1]:.2f}"
            lines.append(f"| {s} | {p['labelled']:,} | {tokens} | {dev} | {p['test_f1']:.2f} ± {p['test_sd']:.2f} | "
                         f"{p['seeds']} | {p['cpu_s'] / 60:.1f} |")
    goal = pts["random"][-1] if "random" in pts and len(pts) > 1 else None
    reached = []
    for name, ps in pts.items():
        if goal and name != "random":
            hit = next((p for p in ps if p["test_f1"] >= goal["test_f1"]), None)
            reached.append((name, hit, _token_share(hit, goal) if hit else ""))
    text = render("active_learning.md.j2", {"done": done, "partial": partial, "goal": goal, "reached": reached})
    return text + "\n\n" + "\n".join(lines)


SPEED_SIZES = (1, 8, 32)  # texts a request in benchmarks/runtimes.py's latency columns


def _arm_limit(row: dict, hw: dict) -> str:
    """The words/s the CPU's measured matmul peak allows an arm, and the share of it the arm reached warm: bf16 arms
    against the bf16 peak, fp32 against fp32's; int8 arms have none (OpenVINO quantises their activations on the fly
    and multiplies in int8 — a peak not measured here)."""
    if row["precision"] not in ("bf16", "fp32"):
        return "— (int8 peak not measured)"
    limit = hw[f"peak_gflops_{row['precision']}"] / (hw["gflop_per_token"] * row["tokens_per_word"])
    return f"{limit:,.0f} ({100 * row['warm_words_per_s'] / limit:.0f} %)"


def runtimes_table(d: dict) -> str:
    """benchmarks/runtimes.py's results as a table (docs/scaling.md, and the report's Speed section)."""
    hw = d.get("hardware")
    lines = ["| arm | runtime | precision | words/s, whole process | words/s, warm | p50 / p95 ms: 1 text | 8 texts | "
             "32 texts | spans kept vs the first row | test F1 | peak RSS MB |"
             + (" hardware limit words/s (warm's share) |" if hw else ""), "|" + "---|" * (12 if hw else 11)]
    for r in d["arms"]:
        where = r["arm"].rsplit(":", 1)[0]
        lines.append(f"| {where if where in ('torch', 'default') else 'export'} | {r['runtime']} | {r['precision']} | "
                     f"{r['whole_process_words_per_s']:,.0f} | {r['warm_words_per_s']:,.0f} | "
                     + " | ".join(f"{r[f'p50_ms_{n}']:.0f} / {r[f'p95_ms_{n}']:.0f}" for n in SPEED_SIZES)
                     + f" | {r['span_agreement_vs_first']:.2f} % | {r['test_f1']:.2f} | {r['peak_rss_mb']:,.0f} |"
                     + (f" {_arm_limit(r, hw)} |" if hw else ""))
    anchor = d.get("spacy_en_core_web_sm") or {}
    if "whole_process_words_per_s" in anchor:
        lines.append(f"\nspaCy en_core_web_sm on the same texts (its own labels, speed only): "
                     f"{anchor['whole_process_words_per_s']:,.0f} words/s whole process.")
    if hw:
        lines.append(f"\nHardware limit: {hw['gflop_per_token']} GFLOP a token ({hw['layers_run']} layers run), over "
                     f"the CPU's measured matmul peak: {hw['peak_gflops_bf16']:,.0f} GFLOP/s bf16, "
                     f"{hw['peak_gflops_fp32']:,.0f} fp32.")
    return "\n".join(lines)


def speed_text(d: dict) -> str:
    """The Speed section: what was measured, how, and the table."""
    return (f"Prediction speed of {d['arms'][0]['model']}, each way it runs, over CoNLL-2003 test as raw text "
            f"({d['words']:,} words, {d['texts']:,} texts; {d.get('cpu', '?')} CPUs): whole process = `llm-ner "
            "predict` in a new process, warm = in a loaded one; `default` is what `--runtime auto` ran. Command: "
            f"`{d.get('command', 'benchmarks/runtimes.py')}`.\n\n" + runtimes_table(d))


def sections(runs: list[dict], extras: dict[str, dict]) -> list[tuple[str, str]]:
    """The report's sections in order; a section without facts to show is left out."""
    from .study import study_text

    study, curve, al = extras.get("study"), extras.get("curve"), extras.get("al")

    llm = next((r for r in runs if r["kind"] == "llm"), runs[0])
    f = {**facts(llm), "prompted": any(r["kind"] == "prompt" for r in runs), "recipe_seeds": None}
    same = [r for r in runs if r["run"].config and llm["run"].config and _recipe(r) == _recipe(llm)]
    if len(same) > 1:  # the limitations speak of the described run's recipe over its seeds, not of one seed
        f["recipe_seeds"] = _seed_list(same)
        f["recipe_sd"] = _pm([r["metrics"]["f1"] for r in same])[1]
    out = [("Dataset and why", render("dataset.md.j2", f)), ("Model and why", render("model.md.j2", f)),
           ("How the LLM was transformed", render("transformed.md.j2", f)),
           ("How training differs from language-model training", render("training.md.j2", f)),
           ("Results", results(runs)), ("Confidence", confidence(llm)), ("Failure cases", failures(llm)),
           ("Limitations and improvements", render("limitations.md.j2", f)),
           ("Decoder study", study_text(study) if study else None),
           ("How much labelled data", learning_curve_text(curve) if curve else None),
           ("Active learning", active_learning_text(al) if al else None),
           ("Speed", speed_text(extras["speed"]) if extras.get("speed") else None)]
    return [(t, body) for t, body in out if body]
