"""The HTTP service, started for real on 127.0.0.1 and called over HTTP."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_ner.labels import LabelSet
from llm_ner.model import LLMForTokenClassification, NERConfig
from llm_ner.predict import NERModel

TEXTS = ["Peter visited New York and Washington on Monday .", "Apple hired John Smith from Google in London .",
         "", "😀 EU rejects German call", "The European Commission said on Thursday it disagreed ."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_llama, tiny_tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    model = LLMForTokenClassification.from_backbone(NERConfig(
        labels=LabelSet.from_types(["PER", "LOC", "ORG"]).to_dict(), backbone=str(tiny_llama), mode="frozen"))
    with torch.no_grad():
        model.classifier.weight.normal_(std=2.0)
    d = tmp_path_factory.mktemp("served") / "model"
    model.save_pretrained(d, tokenizer=tiny_tokenizer)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llm_ner.cli", "serve", "--model", str(d), "--port", str(port),
                             "--max-text-chars", "2000", "--max-batch", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("server did not start: " + proc.stdout.read().decode()[-2000:])
    yield url, NERModel.from_pretrained(d)
    proc.terminate()
    proc.wait(timeout=30)


def post(url, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/entities", data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_endpoints_and_answers_match_direct_prediction(server):
    url, ner = server
    with urllib.request.urlopen(url + "/v1/labels") as r:
        assert json.loads(r.read())["types"] == ["LOC", "ORG", "PER"]
    with urllib.request.urlopen(url + "/openapi.json") as r:
        assert "/v1/entities" in json.loads(r.read())["paths"]
    status, body = post(url, {"texts": TEXTS})
    assert status == 200
    want = [[e.to_dict() for e in ents] for ents in ner.predict(TEXTS)]
    assert [r["entities"] for r in body["results"]] == want
    status, body = post(url, {"text": TEXTS[0]})
    assert status == 200 and body["results"][0]["entities"] == want[0]


def test_limits_and_bad_requests(server):
    url, _ = server
    status, body = post(url, {"texts": ["a"] * 9})
    assert status == 413 and "limit is 8" in body["detail"]
    status, body = post(url, {"text": "x " * 1500})
    assert status == 413 and "3000 characters" in body["detail"]
    assert post(url, {"text": "a", "texts": ["b"]})[0] == 422
    assert post(url, {"txt": "a"})[0] == 422
    assert post(url, b"{not json", raw=True)[0] == 422


def test_bounded_concurrent_load(server):
    """64 requests from 16 threads on loopback: every one answered, and correctly (micro-batching must not mix
    results up). Reports p50/p95 latency."""
    url, ner = server
    texts = [f"{TEXTS[i % 5]} number {i}" for i in range(64)]
    want = {t: [e.to_dict() for e in ner.predict(t)] for t in texts}

    def one(t):
        t0 = time.time()
        status, body = post(url, {"text": t})
        return t, status, body, time.time() - t0

    with ThreadPoolExecutor(16) as ex:
        res = list(ex.map(one, texts))
    assert all(s == 200 for _, s, _, _ in res)
    for t, _, body, _ in res:
        assert body["results"][0]["entities"] == want[t]
    lat = sorted(r[3] for r in res)
    print(f"load: 64 requests, p50 {1000 * lat[32]:.0f} ms, p95 {1000 * lat[60]:.0f} ms")


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, st.fixed_dictionaries({"texts": json_values}),
                      st.fixed_dictionaries({"text": json_values})))
def test_malformed_bodies_never_500(server, body):
    url, _ = server
    status, _ = post(url, body)
    assert status < 500
