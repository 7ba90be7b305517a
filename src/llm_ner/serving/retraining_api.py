"""Retraining's routes: POST /train (the older protocol's call, and any client with a training key), GET
/v1/training (the jobs, what of each export was used, the gate's scores, what is served), POST /v1/training/rollback;
and the `Retrainer` on `app.state.retrainer` that Label Studio's START_TRAINING (label_studio.py) also goes through.
The queue itself (one job, a time limit, the gate's files, the pointer) is retraining.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .commands import train_command
from .middleware import auth
from .retraining import EXPORT_FILE, ROUND, Busy, Job, TrainingQueue, clean_export, split_holdout
from .served import Served
from .settings import ServeConfig

STARTED = {201: {"description": "acknowledged (a training job started, or why not)"}}
def training_off() -> JSONResponse:
    return JSONResponse({"status": "ok", "result": "training is off: start the server with --train-dir DIR to "
                                                       "retrain on the project's annotations"}, 201)
AUTH = {400: {"description": "the body is not parseable (e.g. not JSON)"},
        401: {"description": "an API key is required and was missing or wrong"},
        403: {"description": "the key may predict, not train"}}
ERRORS = {**AUTH, 400: {"description": "nothing to train on, or the body is not parseable"},
          409: {"description": "a training job is running (one at a time)"},
          413: {"description": "the export is over its byte limit"},
          422: {"description": "the export is not a list of tasks"}}


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # Label Studio sends more than we read
    annotations: list[dict[str, Any]] = Field(default_factory=list, description="tasks in the export layout")


class JobOut(BaseModel):
    id: int
    round: str = Field(description="the round's directory under the training dir")
    status: str = Field(description="running | done | failed | timed out | interrupted")
    detail: str
    seconds: float | None = None
    export: dict = Field(description="what of the export was used and dropped: tasks, annotations, "
                                     "cancelled_dropped, predictions_dropped, unannotated_dropped, held_out")
    f1: float | None = Field(None, description="the new model's F1 on the held-out data")
    served_f1: float | None = Field(None, description="the model served then, on the same data")
    gold_entities: int | None = Field(None, description="the gold entities of the held-out data the gate scored")
    judged: bool | None = Field(None, description="false: too few gold entities to judge (--promote-min-entities); "
                                                  "the round is kept, not served")
    promoted: bool | None = Field(None, description="whether the gate let the round be served")


class TrainingResponse(BaseModel):
    jobs: list[JobOut]
    served: str | None = Field(description="the round served (null: the model the server was started on)")
    model_version: str


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round: str = Field(description="a kept round (round_K) to serve again, or 'start' for the model the server "
                                   "was started on")


class Retrainer:
    """Starts a round on an export and, when it ends, lets the gate decide whether it is served."""

    def __init__(self, cfg: ServeConfig, queue: TrainingQueue, served: Served):
        self.cfg, self.queue, self.served = cfg, queue, served
        queue.protect = lambda: Path(served.model_dir)
        queue.prune(queue.protect())  # what an earlier server left (an interrupted round) within the cap at start

    async def start(self, tasks: object) -> JSONResponse:
        cfg, queue = self.cfg, self.queue
        if queue.running:
            raise HTTPException(409, str(Busy(queue.running)))
        # cleaning, measuring and splitting a 50 MB export takes a while: in a thread, never on the event loop
        tasks, held, counts = await asyncio.to_thread(self._prepare, tasks)
        if queue.running:  # another request started a job while this one was being prepared
            raise HTTPException(409, str(Busy(queue.running)))
        job = queue.new_round(tasks, held, counts)
        served = str(self.served.model_dir)
        run_dir = queue.root / job.round
        queue.start(job, [train_command(served, str(run_dir / EXPORT_FILE), str(run_dir), cfg.train_config,
                                        cfg.train_set),
                          *queue.gate_commands(job, served, cfg.promote_data)], self.judge)
        return JSONResponse({"status": "ok", "result": {"job": job.id, "round": job.round, "export": counts}}, 201)

    def _prepare(self, tasks: object) -> tuple[list[dict], list[dict], dict]:
        """What of the export trains and what is held out for the gate, with the counts; HTTPException if none."""
        cfg = self.cfg
        try:
            tasks, counts = clean_export(tasks)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        if (n := len(json.dumps(tasks, ensure_ascii=False).encode())) > cfg.max_export_bytes:
            raise HTTPException(413, f"the export has {n} bytes; the limit is {cfg.max_export_bytes}")
        held: list[dict] = []
        if not cfg.promote_data:
            if len(tasks) < 2:
                raise HTTPException(400, f"{len(tasks)} annotated task(s) (cancelled ones and predictions are not "
                                         "labels): at least 2 are needed, one is held out to judge the new model")
            tasks, held = split_holdout(tasks, cfg.holdout)
            counts["held_out"] = len(held)
        elif not tasks:
            raise HTTPException(400, "no annotated task to train on (cancelled ones and predictions are not labels)")
        return tasks, held, counts

    async def judge(self, job: Job) -> str:
        """The gate: the round is served if the held-out data holds enough gold entities to judge and it scored at
        least the served model's F1 + margin there; otherwise it is kept on disk (a rollback can still serve it)
        and the served model stays."""
        cfg = self.cfg
        if not self.queue.verdict(job, cfg.promote_margin, cfg.promote_min_entities):
            if not job.judged:
                return (f"not judged, kept, not served: the held-out data holds {job.gold_entities} gold entities, "
                        f"fewer than --promote-min-entities {cfg.promote_min_entities}")
            return (f"kept, not served: held-out F1 {job.f1} < the served model's {job.served_f1} + margin "
                    f"{cfg.promote_margin:g}")
        await self.serve(job.round)
        return f"served as {self.served.version()}: held-out F1 {job.f1} against {job.served_f1}"

    async def serve(self, round_name: str | None) -> None:
        """Serve a round (None: the model the server was started on), then point `current.json` at it."""
        model_dir = str(self.queue.model_dir_of(round_name)) if round_name else self.cfg.model_dir
        try:
            await self.served.swap(model_dir)
        except Exception as e:
            raise RuntimeError(f"the model of {round_name or 'the start'} did not load ({type(e).__name__})") from e
        self.queue.point(round_name)
        self.queue.prune(Path(self.served.model_dir))


def router(cfg: ServeConfig) -> APIRouter:
    """Retraining's routes, each with its auth scope."""
    r = APIRouter(tags=["label-studio"])
    r.add_api_route("/train", train, methods=["POST"], responses={**ERRORS, **STARTED}, **auth("train"))
    r.add_api_route("/v1/training", training, methods=["GET"], response_model=TrainingResponse, **auth("predict"))
    r.add_api_route("/v1/training/rollback", rollback, methods=["POST"], response_model=TrainingResponse,
                    **auth("train"), responses={
                        **AUTH, 404: {"description": "training is off, or no such kept round with a model"},
                        409: {"description": "a training job is running, or the round did not finish or its model "
                                             "does not load"}})
    return r


def _retrainer(request: Request) -> Retrainer:
    if request.app.state.retrainer is None:
        raise HTTPException(404, "training is off: start the server with --train-dir DIR")
    return request.app.state.retrainer


async def train(body: TrainRequest, request: Request) -> JSONResponse:
    rt = request.app.state.retrainer
    return await rt.start(body.annotations) if rt else training_off()


async def training(request: Request) -> TrainingResponse:
    rt, served = request.app.state.retrainer, request.app.state.served
    jobs = rt.queue.jobs if rt else []
    return TrainingResponse(jobs=[JobOut(**{k: getattr(j, k) for k in JobOut.model_fields}) for j in jobs],
                            served=rt.queue.current() if rt else None, model_version=served.version())


async def rollback(body: RollbackRequest, request: Request) -> TrainingResponse:
    rt = _retrainer(request)
    name = None if body.round == "start" else body.round
    if name is not None and not (ROUND.match(name) and rt.queue.model_dir_of(name).is_dir()):
        raise HTTPException(404, f"no kept round {body.round!r} with a model")
    if rt.queue.running:
        raise HTTPException(409, str(Busy(rt.queue.running)))
    if name is not None and (job := rt.queue.job_of(name)) is not None and job.status != "done":
        raise HTTPException(409, f"{name} did not finish ({job.status}): it has no model to serve")
    try:
        await rt.serve(name)
    except RuntimeError as e:  # a partial or broken model dir: the served model stays
        raise HTTPException(409, f"{e}; the served model is unchanged") from None
    return await training(request)
