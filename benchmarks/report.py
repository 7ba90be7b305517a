"""results.json -> results.md (tables) + scaling.png. Called by bench.py; `python benchmarks/report.py DIR` redoes
it."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _passes(max_tokens: int | None) -> str:
    return f"passes ≤ {max_tokens}" if max_tokens else "one pass"


def _rounds(rounds: list[dict], a: str, b: str) -> str:
    """Alternated measurements, one per round: "a → b (ratio×); ..."."""
    return "; ".join(f"{r[a]} → {r[b]} ({r['ratio']}×)" for r in rounds)


def _get(d: dict, *keys, default="n/a"):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _grid(r: dict, bs: int, mode: str = "sorted") -> dict:
    return next((g for g in r.get("grid", []) if g["batch_size"] == bs and g["mode"] == mode), {})


def _mfu(tokens_per_s, params, peak_gflops, flops_per_param=2) -> str:
    if not isinstance(tokens_per_s, int | float) or not isinstance(params, int) or not peak_gflops:
        return "n/a"
    return f"{100 * flops_per_param * params * tokens_per_s / (peak_gflops * 1e9):.0f} %"


def _peaks(res: dict) -> tuple[list[float], float | None, float | None]:
    """The fp32 matmul peaks measured at the start and the end of the run (a shared VM drifts), the higher one (what
    MFU uses), and the bf16 peak."""
    peaks = [_get(res, k, "fp32_matmul_gflops", default=None) for k in ("matmul", "matmul_end")]
    peaks = [p for p in peaks if isinstance(p, int | float)]
    bf16_peaks = [_get(res, k, "bf16_matmul_gflops", default=None) for k in ("matmul", "matmul_end")]
    return (peaks, max(peaks) if peaks else None,
            max((p for p in bf16_peaks if isinstance(p, int | float)), default=None))


def _prediction(res: dict, peak, bf16_peak, out: Path) -> list[str]:
    """The machine, the peaks, and prediction's table, speed-ups and raw-text rows."""
    peaks = _peaks(res)[0]
    m = res.get("machine", {})
    lines = ["# Benchmarks", "",
             f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} ({m.get('threads')} threads), "
             f"no GPU; {m.get('date')}{' (--quick)' if m.get('quick') else ''}. Command: `python benchmarks/bench.py`.",
             f"Measured fp32 matmul peak (2048², torch): **{peak} GFLOP/s**"
             + (f" (start of the run {peaks[0]}, end {peaks[1]}; MFU below uses the higher)" if len(peaks) > 1 else "")
             + "." + (f" bf16 matmul peak: **{bf16_peak} GFLOP/s** ({bf16_peak / peak:.2f}× fp32; bf16 MFU is "
                      "measured against it)." if bf16_peak and peak else ""), "",
             *[f"Re-measured {r['date']} on {r['cpu']} (torch {r['torch']}, {r['threads']} threads): "
               f"{', '.join(r['sections'])}"
               + (f", with the LLM model `{r['llm_model']}`" if r.get("llm_model") else "")
               + ". MFU uses the peaks of the latest matmul measurement, so rows measured on another machine "
               "are set against this one's peak: compare their words/s, not their MFU."
               for r in res.get("reruns", [])], "",
             "## Prediction (CoNLL-2003 test sentences as raw text; full test set for F1)", "",
             "Columns: words/s at a fixed batch size (sorted by length, or in input order), with a token budget "
             "(sorted, batches filled up to 1,024 padded tokens, ≤ 256 texts) and one padded row per window, and "
             "with the default: the same budget, short windows packed several to a row (models bidirectional in "
             "every layer; others fall back to one row each); tokens/s, MFU and padding share are for the default. "
             "Test F1 on the full CoNLL-2003 test set, predicted with the default.",
             "",
             "| system | load → first prediction s | words/s bs 1 | bs 8 | bs 32 sorted | bs 32 unsorted "
             "| budget, unpacked | **default (budget, packed)** | tokens/s | MFU | padding | test F1 "
             "| test words/s (MFU) | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = {"llm": "llm-ner SmolLM2-135M (fp32)", "llm_int8": "llm-ner, int8 + SmoothQuant",
             "llm_int8_torchao": "llm-ner, int8 from torchao + SmoothQuant",
             "llm_bf16": "llm-ner, bf16 backbone",
             "llm_1thread": "llm-ner fp32, 1 thread", "llm_compile": "llm-ner fp32, torch.compile",
             "lora": "LoRA model (adapters)", "lora_merged": "LoRA model, merged",
             "encoder": "MiniLM-L6 encoder (fp32)", "encoder_int8": "MiniLM-L6 encoder, int8"}
    for key, label in names.items():
        r = res.get(key)
        if not r:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:80]} |" + " |" * 11)
            continue
        dflt = _grid(r, 32, "budget")
        params = r.get("nonembedding_params")
        key_peak = bf16_peak if "bf16" in key else peak
        mfu = _mfu(dflt.get("tokens_per_s"), params, key_peak) if "int8" not in key else "(int8)"
        lines.append("| " + " | ".join(str(x) for x in [
            label, r.get("load_to_first_prediction_s"), _grid(r, 1).get("words_per_s", ""),
            _grid(r, 8).get("words_per_s", ""), _grid(r, 32).get("words_per_s", ""),
            _grid(r, 32, "unsorted").get("words_per_s", ""), _grid(r, 32, "budget_nopack").get("words_per_s", ""),
            f"**{dflt.get('words_per_s', '')}**",
            dflt.get("tokens_per_s", ""), mfu, dflt.get("padding_share", ""), r.get("test_f1", ""),
            f"{r.get('test_words_per_s', '')}" + (f" ({_mfu(r.get('test_tokens_per_s'), params, key_peak)})"
                                                  if "test_tokens_per_s" in r and "int8" not in key else ""),
            r.get("peak_mb")]) + " |")
    for key in ("int8_paired", "bf16_paired", "int8_torchao_paired", "auto_paired"):
        pr = res.get(key, {})
        if pr.get("rounds"):
            base, other = pr.get("base", "fp32"), pr.get("other", key.split("_")[0])
            chose = f" (auto chose {pr['other_is']})" if other == "auto" and "other_is" in pr else ""
            agree = f"; {100 * pr['span_agreement']:.1f} % of the spans agree" if "span_agreement" in pr else ""
            lines += ["", f"{other}{chose} vs {base} timed alternately in one process on the same {pr['texts']} "
                          f"texts ({len(pr['rounds'])} rounds, words/s {base} → {other}): "
                          + _rounds(pr["rounds"], base, other)
                          + f". **Median speed-up {pr['median_ratio']}×**{agree}."]
    pp = res.get("auto_process", {})
    if pp.get("rounds"):
        lines += ["", f"`llm-ner predict` as a whole process (load, the auto check, {pp['texts']} CoNLL test sentences "
                      f"as raw text, {pp['words']} words, writing), fp32 → the default auto, alternated "
                      f"({len(pp['rounds'])} rounds): " + _rounds(pp["rounds"], "fp32", "auto")
                      + f". **Median {pp['median_ratio']}×**; {100 * pp['span_agreement']:.1f} % of fp32's spans "
                      f"agree. {pp['rounds'][0].get('auto_log', '')}"]
    rt = res.get("raw_text", {})
    if rt.get("raw_text"):
        r, t = rt["raw_text"], rt["pretokenised"]
        lines += ["", f"Raw text vs pre-tokenised (the full CoNLL-2003 test set, {rt['sentences']} sentences, each as "
                      "its tokens joined by spaces; exact character span + type): raw text F1 "
                      f"**{r['f1']}** (P {r['precision']} / R {r['recall']}) vs pre-tokenised **{t['f1']}** "
                      f"(P {t['precision']} / R {t['recall']}): gap {round(t['f1'] - r['f1'], 2)}; the raw-text "
                      f"splitter re-splits {rt['resplit_sentences']} of the sentences differently from CoNLL."]
    sp = res.get("splitter", {})
    if sp.get("rows"):
        lines += ["", "Raw-text word splitting, adversarial (`a+a+a+…`) vs ordinary text (CoNLL-2003 test joined) of "
                      "the same length, best of 3 calls (`--only splitter`):", "",
                  "| characters | ordinary s | adversarial s | adversarial, splitter before issue 20 s |",
                  "|---|---|---|---|"]
        lines += [f"| {r['chars']} | {r['ordinary_s']} | {r['adversarial_s']} | "
                  f"{r['adversarial_before_fix_s'] if r['adversarial_before_fix_s'] is not None else 'not run'} |"
                  for r in sp["rows"]]
    devs = {k: v for k, v in res.items() if k.startswith("dev_") and isinstance(v, dict) and "valid_f1" in v}
    if devs:
        def name(k: str) -> str:
            k = k.removeprefix("dev_").replace("_all_int8", ", every Linear int8")
            k = k.replace("per_token", "per-token scales").replace("per_tensor", "per-tensor scales (torch.ao)")
            return k.replace("_down_fp32", ", down_proj kept fp32").replace("_", " ")

        lines += ["", "SmoothQuant strength (alpha) and the layers left in fp32 for int8, chosen on the CoNLL-2003 "
                      "**dev** set (full, 3,250 sentences), dev F1: "
                      + "; ".join(f"{name(k)}: **{v['valid_f1']}**" + (f" ({v['valid_words_per_s']} words/s)"
                                                                       if "valid_words_per_s" in v else "")
                                  for k, v in devs.items())]
    return lines


def _alternatives(res: dict, peak, bf16_peak, out: Path) -> list[str]:
    """The transformers pipeline, spaCy and the service."""
    lines: list[str] = []
    lines += ["", "## The alternatives", "",
              "| system | load → first prediction s | words/s | CoNLL test F1 | peak MB |", "|---|---|---|---|---|"]
    hp, sp = res.get("hf_pipeline", {}), res.get("spacy", {})
    if hp:
        lines.append(f"| transformers pipeline, one text per call (same weights) | "
                     f"{hp.get('load_to_first_prediction_s')} | {hp.get('naive_loop_words_per_s')} | "
                     f"(causal, no CRF) | {hp.get('peak_mb')} |")
        lines.append(f"| transformers pipeline, batch_size=32 (same weights) | | "
                     f"{hp.get('pipeline_batch32_words_per_s')} | (causal, no CRF) | |")
    if sp:
        lines.append(f"| spaCy en_core_web_sm, full pipeline | {sp.get('load_to_first_prediction_s')} | "
                     f"{sp.get('words_per_s_full_pipeline')} | | {sp.get('peak_mb')} |")
        lines.append(f"| spaCy en_core_web_sm, tok2vec + ner only | | {sp.get('words_per_s_ner_only')} | "
                     f"{sp.get('test_f1', 'n/a')} (OntoNotes → CoNLL types) | |")
        if sp.get("test_per_type_f1"):
            lines.append("")
            lines.append("spaCy per-type F1 after mapping: " + ", ".join(
                f"{k} {v}" for k, v in sp["test_per_type_f1"].items()))
    ours = _grid(res.get("llm", {}), 32, "budget").get("words_per_s")
    if ours and isinstance(hp.get("naive_loop_words_per_s"), int | float):
        lines += ["", "Our batched predict (the llm-ner row's default, measured in its own process) vs the naive "
                      f"pipeline loop: {ours / hp['naive_loop_words_per_s']:.1f}×; vs the pipeline's own batching: "
                      f"{ours / hp['pipeline_batch32_words_per_s']:.1f}×."]
    if hp.get("paired_rounds"):
        lines += ["", "The same, timed alternately in one process on the same texts (words/s naive → ours): "
                      + _rounds(hp["paired_rounds"], "naive", "ours")
                      + f". **Median {hp['paired_median_ratio']}×.**"]
    for key, kind in (("serve", "fp32"), ("serve_int8", "`--int8`")):
        sv = res.get(key, {})
        if not sv or "error" in sv:
            continue
        if key == "serve":
            lines += ["", "## Serving (`llm-ner serve`, real server on loopback)"]
        lines += ["", f"{kind}: {sv['requests']} requests of one CoNLL test sentence each from {sv['clients']} "
                      "concurrent clients "
                      f"(micro-batched by the server): p50 **{sv['p50_ms']} ms**, p95 **{sv['p95_ms']} ms**, max "
                      f"{sv['max_ms']} ms; {sv['requests_per_s']} requests/s = {sv['words_per_s']} words/s; ready "
                      f"(model loaded, /health 200) {sv['ready_s']} s after start; {sv['answers_equal_direct']} of "
                      f"{sv['requests']} answers identical to direct prediction."]
    return lines


def _training(res: dict, peak, bf16_peak, out: Path) -> list[str]:
    """Training's speed by mode, and the paired training measurements."""
    lines: list[str] = []
    lines += ["", "## Training (batch 8 of CoNLL-2003 windows, fused AdamW)", "",
              "(N for LoRA includes the adapters: 4.9 M of 111 M.)", "",
              "| mode | tokens/s | FLOPs/token counted | MFU | trainable params | peak MB |",
              "|---|---|---|---|---|---|"]
    for key, mult in (("full", 6), ("full_bf16", 6), ("lora", 4), ("frozen", 2)):
        r = res.get(f"train_{key}")
        if r and "error" not in r:
            key_peak = bf16_peak if key.endswith("bf16") else peak
            label = "full, bf16 autocast (MFU vs the bf16 peak)" if key == "full_bf16" else key
            lines.append(f"| {label} | {r['tokens_per_s']} | {mult} × N | "
                         f"{_mfu(r['tokens_per_s'], r['nonembedding_params'], key_peak, mult)} | {r['trainable']:,} | "
                         f"{r['peak_mb']} |")
    tr = res.get("train_recipe", {})
    if tr.get("rounds"):
        med = {k: sorted(r[k] for r in tr["rounds"])[len(tr["rounds"]) // 2] for k in ("today", "fast")}
        n = tr["nonembedding_params"]
        lines += ["", "Today's recipe (the quickstart's: fp32, sdpa attention, 8 windows a step) against the fast CPU "
                      "recipe of `configs/conll2003_full.yaml` (bf16 autocast with fp32 master weights, eager "
                      f"attention, input embeddings frozen, {tr['fast_batch']} windows a step), two models in one "
                      f"process timed alternately ({len(tr['rounds'])} rounds, tokens/s today → fast): "
                      + _rounds(tr["rounds"], "today", "fast")
                      + f". **Median speed-up {tr['median_ratio']}×**; median MFU today "
                      f"{_mfu(med['today'], n, peak, 6)} of the fp32 peak, fast {_mfu(med['fast'], n, bf16_peak, 6)} "
                      "of the bf16 peak."]
    pad = res.get("train_padding", {})
    if pad and "error" not in pad:
        lines += ["", "Padding in training batches (the Trainer's group_by_length batches of CoNLL-2003 windows; "
                      "packing = the batch's windows first-fit into rows as wide as its longest): "
                      + "; ".join(f"{k.replace('_', ' ')}: {v['padding_share']:.1%} → {v['packed_padding_share']:.1%} "
                                  f"packed ({v['windows']} windows, mean {v['mean_tokens']} tokens)"
                                  for k, v in pad.items())
                      + ". Length grouping already leaves little padding, so packing was not built for training."]
    tp = res.get("train_paired", {})
    if tp.get("rounds"):
        lines += ["", f"Full fine-tuning, fp32 vs bf16 autocast (fp32 master weights) alternated in one process on the "
                      f"same batches ({len(tp['rounds'])} rounds, tokens/s fp32 → bf16): "
                      + _rounds(tp["rounds"], "fp32", "bf16")
                      + f". **Median speed-up {tp['median_ratio']}×.**"]
    ep = res.get("exit_paired", {})
    if ep.get("rounds"):
        lines += ["", f"Early exit, the quickstart recipe with {ep['layers'][0]} layers vs `model.exit_layer: "
                      f"{ep['layers'][1]}` ({ep['nonembedding_params'][0] / 1e6:.1f}M vs "
                      f"{ep['nonembedding_params'][1] / 1e6:.1f}M non-embedding parameters), alternated on the same "
                      f"batches ({len(ep['rounds'])} rounds, training tokens/s): "
                      + _rounds(ep["rounds"], "layers_30", "exit_23")
                      + f". **Median speed-up {ep['median_ratio']}×.**"]
    mem = {k.removeprefix("passes_memory_"): v for k, v in res.items() if k.startswith("passes_memory_")
           and "error" not in v}
    if mem:
        lines += ["", "Training memory (issue 22), `training.max_tokens_per_pass`: the full configs' longest batch "
                      "(the Trainer takes it first) and 4 random ones, a process per setting; peak RSS and training "
                      "tokens/s (the longest batch dominates both): "
                  + "; ".join(f"{v['config']} {_passes(v['max_tokens_per_pass'])}: {v['peak_mb'] / 1024:.1f} GB, "
                              f"{v['tokens_per_s']} tokens/s" for v in mem.values()) + "."]
    pp = res.get("passes_paired", {})
    if pp.get("rounds"):
        lines += ["", f"Passes of ≤ {pp['max_tokens_per_pass']} tokens against one pass a batch, one model "
                      f"({pp['config']}) alternated on random batches ({len(pp['rounds'])} rounds, training "
                      "tokens/s): " + _rounds(pp["rounds"], "one_pass", "passes")
                      + f". **Median ratio {pp['median_ratio']}×.**"]
    bw = res.get("bf16_true_paired", {})
    if bw.get("rounds"):
        lines += ["", "bf16 weights (`bench.bf16_true`: backbone weights in bf16, no autocast, AdamW with "
                      "Kahan-compensated bf16 updates) vs today's bf16 autocast over fp32 weights with fused AdamW: "
                      "whole optimizer steps of the quickstart recipe, two models alternated on the same batches "
                      f"({len(bw['rounds'])} rounds, training tokens/s): "
                      + _rounds(bw["rounds"], "autocast", "bf16_true")
                      + f". **Median speed-up {bw['median_ratio']}×.**"]
    fp = res.get("freeze_paired", {})
    if fp.get("rounds"):
        k = fp["freeze_layers"]
        lines += ["", f"`model.freeze_layers: {k}` vs every layer trained, the quickstart recipe on "
                      "conll2003_full_gemma's model choices (exit after layer 12, global layers unmasked), "
                      f"alternated on the same batches ({len(fp['rounds'])} rounds, training tokens/s; trainable "
                      f"parameters {fp['trainable'][0] / 1e6:.1f}M → {fp['trainable'][1] / 1e6:.1f}M): "
                      + _rounds(fp["rounds"], "every_layer", f"freeze_{k}")
                      + f". **Median speed-up {fp['median_ratio']}×.**"]
    bp = res.get("backbone_paired", {})
    if bp.get("rounds"):
        lines += ["", f"Backbones on the quickstart recipe, SmolLM2-135M vs Gemma 3 270M "
                      f"({bp['nonembedding_params']['smollm2-135m'] / 1e6:.1f}M vs "
                      f"{bp['nonembedding_params']['gemma3-270m'] / 1e6:.1f}M non-embedding parameters), alternated on "
                      f"the same {bp['sentences_per_round']} sentences a round ({len(bp['rounds'])} rounds, training "
                      "words/s): " + _rounds(bp["rounds"], "smollm2-135m", "gemma3-270m")
                      + f". **Median Gemma / SmolLM2: {bp['median_ratio']}×.**"]
    return lines


def _where_time_goes(res: dict, peak, bf16_peak, out: Path) -> list[str]:
    """The forward's share of the matmul peak, and what is left."""
    lines: list[str] = []
    llm = res.get("llm", {})
    if llm and "error" not in llm:
        b32, params = _grid(llm, 32, "budget"), llm.get("nonembedding_params")
        nopack = _grid(llm, 32, "budget_nopack")
        ideal = llm.get("ideal_forward_tokens_per_s")
        lines += ["", "## Where the time goes (llm-ner fp32, default batching)", "",
                  "- plain forward of 32 × 48 random tokens (no padding, no tokenising, no decoding): "
                  f"{ideal} tokens/s = **{_mfu(ideal, params, peak)} MFU**",
                  f"- our predict end to end on the full test set (3,453 sentences): {llm.get('test_tokens_per_s')} "
                  f"real tokens/s = **{_mfu(llm.get('test_tokens_per_s'), params, peak)} MFU**",
                  f"- on the 256-sentence sample: {b32.get('tokens_per_s')} real tokens/s = "
                  f"**{_mfu(b32.get('tokens_per_s'), params, peak)} MFU**; without packing "
                  f"{nopack.get('tokens_per_s')} = {_mfu(nopack.get('tokens_per_s'), params, peak)} MFU, when "
                  f"{nopack.get('padding_share')} of the tokens fed were padding",
                  f"- of its wall time: forward {b32.get('forward_share')}, CRF decode {b32.get('decode_share')}, "
                  f"tokenise {b32.get('tokenize_share')}; of the tokens fed, {b32.get('padding_share')} are padding",
                  "- so what is left between us and the matmul peak is inside the forward itself: the non-matmul "
                  "work (attention softmax, RMSNorm, SiLU, residual adds, the head — the plain forward's own distance "
                  "from 100 %), attention over packed rows as wide as the batch's longest window, and the machine's "
                  "drift during the run (compare the peak measured at its start and end)"]
    return lines


def _scaling(res: dict, peak, bf16_peak, out: Path) -> list[str]:
    """Long documents and streamed texts: speed and memory."""
    lines: list[str] = []
    sc = res.get("scaling", {})
    if sc and "error" not in sc:
        lines += ["", "## Scaling", "", "| document chars | words/s | seconds | RSS MB |", "|---|---|---|---|"]
        lines += [f"| {d['chars']} | {d['words_per_s']} | {d['seconds']} | {d['rss_mb']} |" for d in sc["documents"]]
        lines += ["", "| texts streamed | RSS MB | seconds |", "|---|---|---|"]
        lines += [f"| {s['texts']} | {s['rss_mb']} | {s['seconds']} |" for s in sc["stream"]]
        lines += ["", "![scaling](scaling.png)"]
        _plot(sc, out / "scaling.png")
    return lines


def write_report(res: dict, out: Path) -> None:
    """results.md (and scaling.png) from results.json: one function a section."""
    _, peak, bf16_peak = _peaks(res)
    lines = [line for part in (_prediction, _alternatives, _training, _where_time_goes, _scaling)
             for line in part(res, peak, bf16_peak, out)]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _plot(sc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    d = sc["documents"]
    a.plot([x["chars"] for x in d], [x["words_per_s"] for x in d], "o-", label="words/s")
    a.set_xscale("log", base=2)
    a.set_xlabel("document length (characters)")
    a.set_ylabel("words/s")
    a2 = a.twinx()
    a2.plot([x["chars"] for x in d], [x["rss_mb"] for x in d], "s--", color="tab:red", label="RSS MB")
    a2.set_ylabel("RSS MB", color="tab:red")
    a.set_title("one long document (sliding window)")
    s = sc["stream"]
    b.plot([x["texts"] for x in s], [x["rss_mb"] for x in s], "o-", color="tab:red")
    b.set_ylim(0, max(x["rss_mb"] for x in s) * 1.3)
    b.set_xlabel("texts streamed (NERModel.pipe, chunks of 256)")
    b.set_ylabel("RSS MB")
    b.set_title("memory while streaming a corpus")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    write_report(json.loads((d / "results.json").read_text()), d)
