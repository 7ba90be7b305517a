"""No request can stall or break the service for the others (issue 20): one bad text fails only its own request, a
dead batching worker shows on /health, work is counted in texts and characters, a request has a time limit, and
raw-text splitting is linear on any input. The app runs for real (uvicorn on 127.0.0.1, called over HTTP) in this
process, so a test can put a real model behind it with a failure or a delay injected for one marked text."""

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from approx import assert_same_entities
from test_serve import free_port

from llm_ner.data.words import split_words
from llm_ner.inference.engine import NERModel
from llm_ner.serving.serve import ServeConfig, create_app

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


GOOD = ["Peter visited New York and Washington on Monday .", "Apple hired John Smith from Google in London ."]


class Injected:
    """A real NERModel whose batch call raises when it holds a text containing POISON, and sleeps `delay` seconds
    when one contains SLOW. Records every batch it was given."""

    def __init__(self, ner: NERModel, delay: float = 0.0):
        self.ner, self.labels, self.delay, self.calls = ner, ner.labels, delay, []

    def __call__(self, texts):
        self.calls.append(list(texts))
        if any("POISON" in t for t in texts):
            raise RuntimeError("injected failure")
        if any("SLOW" in t for t in texts):
            time.sleep(self.delay)
        return self.ner(texts)


@contextmanager
def running(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 60
    while not server.started:
        assert th.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        th.join(30)


def call(url, body=None, path="/v1/entities"):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def ner(tiny_ner_dir):
    return NERModel.from_pretrained(tiny_ner_dir)


def test_one_bad_text_fails_only_its_own_request(tiny_ner_dir, ner):
    """Four requests batched into one model call, one holding a text that makes the model raise: that request gets
    422 naming the text's index; the other three get 200 and their entities."""
    model = Injected(ner)
    app = create_app(ServeConfig(str(tiny_ner_dir), batch_wait_ms=500), ner=model)
    bodies = [{"texts": GOOD}, {"texts": [GOOD[0], "POISON in here", GOOD[1]]}, {"text": GOOD[1]}, {"text": "Paris"}]
    with running(app) as url, ThreadPoolExecutor(4) as ex:
        res = list(ex.map(lambda b: call(url, b), bodies))
    assert len(model.calls[0]) == 7, model.calls  # all four shared the first call: the isolation was needed
    status, body = res[1]
    assert status == 422 and body["detail"].startswith("texts[1] could not be processed (RuntimeError)"), body
    for (status, body), req in zip(res[:1] + res[2:], bodies[:1] + bodies[2:], strict=True):
        assert status == 200, body
        texts = req.get("texts") or [req["text"]]
        for got, want in zip(body["results"], ner(texts).entities, strict=True):
            assert_same_entities(got["entities"], want)
    assert sum(len(r["entities"]) for _, b in res if "results" in b for r in b["results"]) > 0


def test_health_says_when_the_batching_worker_is_dead(tiny_ner_dir, ner):
    app = create_app(ServeConfig(str(tiny_ner_dir)), ner=ner)
    with running(app) as url:
        assert call(url, path="/health")[0] == 200
        assert call(url, {"text": GOOD[0]})[0] == 200
        app.state.served.batcher.task.cancel()  # the worker gone, whatever the cause
        time.sleep(0.2)
        status, body = call(url, path="/health")
        assert status == 503 and body["status"] == "error" and "worker stopped" in body["detail"]
        status, body = call(url, {"text": GOOD[0]})  # answered at once, not left hanging
        assert status == 503 and "worker stopped" in body["detail"]


def test_work_is_counted_in_characters(tiny_ner_dir, ner):
    """The per-request cap and the queue count characters: many short texts pass where the same characters in one
    request do not; a request that would push the waiting characters past the cap gets 429."""
    model = Injected(ner, delay=3.0)
    cfg = ServeConfig(str(tiny_ner_dir), max_request_chars=1000, max_queue_chars=1500, batch_wait_ms=0)
    with running(create_app(cfg, ner=model)) as url:
        status, body = call(url, {"texts": ["x" * 400, "y" * 400, "z" * 201]})
        assert status == 413 and body["detail"] == "the texts have 1001 characters in all; the limit is 1000"
        with ThreadPoolExecutor(3) as ex:
            slow = ex.submit(call, url, {"text": "SLOW"})  # holds the model for 3 s
            while not model.calls:
                time.sleep(0.01)
            first = ex.submit(call, url, {"text": "a" * 1000})  # waits: 1000 characters queued
            time.sleep(0.3)
            second = call(url, {"text": "b" * 600})  # 1600 > 1500: refused
            assert second[0] == 429 and "characters" in second[1]["detail"], second
            assert first.result()[0] == 200 and slow.result()[0] == 200


def test_request_time_limit_and_a_timed_out_request_costs_nothing(tiny_ner_dir, ner):
    model = Injected(ner, delay=2.0)
    cfg = ServeConfig(str(tiny_ner_dir), request_timeout=1.0, batch_wait_ms=0)
    with running(create_app(cfg, ner=model)) as url, ThreadPoolExecutor(2) as ex:
        slow = ex.submit(call, url, {"text": "SLOW"})
        while not model.calls:
            time.sleep(0.01)
        queued = call(url, {"text": "queued behind it"})  # waits 1 s behind the slow one, then gives up
        status, body = slow.result()
        assert status == 503 and "within 1 s" in body["detail"], body
        assert queued[0] == 503
        time.sleep(1.5)  # the worker is free again
        assert call(url, {"text": GOOD[0]})[0] == 200
    assert ["queued behind it"] not in model.calls  # dropped before it cost any work


ADVERSARIAL = {  # each was quadratic in align.WORD_RE before issue 20 (the e-mail alternative rescanned the run)
    "a+": "a+", "dots": "a..", "hyphen-dot": "-.", "plus-digit": "+1A", "underscore-plus": "_+"}


@pytest.mark.parametrize("unit", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
def test_splitting_is_linear_on_adversarial_text(unit):
    """10x the characters must cost about 10x the time, not 100x: the best of 3 timings at 10k and 100k characters,
    with a generous bound of 30x (the quadratic splitter: ~100x, 15 s for 100k characters of "a+a+…")."""
    def best(text):
        t = []
        for _ in range(3):
            t0 = time.perf_counter()
            split_words(text)
            t.append(time.perf_counter() - t0)
        return min(t)

    small, large = (unit * (n // len(unit)) for n in (10_000, 100_000))
    ratio = best(large) / best(small)
    assert ratio < 30, f"{unit!r}: 100k characters took {ratio:.0f}x as long as 10k (quadratic?)"


def test_splitting_keeps_emails_and_words():
    text = "Mail jane.doe+ner@example.co.uk or a+b, not a+b@, then x.y@z.org."
    words = [text[a:b] for a, b in split_words(text)]
    assert "jane.doe+ner@example.co.uk" in words and "x.y@z.org" in words
    assert re.sub(r"\s+", "", text) == "".join(words)  # nothing lost, nothing added
