"""The demo page at / in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright — no browser
download) loads it from a real server on 127.0.0.1, types a sentence, and finds the highlighted spans with the
labels and scores the API returns; the slider and the type filter hide what they should. A screenshot is saved
(tmp dir; also to $LLM_NER_SCREENSHOT if set — that is how docs/demo.png is made, with
LLM_NER_DEMO_MODEL=runs/quickstart/model)."""

import json
import os
import shutil
from pathlib import Path

import pytest
from approx import SCORE_ATOL, assert_same_entities
from test_serve import post, start_server

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels


SENTENCE = "Peter Blackburn of the European Commission met officials in New York and Washington on Monday ."


def chromium() -> str:
    path = os.environ.get("LLM_NER_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("CI"):  # .ci/run installs Debian's chromium: missing there is a failure, not a skip
            pytest.fail("no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return path


@pytest.fixture
def page(tiny_ner_dir):
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    model = os.environ.get("LLM_NER_DEMO_MODEL") or tiny_ner_dir
    proc, url = start_server(model)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1000, "height": 700})
        pg.goto(url + "/")
        yield pg, url
        browser.close()
    proc.terminate()
    proc.wait(timeout=30)


def marks(pg) -> list[dict]:
    return pg.eval_on_selector_all("#doc mark.ent", """els => els.map(e => ({
        text: e.firstChild.textContent, label: e.dataset.label, score: e.dataset.score, title: e.title,
        colour: getComputedStyle(e).backgroundColor}))""")


def test_demo_page_highlights_the_entities_the_api_returns(page, tmp_path):
    pg, url = page
    pg.wait_for_function("document.getElementById('model').textContent.includes('version')")
    assert pg.title() == "llm-ner demo"
    pg.fill("#text", SENTENCE)
    pg.click("#run")
    pg.wait_for_function("document.getElementById('json').textContent.length > 0")
    status, want = post(url, {"text": SENTENCE, "review": True})
    assert status == 200
    ents = sorted(want["results"][0]["entities"] + want["results"][0]["needs_review"], key=lambda e: e["start"])
    assert ents, "the model should find something in the sentence for this test to mean anything"
    got = marks(pg)
    assert [(m["text"], m["label"]) for m in got] == [(SENTENCE[e["start"]:e["end"]], e["label"]) for e in ents]
    for m, e in zip(got, ents, strict=True):  # hover: the label and the score (shown to 3 decimals: 5e-4 of rounding)
        assert abs(float(m["score"]) - e["score"]) <= 5e-4 + SCORE_ATOL
        assert m["title"].startswith(f"{e['label']} · score {m['score']}")
    colours = {}
    for m in got:  # a colour per type
        assert colours.setdefault(m["label"], m["colour"]) == m["colour"]
    assert len(set(colours.values())) == len(colours)
    shown = json.loads(pg.inner_text("#json"))  # the raw JSON is the response
    assert shown["model"] == want["model"] and len(shown["results"]) == 1
    assert_same_entities(shown["results"][0]["entities"], want["results"][0]["entities"])
    assert_same_entities(shown["results"][0]["needs_review"], want["results"][0]["needs_review"])
    assert pg.inner_text("#doc").replace("\n", "").count(SENTENCE.split()[2]) >= 1  # the text itself is there

    shot = tmp_path / "demo.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("LLM_NER_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["LLM_NER_SCREENSHOT"]))
    print(f"screenshot: {shot}")

    # the slider hides entities scored below it
    cut = sorted(e["score"] for e in ents)[len(ents) // 2]
    pg.eval_on_selector("#threshold", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                        str(cut))
    assert len(marks(pg)) == sum(e["score"] >= float(pg.input_value("#threshold")) for e in ents)
    pg.eval_on_selector("#threshold", "el => { el.value = 0; el.dispatchEvent(new Event('input')); }")
    assert len(marks(pg)) == len(ents)
    # the type filter hides a type, and brings it back
    label = ents[0]["label"]
    pg.uncheck(f"#types input[value='{label}']")
    assert [m["label"] for m in marks(pg)] == [e["label"] for e in ents if e["label"] != label]
    pg.check(f"#types input[value='{label}']")
    assert len(marks(pg)) == len(ents)


def test_demo_page_sends_the_api_key(tiny_ner_dir, tmp_path):
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    keys = tmp_path / "keys.txt"
    keys.write_text("s3cret\n")
    proc, url = start_server(tiny_ner_dir, "--api-key-file", str(keys))
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            pg = browser.new_context().new_page()
            pg.goto(url + "/")
            pg.fill("#text", SENTENCE)
            pg.click("#run")
            pg.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert pg.inner_text("#error").startswith("401")
            pg.fill("#key", "s3cret")
            pg.click("#run")
            pg.wait_for_function("document.getElementById('status').textContent.includes('entities')")
            assert pg.inner_text("#error") == ""
            # the typed key is kept for this tab only (sessionStorage), never on disk (localStorage)
            assert pg.evaluate("sessionStorage.getItem('llm-ner-key')") == "s3cret"
            assert pg.evaluate("localStorage.getItem('llm-ner-key')") is None
            pg.reload()
            assert pg.input_value("#key") == "s3cret"  # a reload of the tab keeps it
            other = pg.context.new_page()  # another tab of the same browser profile does not see it
            other.goto(url + "/")
            assert other.input_value("#key") == ""
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_api_docs_render_offline(tiny_ner_dir):
    """/docs (Swagger UI) renders in a browser that may reach nothing but our server: its scripts and styles are
    served by us, not a CDN (an exposed or air-gapped server must not make browsers load code from elsewhere)."""
    from urllib.parse import urlsplit

    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    proc, url = start_server(tiny_ner_dir)
    elsewhere = []
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            pg = browser.new_page()

            def only_ours(route):
                if urlsplit(route.request.url).netloc == urlsplit(url).netloc:
                    return route.continue_()
                elsewhere.append(route.request.url)
                return route.abort()

            pg.route("**/*", only_ours)
            pg.goto(url + "/docs")
            pg.locator(".opblock").first.wait_for(timeout=30_000)  # Swagger UI ran and read our OpenAPI spec
            paths = pg.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
            assert "/v1/entities" in "".join(paths) and len(paths) >= 4, paths
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert elsewhere == []
