"""Label Studio calls us: the ML-backend protocol — the endpoints of HumanSignal/label-studio-ml-backend's api.py, as
Label Studio (1.23, ml/api_connector.py) calls them — on the same app, the same batcher and the same API keys as
/v1/entities.

  POST /setup    {project: "ID.TIMESTAMP", schema: labeling config, hostname, access_token} -> {model_version}.
                 A config with no <Labels> over a <Text>, or none of whose labels the model knows, is refused (422),
                 so the project shows the problem when it connects.
  POST /predict  {tasks: [{id, data: {FIELD: text}}], label_config, project} -> {results: [a prediction per task:
                 {result: [a region per entity, with its score], score, model_version}]}
  POST /webhook  {action, project: {id, ...}, ...}: ANNOTATION_CREATED / _UPDATED / _DELETED are acknowledged;
                 START_TRAINING fetches the project's export from Label Studio (hostname and token from /setup) and
                 retrains. Other actions: 200 {"status": "Unknown event"}, as the SDK answers.
  POST /train    {annotations: [tasks with annotations, in the export layout], project, label_config}: the older
                 protocol's training call, same job.

Retraining (only with `serve --train-dir DIR`: a server does not start CPU-heavy jobs unless told) runs `llm-ner
train --init <the served model>` on the project's annotations into DIR/round_K, in a separate process; when it
succeeds, the server loads the new model, and /setup and every prediction name its version. GET /v1/training lists
the jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..rundir import model_tag
from .training import Busy, TrainingQueue, train_command

log = logging.getLogger(__name__)

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")
PATHS = {"/setup", "/predict", "/webhook", "/train", "/v1/training"}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # Label Studio sends more than we read; newer versions add fields


class SetupRequest(_Open):
    project: str = Field("", description="'ID.TIMESTAMP'")
    label_config: str = Field("", alias="schema", description="the project's labeling config (XML)")
    hostname: str | None = Field(None, description="where Label Studio is (to fetch annotations for training)")
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


class TrainRequest(_Open):
    annotations: list[dict[str, Any]] = Field(default_factory=list, description="tasks in the export layout")


class SetupResponse(BaseModel):
    model_version: str


class PredictResponse(BaseModel):
    results: list[dict[str, Any]] = Field(description="a prediction per task: result (regions), score, model_version")
    model_version: str


class JobOut(BaseModel):
    id: int
    round: str = Field(description="the round's directory under the training dir")
    status: str = Field(description="running | done | failed | timed out | interrupted")
    detail: str
    seconds: float | None = None


class TrainingResponse(BaseModel):
    jobs: list[JobOut]
    model_version: str


ERRORS = {400: {"description": "nothing to train on"},
          409: {"description": "a training job is running (one at a time), or START_TRAINING for a project that was "
                               "not set up with a hostname and token"},
          413: {"description": "the tasks' texts are over the request's character limit, or the export over its "
                               "byte limit"},
          422: {"description": "the body or the labeling config cannot be used (named in detail)"},
          429: {"description": "the queue is full; retry after the Retry-After seconds"},
          502: {"description": "Label Studio could not be reached for the project's annotations"},
          503: {"description": "not answered in time, or the server is unhealthy"}}
STARTED = {201: {"description": "acknowledged (a training job started, or why not)"}}


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


@dataclass
class Projects:
    """What /setup told us per project (the Label Studio host and token to fetch its export)."""
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)  # project id -> (hostname, access token)


def fetch_export(hostname: str, token: str, project_id: str) -> list[dict]:
    """The project's tasks with their annotations, from Label Studio's export API (the JSON export layout)."""
    url = f"{hostname.rstrip('/')}/api/projects/{project_id}/export?exportType=JSON"
    req = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (the host Label Studio itself gave us)
        return json.loads(r.read())


def add_routes(app: FastAPI, cfg, state: dict, reload) -> None:
    """The ML-backend endpoints. `state` holds the live model ("ner"), batcher and identity; `reload(model_dir)`
    swaps in a retrained model."""
    projects = Projects()

    def version() -> str:
        return model_tag(state["identity"])

    @app.post("/setup", tags=["label-studio"], response_model=SetupResponse, responses=ERRORS)
    async def setup(body: SetupRequest) -> SetupResponse:
        parse_schema(body.label_config, tuple(state["ner"].labels.types))
        pid = body.project.split(".", 1)[0]
        if body.hostname and body.access_token:
            projects.hosts[pid] = (body.hostname, body.access_token)
        return SetupResponse(model_version=version())

    @app.post("/predict", tags=["label-studio"], response_model=PredictResponse, responses=ERRORS)
    async def predict(body: PredictRequest) -> PredictResponse:
        schema = parse_schema(body.label_config, tuple(state["ner"].labels.types))
        texts = [str(t.data.get(schema.field, "")) for t in body.tasks]
        if (n := sum(map(len, texts))) > cfg.max_request_chars:
            raise HTTPException(413, f"the tasks' texts have {n} characters in all; the limit is "
                                     f"{cfg.max_request_chars}")
        res = await state["batcher"].submit(texts) if texts else []
        keep = set(schema.labels)  # the project cannot show a label it does not have
        return PredictResponse(results=res.to("label-studio-regions", model=version(), from_name=schema.from_name,
                                              to_name=schema.to_name, labels=keep) if texts else [],
                               model_version=version())

    queue = TrainingQueue(cfg.train_dir, cfg.train_timeout, cfg.keep_rounds, cfg.train_threads) if cfg.train_dir \
        else None
    app.state.training = queue  # serve's lifespan stops its job with the server

    async def start_training(tasks: list[dict]) -> JSONResponse:
        if queue is None:
            return JSONResponse({"status": "ok", "result": "training is off: start the server with --train-dir DIR "
                                                           "to retrain on the project's annotations"}, 201)
        if not any(t.get("annotations") for t in tasks if isinstance(t, dict)):
            raise HTTPException(400, "no annotated task to train on")
        if (n := len(json.dumps(tasks, ensure_ascii=False).encode())) > cfg.max_export_bytes:
            raise HTTPException(413, f"the export has {n} bytes; the limit is {cfg.max_export_bytes}")
        try:
            job = queue.new_round(tasks)
        except Busy as e:
            raise HTTPException(409, str(e)) from None
        queue.start(job, train_command(str(state["model_dir"]), queue.root / job.round, cfg.train_config,
                                       cfg.train_set), _serve_new)
        return JSONResponse({"status": "ok", "result": {"job": job.id, "round": job.round}}, 201)

    async def _serve_new(job) -> str:
        """A job that succeeded: its model is served (the old one keeps serving if it does not load); rounds beyond
        the kept number are removed, never the served one."""
        try:
            await reload(str(queue.model_dir(job)))
        except Exception as e:
            raise RuntimeError(f"the retrained model did not load ({type(e).__name__})") from e
        queue.prune(Path(state["model_dir"]))
        return version()

    @app.post("/webhook", tags=["label-studio"], responses={**ERRORS, **STARTED,
                                                             200: {"description": "an event we do not act on"}})
    async def webhook(body: WebhookRequest) -> JSONResponse:
        if body.action not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event"}, 200)
        if body.action != "START_TRAINING":
            return JSONResponse({"status": "ok", "result": f"{body.action} noted; training starts on START_TRAINING"},
                                201)
        if not cfg.train_dir:
            return await start_training([])  # says training is off, without fetching anything
        pid = str((body.project or {}).get("id", ""))
        if pid not in projects.hosts:
            raise HTTPException(409, f"project {pid!r} was not set up with a hostname and token (/setup): cannot "
                                     "fetch its annotations")
        try:
            tasks = await asyncio.get_running_loop().run_in_executor(None, fetch_export, *projects.hosts[pid], pid)
        except (OSError, ValueError) as e:  # unreachable, refused, or not JSON
            raise HTTPException(502, f"could not fetch project {pid}'s annotations from Label Studio ({e})") from None
        return await start_training(tasks)

    @app.post("/train", tags=["label-studio"], responses={**ERRORS, **STARTED})
    async def train(body: TrainRequest) -> JSONResponse:
        return await start_training(body.annotations)

    @app.get("/v1/training", tags=["label-studio"], response_model=TrainingResponse)
    async def training() -> TrainingResponse:
        jobs = queue.jobs if queue else []
        return TrainingResponse(jobs=[JobOut(id=j.id, round=j.round, status=j.status, detail=j.detail,
                                             seconds=j.seconds) for j in jobs], model_version=version())
