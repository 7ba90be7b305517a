"""Label Studio calls us: the ML-backend protocol — the endpoints of HumanSignal/label-studio-ml-backend's api.py, as
Label Studio (1.23, ml/api_connector.py) calls them — on the same app, the same batcher and the same API keys as
/v1/entities.

  POST /setup    {project: "ID.TIMESTAMP", schema: labeling config, hostname, access_token} -> {model_version}.
                 A config with no <Labels> over a <Text>, or none of whose labels the model knows, is refused (422),
                 so the project shows the problem when it connects. The token is kept (to fetch the export) when
                 the caller may train (a training key, or no keys); the
                 hostname is not used: exports come only from the operator's --label-studio-url.
  POST /predict  {tasks: [{id, data: {FIELD: text}}], label_config, project} -> {results: [a prediction per task:
                 {result: [a region per entity, with its score], score, model_version}]}
  POST /webhook  {action, project: {id, ...}, ...}: ANNOTATION_CREATED / _UPDATED / _DELETED are acknowledged;
                 START_TRAINING fetches the project's export from --label-studio-url (with the token from /setup)
                 and retrains. Other actions: 200 {"status": "Unknown event"}, as the SDK answers.
  POST /train    {annotations: [tasks with annotations, in the export layout], project, label_config}: the older
                 protocol's training call, same job.

  POST /v1/training/rollback {round: "round_K" | "start"}: serve a kept round (or the model started on) again.

Retraining (only with `serve --train-dir DIR`: a server does not start CPU-heavy jobs unless told) runs `llm-ner
train --init <the served model>` on the project's submitted annotations (never cancelled ones, never predictions)
into DIR/round_K, in a separate process (retraining.py: one job at a time, a time limit); then the promotion gate
scores the new model and the served one on held-out data, and only a round at least as good (+ margin) is served —
/setup and every prediction then name its version. GET /v1/training lists the jobs, what of the export each used, and
its scores. Training, rollback and START_TRAINING need a training key when keys are set (serve.py's ApiKeys).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import socket
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .batcher import TextFailed
from .middleware import auth
from .retraining_api import STARTED, training_off

log = logging.getLogger(__name__)

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # Label Studio sends more than we read; newer versions add fields


class SetupRequest(_Open):
    project: str = Field("", description="'ID.TIMESTAMP'")
    label_config: str = Field("", alias="schema", description="the project's labeling config (XML)")
    hostname: str | None = Field(None, description="where Label Studio says it is: not used (the server fetches "
                                                   "exports only from its --label-studio-url)")
    access_token: str | None = None


class Task(_Open):
    id: int | str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class PredictRequest(_Open):
    tasks: list[Task]
    label_config: str
    project: str | None = None


class WebhookRequest(_Open):
    action: str
    project: dict[str, Any] | None = None


class SetupResponse(BaseModel):
    model_version: str


class PredictResponse(BaseModel):
    results: list[dict[str, Any]] = Field(description="a prediction per task: result (regions), score, model_version")
    model_version: str


ERRORS = {400: {"description": "nothing to train on"},
          409: {"description": "a training job or an export fetch is running (one at a time), START_TRAINING for a "
                               "project not set up with a token or on a server without --label-studio-url, or too "
                               "many projects"},
          413: {"description": "the tasks' texts are over the request's character limit, or the export over its "
                               "byte limit"},
          422: {"description": "the body or the labeling config cannot be used (named in detail)"},
          429: {"description": "the queue is full; retry after the Retry-After seconds"},
          502: {"description": "Label Studio could not be reached for the project's annotations"},
          503: {"description": "not answered in time, or the server is unhealthy"}}


@dataclass(frozen=True)
class Schema:
    """What a project's labeling config says about spans over text: which control, over which text, which labels."""
    from_name: str
    to_name: str
    field: str  # the task data key the text is in ($text -> "text")
    labels: tuple[str, ...]


def parse_schema(config: str | None, model_types: tuple[str, ...]) -> Schema:
    """The first <Labels> over a <Text> in a labeling config; 422 if there is none, or if it shares no label with
    the model (its entities would all be dropped)."""
    try:
        root = ET.fromstring(config or "")
    except ET.ParseError as e:
        raise HTTPException(422, f"the labeling config is not XML ({e})") from None
    texts = {t.get("name"): (t.get("value") or "").lstrip("$") for t in root.iter("Text")}
    for ctl in root.iter("Labels"):
        if ctl.get("toName") in texts:
            labels = tuple(lab.get("value") for lab in ctl.iter("Label") if lab.get("value"))
            if not set(labels) & set(model_types):
                raise HTTPException(422, f"the project's labels {list(labels)} share none with the model's "
                                         f"{list(model_types)}")
            return Schema(ctl.get("name"), ctl.get("toName"), texts[ctl.get("toName")], labels)
    raise HTTPException(422, "the labeling config has no <Labels> over a <Text>: nothing for an NER model to do")


MAX_TOKEN_CHARS = 512  # a Label Studio token is 40 hex characters (legacy) or a JWT of a few hundred


def fetch_export(base_url: str, token: str, project_id: str, dest: Path, timeout: float, max_bytes: int) -> object:
    """The project's tasks with their annotations, from Label Studio's export API (the JSON export layout), streamed
    to `dest` under a total deadline and a byte cap; then parsed. Raises OSError / ValueError (the caller logs the
    reason and answers a generic 502).

    http.client, not urllib: no redirect is followed (it would carry the token elsewhere), no proxy is read from the
    environment, only http(s). The deadline covers everything — connecting, the status line and headers, the body:
    a timer shuts the socket when it passes, so a host dripping its headers a byte at a time cannot hold a worker
    (a socket timeout alone bounds each read, not their sum)."""
    if not project_id.isdigit():
        raise ValueError(f"project id {project_id!r} is not a number")
    u = urlsplit(base_url)
    conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(u.hostname, u.port, timeout=min(10.0, timeout))
    path = f"{u.path.rstrip('/')}/api/projects/{project_id}/export?exportType=JSON"
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
    timer = threading.Timer(timeout, expire)
    timer.start()
    n = 0
    try:
        conn.request("GET", path, headers={"Authorization": f"Token {token}"})
        r = conn.getresponse()
        if r.status != 200:  # a 3xx is refused like any other answer: the token goes nowhere else
            raise ExportRefused(f"Label Studio answered {r.status} {r.reason}")
        with open(dest, "wb") as out:
            while chunk := r.read1(65536):  # what has arrived, not 64 KiB (read() would wait for a dripping host)
                n += len(chunk)
                if n > max_bytes:
                    raise ExportTooLarge(f"the export is over {max_bytes} bytes")
                out.write(chunk)
                if expired.is_set():
                    break
    except (OSError, http.client.HTTPException) as e:
        if expired.is_set():
            raise TimeoutError(f"the export took more than {timeout:g} s") from None
        if isinstance(e, OSError):
            raise
        raise ConnectionError(f"{type(e).__name__}: {e}") from None  # a malformed answer: the caller's OSError
    finally:
        timer.cancel()
        conn.close()
    if expired.is_set():
        raise TimeoutError(f"the export took more than {timeout:g} s")
    with open(dest, "rb") as f:
        return json.load(f)


class ExportRefused(ConnectionError):
    """Label Studio answered, but not with the export (an error status, or a redirect we do not follow)."""


class ExportTooLarge(ValueError):
    pass


class Projects:
    """The Label Studio link's state, on `app.state.label_studio` beside `served` and `retrainer`: each project's
    access token from /setup (to fetch its export), and the one download thread and lock exports go through."""

    def __init__(self, max_projects: int):
        self.max_projects = max_projects
        self.tokens: dict[str, str] = {}  # project id -> the access token /setup gave
        self.fetcher = ThreadPoolExecutor(1, thread_name_prefix="ls-export")  # never the pool predictions run in
        self.fetching = asyncio.Lock()  # one export download at a time

    def remember(self, pid: str, token: str) -> None:
        if len(token) > MAX_TOKEN_CHARS or not pid.isdigit():
            raise HTTPException(422, f"a project id is a number and a token at most {MAX_TOKEN_CHARS} characters")
        if pid not in self.tokens and len(self.tokens) >= self.max_projects:
            raise HTTPException(409, f"{self.max_projects} projects are set up already (--max-projects)")
        self.tokens[pid] = token


def router(cfg) -> APIRouter:
    """The ML-backend endpoints, each with its auth scope. The served model is `app.state.served`; START_TRAINING
    hands the fetched export to `app.state.retrainer` (retraining_api.py), which is None when training is off."""
    r = APIRouter(tags=["label-studio"])
    r.add_api_route("/setup", setup, methods=["POST"], response_model=SetupResponse, responses=ERRORS,
                    **auth("predict"))
    r.add_api_route("/predict", predict, methods=["POST"], response_model=PredictResponse, responses=ERRORS,
                    **auth("predict"))
    r.add_api_route("/webhook", webhook, methods=["POST"], **auth("train"),
                    responses={**ERRORS, **STARTED, 200: {"description": "an event we do not act on"}})
    return r


async def setup(body: SetupRequest, request: Request) -> SetupResponse:
    served = request.app.state.served
    parse_schema(body.label_config, tuple(served.ner.labels.types))
    # the token training fetches exports with is kept only from a caller who may train: a prediction key must not
    # swap in a token of its own (the next training would fetch with it)
    if body.access_token and getattr(request.state, "may_train", True):
        request.app.state.label_studio.remember(body.project.split(".", 1)[0], body.access_token)
    return SetupResponse(model_version=served.version())


async def predict(body: PredictRequest, request: Request) -> PredictResponse:
    cfg, served = request.app.state.cfg, request.app.state.served
    schema = parse_schema(body.label_config, tuple(served.ner.labels.types))
    if len(body.tasks) > cfg.max_batch:
        raise HTTPException(413, f"{len(body.tasks)} tasks; the limit is {cfg.max_batch} (--max-batch)")
    texts = [str(t.data.get(schema.field, "")) for t in body.tasks]
    if (long := next((i for i, t in enumerate(texts) if len(t) > cfg.max_text_chars), None)) is not None:
        raise HTTPException(413, f"tasks[{long}] has {len(texts[long])} characters; the limit is {cfg.max_text_chars}")
    if (n := sum(map(len, texts))) > cfg.max_request_chars:
        raise HTTPException(413, f"the tasks' texts have {n} characters in all; the limit is {cfg.max_request_chars}")
    try:
        res = await served.batcher.submit(texts) if texts else []
    except TextFailed as e:
        where = f"tasks[{e.index}]" if e.index is not None else "the tasks"
        log.error("%s of a /predict request could not be processed: %s", where, e)
        raise HTTPException(422, f"{where} could not be processed ({type(e.error).__name__})") from None
    keep = set(schema.labels)  # the project cannot show a label it does not have
    regions = res.to("label-studio-regions", model=served.version(), from_name=schema.from_name,
                     to_name=schema.to_name, labels=keep) if texts else []
    return PredictResponse(results=regions, model_version=served.version())


async def webhook(body: WebhookRequest, request: Request) -> JSONResponse:
    retrainer = request.app.state.retrainer
    if body.action not in TRAIN_EVENTS:
        return JSONResponse({"status": "Unknown event"}, 200)
    if body.action != "START_TRAINING":
        return JSONResponse({"status": "ok", "result": f"{body.action} noted; training starts on START_TRAINING"},
                            201)
    if retrainer is None:
        return training_off()
    tasks = await fetch_project(request.app.state.cfg, request.app.state.label_studio, retrainer,
                                str((body.project or {}).get("id", "")))
    return await retrainer.start(tasks)


async def fetch_project(cfg, projects: Projects, retrainer, pid: str) -> object:
    """The project's export from the operator's --label-studio-url, with the token /setup gave; one at a time."""
    if not cfg.label_studio_url or pid not in projects.tokens:
        raise HTTPException(409, "cannot fetch the project's annotations: the server has no --label-studio-url"
                            if not cfg.label_studio_url else f"project {pid!r} was not set up with a token (/setup)")
    if projects.fetching.locked() or retrainer.queue.running:
        raise HTTPException(409, "a training job, or the fetch of an export, is under way; one at a time")
    async with projects.fetching:
        dest = retrainer.queue.root / f".export-{pid}.part"
        try:
            return await asyncio.get_running_loop().run_in_executor(
                projects.fetcher, fetch_export, cfg.label_studio_url, projects.tokens[pid], pid, dest,
                cfg.fetch_timeout, cfg.max_export_bytes)
        except ExportTooLarge as e:
            raise HTTPException(413, f"{e}; the limit is --max-export-bytes") from None
        except (OSError, ValueError) as e:  # unreachable, refused, redirected, too slow, or not JSON
            log.warning("fetching project %s's export from Label Studio failed: %s", pid, e)
            raise HTTPException(502, "could not fetch the project's annotations from Label Studio (the server's log "
                                     "says why)") from None
        finally:
            dest.unlink(missing_ok=True)
