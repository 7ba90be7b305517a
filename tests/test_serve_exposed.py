"""The service as one would expose it: API keys, CORS, a body cap before parsing, the model named (not its path),
backpressure (429 + Retry-After) and Prometheus metrics — each on a real server on 127.0.0.1, called over HTTP."""


import http.client
import json
import os
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from test_serve import TEXTS, get_json, start_server

from llm_ner.serving.middleware import ApiKeys
from llm_ner.serving.serve import read_api_keys

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


def call(url, path="/v1/entities", body=None, headers=None, method=None):
    """(status, headers, parsed body or text) for any status."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            raw, status, hdrs = r.read(), r.status, r.headers
    except urllib.error.HTTPError as e:
        raw, status, hdrs = e.read(), e.code, e.headers
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


def stop(proc):
    proc.terminate()
    proc.wait(timeout=30)


def test_key_check_compares_every_key_in_constant_time(monkeypatch):
    """No early exit that would time which key nearly matched: whatever the header, every key is compared, each with
    hmac.compare_digest (constant time for equal-length inputs)."""
    import llm_ner.serving.middleware as serve

    seen = []

    def counting(a, b):
        seen.append(b)
        return real(a, b)

    import asyncio

    real = serve.hmac.compare_digest
    monkeypatch.setattr(serve.hmac, "compare_digest", counting)
    reached, answered = [], []

    async def app(scope, receive, send):  # the routes behind the middleware
        reached.append(scope["path"])

    async def send(msg):
        if msg["type"] == "http.response.start":
            answered.append(msg["status"])

    # the middleware itself, as a request meets it (issue 43: this test once drove a helper requests never used)
    g = ApiKeys(app, ("alpha", "beta", "gamma"), ("delta",), {"/train": "train", "/v1/entities": "predict"})
    for header, path, status in ((b"Bearer alpha", "/v1/entities", None), (b"Bearer gamma", "/train", 403),
                                 (b"Bearer delta", "/train", None), (b"Bearer nope", "/v1/entities", 401),
                                 (b"Basic alpha", "/v1/entities", 401), (b"", "/v1/entities", 401),
                                 (None, "/v1/entities", 401)):
        seen.clear()
        reached.clear()
        answered.clear()
        headers = [] if header is None else [(b"authorization", header)]
        asyncio.run(g({"type": "http", "path": path, "method": "POST", "headers": headers}, None, send))
        assert seen == [b"delta", b"alpha", b"beta", b"gamma"], header  # every key, whichever matched
        assert (answered == [status]) if status else (reached == [path] and not answered), (header, path)
    monkeypatch.setattr(serve.hmac, "compare_digest", real)
    g = ApiKeys(None, ("alpha", "beta"))
    assert g.allowed(b"Bearer alpha") and g.allowed(b"bearer beta") and g.allowed(b"Bearer  beta")
    for bad in (None, b"", b"alpha", b"Basic alpha", b"Bearer alph", b"Bearer alphaa", b"Bearer "):
        assert not g.allowed(bad), bad
    assert read_api_keys(None, " k1 , ,k2") == ("k1", "k2")


def test_each_route_declares_its_scope_and_the_app_reads_them(tiny_ner_dir, tmp_path):
    """Issue 45: a route's auth scope is declared on the route (shown in the OpenAPI schema); the key check and the
    metrics read them from the app, so a new route is one edit in its router."""
    from llm_ner.serving.middleware import AUTH_KEY
    from llm_ner.serving.serve import create_app
    from llm_ner.serving.settings import ServeConfig

    app = create_app(ServeConfig(str(tiny_ner_dir), train_dir=str(tmp_path / "rounds")))
    scopes = app.user_middleware[[m.cls.__name__ for m in app.user_middleware].index("ApiKeys")].kwargs["scopes"]
    assert {p for p, s in scopes.items() if s == "train"} == {"/train", "/webhook", "/v1/training/rollback"}
    assert {"/", "/health", "/docs", "/openapi.json"} <= {p for p, s in scopes.items() if s == "open"}
    assert {"/v1/entities", "/v1/labels", "/metrics", "/setup", "/predict", "/v1/training"} <= {
        p for p, s in scopes.items() if s == "predict"}
    assert app.state.metrics.paths == set(scopes)
    schema = app.openapi()["paths"]
    assert schema["/train"]["post"][AUTH_KEY] == "train" and schema["/v1/entities"]["post"][AUTH_KEY] == "predict"


def test_api_keys_from_file_and_environment(tiny_ner_dir, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nfile-key-1\n\nfile-key-2\n")
    proc, url = start_server(tiny_ner_dir, "--api-key-file", str(keys), env={"LLM_NER_API_KEYS": "env-key"})
    try:
        body = {"text": TEXTS[0]}
        no_key = call(url, body=body)
        wrong = call(url, body=body, headers={"Authorization": "Bearer file-key-3"})
        basic = call(url, body=body, headers={"Authorization": "Basic file-key-1"})
        for status, hdrs, b in (no_key, wrong, basic):  # the same answer whatever was wrong: nothing revealed
            assert status == 401 and b == {"detail": "unauthorized"} and hdrs["www-authenticate"] == "Bearer"
        for k in ("file-key-1", "file-key-2", "env-key"):
            assert call(url, body=body, headers={"Authorization": f"Bearer {k}"})[0] == 200, k
        assert call(url, "/v1/labels")[0] == 401 and call(url, "/metrics")[0] == 401
        assert call(url, "/health")[0] == 200  # probes need no key
        assert call(url, "/")[0] == 200  # the page holds no data; its requests need the key
    finally:
        stop(proc)


def test_cors_allow_list(tiny_ner_dir, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("k\n")
    proc, url = start_server(tiny_ner_dir, "--cors-origin", "https://app.example", "--api-key-file", str(keys))
    try:
        pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
        status, hdrs, _ = call(url, headers=pre, method="OPTIONS")
        assert status == 200 and hdrs["access-control-allow-origin"] == "https://app.example"
        status, hdrs, _ = call(url, headers={**pre, "Origin": "https://evil.example"}, method="OPTIONS")
        assert status == 400 and "access-control-allow-origin" not in hdrs
        # a real call from the allowed origin; and its 401 is readable by the page (CORS headers on errors too)
        status, hdrs, _ = call(url, body={"text": "x"}, headers={"Origin": "https://app.example",
                                                                 "Authorization": "Bearer k"})
        assert status == 200 and hdrs["access-control-allow-origin"] == "https://app.example"
        status, hdrs, _ = call(url, body={"text": "x"}, headers={"Origin": "https://app.example"})
        assert status == 401 and hdrs["access-control-allow-origin"] == "https://app.example"
        status, hdrs, _ = call(url, body={"text": "x"}, headers={"Origin": "https://evil.example",
                                                                 "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in hdrs  # served, but the browser will not hand it to evil.example
    finally:
        stop(proc)


def test_body_cap_before_parsing(tiny_ner_dir):
    proc, url = start_server(tiny_ner_dir, "--max-body-bytes", "2000")
    try:
        big = json.dumps({"text": "word " * 1000}).encode()  # 5 kB
        status, _, body = call(url, body=big)
        assert status == 413 and body["detail"] == "the request body is over the limit of 2000 bytes"
        # chunked (no Content-Length): the server reads at most the limit, then refuses
        u = urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request("POST", "/v1/entities", body=iter([big[i:i + 500] for i in range(0, len(big), 500)]),
                     headers={"content-type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and b"over the limit" in r.read()
        conn.close()
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)  # a small chunked body goes through
        small = json.dumps({"text": TEXTS[0]}).encode()
        conn.request("POST", "/v1/entities", body=iter([small[:10], small[10:]]),
                     headers={"content-type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["results"][0]["entities"] is not None
        assert call(url, body={"text": TEXTS[0]})[0] == 200
    finally:
        stop(proc)


def test_responses_name_the_model_not_its_path(tiny_ner_dir):
    proc, url = start_server(tiny_ner_dir, "--model-name", "acme-ner", "--model-version", "2026.11")
    proc2, url2 = start_server(tiny_ner_dir)
    try:
        health = get_json(url + "/health")
        assert health["model"] == {"name": "acme-ner", "version": "2026.11", "labels": ["LOC", "ORG", "PER"]}
        status, _, body = call(url, body={"text": TEXTS[0]})
        assert status == 200 and body["model"] == {"name": "acme-ner", "version": "2026.11"}
        # defaults: the run's name (RUN/model -> RUN) and a fingerprint of the files
        h2 = get_json(url2 + "/health")
        assert h2["model"]["name"] == tiny_ner_dir.parent.name and re.fullmatch(r"[0-9a-f]{12}",
                                                                                h2["model"]["version"])
        for u in (url, url2):
            for path in ("/health", "/v1/labels", "/metrics", "/openapi.json", "/"):
                assert str(tiny_ner_dir) not in str(call(u, path)[2]), path
            assert str(tiny_ner_dir) not in json.dumps(call(u, body={"texts": TEXTS})[2])
    finally:
        stop(proc)
        stop(proc2)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search(r"^" + pat + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_burst_past_the_queue_gets_429_never_5xx_and_metrics_count_it(tiny_ner_dir):
    """240 requests from 48 threads at a server that lets 4 wait: each gets 200 or 429 (with Retry-After), none 5xx;
    the server's memory stays bounded; it answers normally afterwards; /metrics counts exactly what clients saw."""
    proc, url = start_server(tiny_ner_dir, "--max-queue", "4", "--batch-wait-ms", "0", "--max-text-chars", "20000")
    try:
        text = ("Peter visited New York and Washington on Monday . " * 60)[:3000]
        call(url, body={"text": text})  # warm up
        rss0 = rss_kib(proc.pid)

        def one(i):
            status, hdrs, body = call(url, body={"text": f"{text} {i}"})
            return status, hdrs.get("retry-after"), body

        with ThreadPoolExecutor(48) as ex:
            res = list(ex.map(one, range(240)))
        statuses = [s for s, _, _ in res]
        assert set(statuses) <= {200, 429}, sorted(set(statuses))
        n429, n200 = statuses.count(429), statuses.count(200)
        assert n429 > 0 and n200 > 0, (n200, n429)
        assert all(ra is not None and int(ra) >= 1 for s, ra, _ in res if s == 429)
        assert all("busy" in b["detail"] for s, _, b in res if s == 429)
        grown_mib = (rss_kib(proc.pid) - rss0) / 1024
        assert grown_mib < 300, f"server RSS grew {grown_mib:.0f} MiB over the burst"
        status, _, body = call(url, body={"texts": TEXTS})
        assert status == 200 and len(body["results"]) == len(TEXTS)
        assert get_json(url + "/health")["in_flight"] == 0
        m = call(url, "/metrics")[2]
        assert metric(m, "llm_ner_requests_total", path="/v1/entities", status="429") == n429
        assert metric(m, "llm_ner_requests_total", path="/v1/entities", status="200") == n200 + 2
        assert metric(m, "llm_ner_request_seconds_count", path="/v1/entities") == n200 + n429 + 2
        assert metric(m, "llm_ner_batch_texts_count") >= 2 and metric(m, "llm_ner_batch_texts_sum") == n200 + 1 + 5
        assert metric(m, "llm_ner_queue_depth") == 0 and metric(m, "llm_ner_model_load_seconds") > 0
        print(f"burst: {n200} x 200, {n429} x 429, RSS +{grown_mib:.0f} MiB")
    finally:
        stop(proc)


def test_bad_flags_are_one_line_errors(tiny_ner_dir, tmp_path):
    import subprocess
    import sys

    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n")
    for args, msg in ((["--api-key-file", str(empty)], "no API key in it"),
                      (["--api-key-file", str(tmp_path / "missing.txt")], "missing.txt"),
                      (["--max-queue", "0"], "--max-queue must be at least 1"),
                      (["--label-studio-url", "file:///etc/passwd"], "--label-studio-url must be an http(s) URL")):
        r = subprocess.run([sys.executable, "-m", "llm_ner.cli", "serve", "--model", str(tiny_ner_dir), *args],
                           capture_output=True, text=True, timeout=120, env={**os.environ})
        assert r.returncode == 2 and msg in r.stderr + r.stdout and "Traceback" not in r.stderr, r.stderr


def test_a_non_loopback_address_needs_keys_or_no_auth(tiny_ner_dir, tmp_path):
    """Like Jupyter and Ollama: listening where other machines can reach it, without keys, is refused with a message
    that gives both ways out; --no-auth (or keys) lets it start; loopback needs neither."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llm_ner.cli", "serve", "--model", str(tiny_ner_dir), "--host",
                        "0.0.0.0"], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if not k.startswith("LLM_NER_API_KEY")})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "without API keys" in r.stderr and "--api-key-file" in r.stderr and "--no-auth" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    proc, url = start_server(tiny_ner_dir, "--host", "0.0.0.0", "--no-auth")
    try:
        assert call(url, body={"text": TEXTS[0]})[0] == 200  # open, as asked
    finally:
        stop(proc)
    keys = tmp_path / "keys.txt"
    keys.write_text("k\n")
    proc, url = start_server(tiny_ner_dir, "--host", "0.0.0.0", env={"LLM_NER_API_KEY_FILE": str(keys)})
    try:
        assert call(url, body={"text": TEXTS[0]})[0] == 401  # keyed, the file named by the environment
        assert call(url, body={"text": TEXTS[0]}, headers={"Authorization": "Bearer k"})[0] == 200
    finally:
        stop(proc)
    from llm_ner.serving.serve import is_loopback

    assert all(map(is_loopback, ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.5", "example.org")))


def test_docs_are_served_offline(tiny_ner_dir, tmp_path):
    """/docs loads Swagger UI from this server (no CDN), and its files need no key even when keys are set."""
    keys = tmp_path / "keys.txt"
    keys.write_text("k\n")
    proc, url = start_server(tiny_ner_dir, "--api-key-file", str(keys))
    try:
        status, _, html = call(url, "/docs")
        assert status == 200 and "swagger" in html.lower()
        refs = re.findall(r'(?:src|href)=["\']([^"\']+)', html)
        assert refs and all(r.startswith("/") for r in refs), refs  # nothing from another host
        for ref in refs:
            assert call(url, ref)[0] == 200, ref
    finally:
        stop(proc)


def test_basic_auth_carries_a_key_for_label_studio():
    """Label Studio authenticates to an ML backend with HTTP basic auth only: any user name, the key as password."""
    import base64

    g = ApiKeys(None, ("alpha", "beta"))
    for user in (b"", b"label-studio"):
        assert g.allowed(b"Basic " + base64.b64encode(user + b":beta"))
    for bad in (b"Basic " + base64.b64encode(b"u:alph"), b"Basic " + base64.b64encode(b"alpha"),
                b"Basic !!notbase64", b"Digest " + base64.b64encode(b"u:alpha")):
        assert not g.allowed(bad), bad
