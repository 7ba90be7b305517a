"""The decoder study (scripts/study.py) in the report: its table, and what the numbers say."""

from __future__ import annotations


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
