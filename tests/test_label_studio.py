"""Label Studio calls us (issue 23 item 3): the real Label Studio (1.23.2, in its own virtual environment — its
Django stack does not install beside ours) connects a project to `llm-ner serve` as an ML backend, asks for
predictions, and starts training on its annotations; the server retrains (`train --init`) and serves the new model.
No mock on either side."""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_serve import free_port, get_json, start_server
from venvs import locked_venv

from llm_ner.inference.engine import NERModel

pytestmark = pytest.mark.outputs  # runs a model: CI runs it again on forced-down CPU kernels

LABEL_STUDIO = "label-studio"  # locks/label-studio.txt: Label Studio 1.23.2 and every dependency, pinned with hashes
TOKEN = "llmnertesttoken0123456789abcdef"
CONFIG = ('<View><Labels name="label" toName="text"><Label value="PER"/><Label value="LOC"/><Label value="ORG"/>'
          '</Labels><Text name="text" value="$text"/></View>')
TEXTS = ["Peter Blackburn visited New York on Monday .", "Apple hired John Smith from Google in London .",
         "The weather was fine .", "Angela Merkel met Emmanuel Macron in Paris ."]
# Label Studio's own settings read after Django starts: legacy tokens (what it hands an ML backend in /setup, to fetch
# the project's export) are off by default for a new organisation in 1.23; an administrator turns them on.
LEGACY_TOKENS = """
import os, sys
import label_studio
sys.path.insert(0, os.path.dirname(label_studio.__file__))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")
import django
django.setup()
from organizations.models import Organization

for o in Organization.objects.all():
    o.jwt.legacy_api_tokens_enabled = True
    o.jwt.save()
"""


def label_studio_venv() -> Path:
    """Label Studio's own venv, from its lock (tests/venvs.py), made once per lock under the user cache."""
    try:
        return locked_venv(LABEL_STUDIO)
    except RuntimeError as e:
        pytest.fail(str(e))


def start_label_studio(venv: Path, data: Path) -> tuple[subprocess.Popen, str, dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_HOST": url,
           # our backend listens on 127.0.0.1, which Label Studio refuses to call by default (its SSRF guard)
           "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false"}
    proc = subprocess.Popen([str(venv / "bin" / "label-studio"), "start", "--no-browser", "--port", str(port),
                             "--username", "test@example.org", "--password", "test-password-1", "--user-token",
                             TOKEN], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        try:
            if get_json(url + "/health").get("status") == "UP":
                return proc, url, env
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("Label Studio did not start: " + proc.stdout.read().decode()[-2000:])
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def label_studio_data(venv: Path) -> Path:
    """A data dir holding a migrated database with the test user, its token and legacy tokens on, made once beside
    the venv: a first start on an empty dir spends about a minute in Django's migrations, a start on a copy ~8 s."""
    template = venv.parent / f"{venv.name}-data"
    if not (template / "label_studio.sqlite3").is_file():
        building = Path(str(template) + f".building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        proc, _, env = start_label_studio(venv, building)
        try:
            subprocess.run([str(venv / "bin" / "python"), "-c", LEGACY_TOKENS], env=env, check=True,
                           capture_output=True)
        finally:
            stop(proc)
        shutil.rmtree(template, ignore_errors=True)
        building.rename(template)
    return template


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    venv = label_studio_venv()
    data = tmp_path_factory.mktemp("ls") / "data"
    shutil.copytree(label_studio_data(venv), data)
    proc, url, _ = start_label_studio(venv, data)
    yield url
    stop(proc)


def ls(url: str, path: str, body=None, method: str | None = None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def regions(prediction: dict) -> list[tuple]:
    return sorted((r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in prediction["result"])


def test_label_studio_predicts_and_retrains_through_us(label_studio, tiny_ner_dir, tmp_path):
    proc, backend = start_server(tiny_ner_dir, "--train-dir", str(tmp_path / "rounds"), "--train-set",
                                 "training.max_steps=2", "--label-studio-url", label_studio,
                                 "--promote-margin", "-100", "--promote-min-entities", "1")  # the gate runs
    # on the one held-out task's entity; any score passes it here
    try:
        status, project = ls(label_studio, "/api/projects", {"title": "ner", "label_config": CONFIG})
        assert status == 201, project
        pid = project["id"]
        assert ls(label_studio, f"/api/projects/{pid}/import", [{"text": t} for t in TEXTS])[0] == 201
        status, ml = ls(label_studio, "/api/ml", {"url": backend, "project": pid, "title": "llm-ner"})
        assert status == 201 and ml["readable_state"] == "Connected", ml  # Label Studio called /health and /setup
        ident = get_json(backend + "/health")["model"]
        assert ml["model_version"] == f"{ident['name']}@{ident['version']}"

        # predictions: Label Studio calls /predict and stores what we return
        status, res = ls(label_studio, f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
                         {"selectedItems": {"all": True, "excluded": []}})
        assert status == 200 and res["processed_items"] == len(TEXTS), res
        _, preds = ls(label_studio, f"/api/predictions?project={pid}")
        _, tasks = ls(label_studio, f"/api/tasks?project={pid}&fields=all")
        text_of = {t["id"]: t["data"]["text"] for t in tasks["tasks"]}
        ner = NERModel.from_pretrained(tiny_ner_dir)
        assert len(preds) == len(TEXTS)
        for p in preds:
            want = sorted((e.start, e.end, e.label) for e in ner(text_of[p["task"]]).entities[0])
            assert regions(p) == want and p["model_version"] == ml["model_version"]
            assert all(0 <= r["score"] <= 1 and r["from_name"] == "label" and r["to_name"] == "text"
                       for r in p["result"])

        # three tasks annotated in Label Studio, one skipped, then "Start training": Label Studio sends
        # START_TRAINING, we fetch the project's export (from --label-studio-url, with the token from /setup),
        # retrain from the served model on what was not held out for the gate, and serve the result
        spans = [(0, 15, "PER"), (0, 5, "ORG"), (0, 13, "PER")]
        for task_id, (start, end, label) in zip([t for t in sorted(text_of) if t != sorted(text_of)[2]], spans,
                                                strict=True):
            text = text_of[task_id]
            result = [{"from_name": "label", "to_name": "text", "type": "labels",
                       "value": {"start": start, "end": end, "text": text[start:end], "labels": [label]}}]
            assert ls(label_studio, f"/api/tasks/{task_id}/annotations", {"result": result})[0] == 201
        skipped = sorted(text_of)[2]  # "Skip" in Label Studio: a cancelled annotation, which is not a label
        assert ls(label_studio, f"/api/tasks/{skipped}/annotations", {"result": [], "was_cancelled": True})[0] == 201
        status, _ = ls(label_studio, f"/api/ml/{ml['id']}/train", {}, "POST")
        assert status == 200, _
        deadline = time.time() + 300
        while (jobs := get_json(backend + "/v1/training")["jobs"]) == [] or jobs[0]["status"] == "running":
            assert time.time() < deadline, jobs
            time.sleep(1)
        assert jobs[0]["status"] == "done", jobs
        assert jobs[0]["round"] == "round_1" and "/" not in jobs[0]["detail"]  # relative names only
        run = tmp_path / "rounds" / jobs[0]["round"]
        summary = json.loads((run / "summary.json").read_text())
        used = jobs[0]["export"]
        assert used["tasks"] == 3 and used["cancelled_dropped"] == 1 and used["predictions_dropped"] == len(TEXTS)
        assert summary["init"]["model_dir"] == str(tiny_ner_dir) and summary["train_sentences"] == 3 - used["held_out"]
        new = get_json(backend + "/health")["model"]
        assert new["version"] != ident["version"] and jobs[0]["promoted"] and f"{new['name']}@{new['version']}" in \
            jobs[0]["detail"]
        # Label Studio sees the new version at its next setup, and the predictions come from the new model
        status, ml2 = ls(label_studio, f"/api/ml/{ml['id']}")  # Label Studio asks /setup again
        assert status == 200 and ml2["model_version"] == f"{new['name']}@{new['version']}", ml2

        # a project whose labels the model does not have cannot connect: /setup refuses it
        status, other = ls(label_studio, "/api/projects", {"title": "pii", "label_config": CONFIG.replace(
            '<Label value="PER"/><Label value="LOC"/><Label value="ORG"/>', '<Label value="EMAIL"/>')})
        status, refused = ls(label_studio, "/api/ml", {"url": backend, "project": other["id"], "title": "x"})
        assert status == 400 and "422" in json.dumps(refused), refused
    finally:
        stop(proc)
