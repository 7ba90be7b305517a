"""Prompted baseline: parsing/alignment units, error handling against a local HTTP fake (429, 500, malformed body)
for both SDKs, and caching. The scoring run against a real local server is in test_prompt_live.py."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_ner.baselines.prompt import (
    AnthropicChat,
    CachedChat,
    OpenAIChat,
    PromptConfig,
    build_messages,
    extract_json,
    load_prompt,
    parse_and_align,
)
from llm_ner.data import Sentence
from llm_ner.labels import LabelSet

LABELS = LabelSet.from_types(["PER", "ORG", "LOC", "MISC"])
TOKENS = "Peter Blackburn of the EU met Peter in Bonn .".split()


def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('Sure! ```json\n{"entities": [{"type": "PER", "text": "a}b"}]}\n```') == {
        "entities": [{"type": "PER", "text": "a}b"}]}
    assert extract_json("no json here") is None
    assert extract_json('{"a": [1, 2}') is None


def test_align_first_free_occurrence_and_counts():
    reply = json.dumps({"entities": [
        {"type": "PER", "text": "Peter Blackburn"}, {"type": "per", "text": "Peter"}, {"type": "ORG", "text": "eu"},
        {"type": "LOC", "text": "Paris"}, {"type": "CITY", "text": "Bonn"}, {"type": "PER", "text": "Peter"},
        {"text": "x"}]})
    r = parse_and_align(reply, TOKENS, LABELS)
    assert r.tags == ["B-PER", "I-PER", "O", "O", "B-ORG", "O", "B-PER", "O", "O", "O"]
    assert r.counts == {"entities": 7, "aligned": 3, "hallucinated": 1, "unknown_type": 1, "overlapping": 1,
                        "malformed_entity": 1}


def test_malformed_and_refusal():
    assert parse_and_align("entities: Peter", TOKENS, LABELS).counts == {"malformed": 1}
    assert parse_and_align("I'm sorry, I can't help with that.", TOKENS, LABELS).counts == {"refusal": 1}
    assert parse_and_align('{"entities": "none"}', TOKENS, LABELS).counts == {"malformed": 1}


def test_prompt_is_versioned_and_lists_definitions():
    p = load_prompt("ner_v1")
    shot = Sentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"])
    msgs = build_messages(p, LABELS, TOKENS, [shot])
    assert p["version"] == 1 and [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "- MISC:" in msgs[0]["content"] and '"type": "<one of LOC, MISC, ORG, PER>"' in msgs[0]["content"]
    assert json.loads(msgs[2]["content"]) == {"entities": [{"type": "ORG", "text": "EU"},
                                                           {"type": "MISC", "text": "German"}]}


class Fake(BaseHTTPRequestHandler):
    """Plays back a script of (status, body) per request; records request count."""

    script: list = []
    calls = 0

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        i = min(Fake.calls, len(Fake.script) - 1)
        Fake.calls += 1
        status, body = Fake.script[i]
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if status == 429:
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def fake():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    Fake.calls = 0
    yield srv
    srv.shutdown()


OPENAI_OK = {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "finish_reason": "stop",
                          "message": {"role": "assistant", "content": '{"entities": []}'}}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
ANTHROPIC_OK = {"id": "x", "type": "message", "role": "assistant", "model": "m", "stop_reason": "end_turn",
                "content": [{"type": "text", "text": '{"entities": []}'}],
                "usage": {"input_tokens": 10, "output_tokens": 5}}
ERR = {"error": {"message": "boom", "type": "server_error"}}


def clients(fake, tmp_path):
    port = fake.server_address[1]
    common = dict(model="m", max_retries=2, backoff=0.0, timeout=5, cache_dir=str(tmp_path / "cache"))
    oa = PromptConfig(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", **common)
    an = PromptConfig(provider="anthropic", base_url=f"http://127.0.0.1:{port}", api_key_env="FAKE_KEY", **common)
    return [(OpenAIChat, oa, OPENAI_OK), (AnthropicChat, an, ANTHROPIC_OK)]


@pytest.mark.parametrize("which", [0, 1], ids=["openai", "anthropic"])
def test_rate_limit_is_retried_then_succeeds_and_is_cached(fake, tmp_path, monkeypatch, which):
    monkeypatch.setenv("FAKE_KEY", "k")
    cls, cfg, ok = clients(fake, tmp_path)[which]
    Fake.script = [(429, ERR), (429, ERR), (200, ok)]
    chat = CachedChat(cls(cfg), cfg, sleep=lambda s: None)
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    r = chat(msgs)
    assert r.error is None and r.retries == 2 and r.text == '{"entities": []}' and r.prompt_tokens == 10
    assert Fake.calls == 3
    again = chat(msgs)
    assert again.cached and Fake.calls == 3  # served from the disk cache, no request


@pytest.mark.parametrize("which", [0, 1], ids=["openai", "anthropic"])
def test_persistent_500_becomes_a_counted_failure(fake, tmp_path, monkeypatch, which):
    monkeypatch.setenv("FAKE_KEY", "k")
    cls, cfg, _ = clients(fake, tmp_path)[which]
    Fake.script = [(500, ERR)]
    r = CachedChat(cls(cfg), cfg, sleep=lambda s: None)([{"role": "user", "content": "u"}])
    assert r.error == "server_error" and r.retries == 2 and Fake.calls == 3
    assert not list((tmp_path / "cache").glob("*.json"))  # failures are not cached


@pytest.mark.parametrize("which", [0, 1], ids=["openai", "anthropic"])
def test_malformed_body_is_not_a_crash(fake, tmp_path, monkeypatch, which):
    monkeypatch.setenv("FAKE_KEY", "k")
    cls, cfg, _ = clients(fake, tmp_path)[which]
    Fake.script = [(200, "this is not json")]
    r = CachedChat(cls(cfg), cfg, sleep=lambda s: None)([{"role": "user", "content": "u"}])
    assert r.error is not None and r.text == ""
