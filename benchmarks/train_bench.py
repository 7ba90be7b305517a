"""Training benchmarks (each a worker run in its own process by bench.py): steps per second by mode and precision,
padding, the recipe's speed, and the paired comparisons (exit layer, compile, passes, true bf16, freezing,
backbones)."""

from __future__ import annotations

import argparse
import time

from common import median_ratio, nonembedding_params, peak_mb


def _built(cfg, sents):
    """Model (train mode), optimizer, tokenizer and the training windows of `sents`, as `llm-ner train` builds them
    from `cfg`."""
    from llm_ner.inference.engine import load_tokenizer
    from llm_ner.labels import label_set_for
    from llm_ner.modeling.processor import encode_sentences, window_feature
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
    from llm_ner.modeling.processor import collate, to_tensors

    # SmolLM2-135M unless told otherwise: the benchmark rows were measured with it (the quickstart now uses Gemma)
    cfg = load_config(config, {"training.mode": a.mode, "model.backbone": "smollm2-135m", **(overrides or {})})
    model, opt, tok, feats = _built(cfg, load_corpus("conll2003:train",
                                                     limit=max(400, a.batch * (a.steps * a.rounds * 4 + 2))))
    feats.sort(key=lambda f: len(f["input_ids"]))
    batches = [to_tensors(collate(feats[i : i + a.batch], tok.pad_token_id)) for i in range(0, len(feats), a.batch)]
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(0)).tolist()
    return model, opt, [batches[i] for i in order]


def _train_steps(model, opt, batches, precision: str, max_tokens: int | None = None) -> tuple[int, float]:
    """Optimizer steps as NERTrainer takes them (bf16: autocast, fp32 master weights; anything else: no autocast,
    the weights' own dtype; `max_tokens`: the batch in passes of at most that many tokens, each divided by the whole
    batch's loss denominators); (tokens, seconds)."""
    import torch

    from llm_ner.modeling.processor import split_batch

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
    from llm_ner.modeling.processor import encode_sentences

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
    from llm_ner.modeling.processor import collate, to_tensors

    cfg = load_config(config)
    model, opt, tok, feats = _built(cfg, load_corpus("conll2003:train"))
    feats.sort(key=lambda f: -len(f["input_ids"]))
    bs = cfg.training.batch_size
    batches = [to_tensors(collate(feats[i : i + bs], tok.pad_token_id)) for i in range(0, len(feats), bs)]
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
    from llm_ner.modeling.processor import collate, encode_sentences, to_tensors, window_feature
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
        return [to_tensors(collate(feats[i : i + q.training.batch_size], tok.pad_token_id))
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
