"""HTTP service over NERModel (FastAPI + uvicorn).

  GET  /              the demo page (web/demo.html: self-contained, works offline)
  POST /v1/entities   {"texts": ["...", ...]} or {"text": "..."} -> {"results": [{"entities": [...]}, ...]}
  GET  /v1/labels     the model's entity types (with descriptions) and tags
  GET  /health        {"status": "ok", "model": {name, version, labels}, "in_flight": n} once the model is loaded;
                      503 {"status": "error"} if the batching worker has stopped
  GET  /metrics       Prometheus text format: requests by path and status, latency, batch sizes, queue depth
  GET  /docs          OpenAPI UI (FastAPI's Swagger UI, its files served from the package: works offline)

Exposing it: with API keys (`--api-key-file`, or LLM_NER_API_KEYS) every path but /, /health and the OpenAPI docs
needs `Authorization: Bearer KEY` (401 otherwise, saying nothing else); `--cors-origin` allows browsers on other
origins; the raw body is capped before any JSON parsing (413); when `max_queue` requests or `max_queue_chars`
characters already wait for the model, new ones get 429 with Retry-After instead of queueing without bound; a request
not answered within `request_timeout` gets 503. Responses name the model (a name and a content fingerprint), never the
server's filesystem. The CLI refuses a non-loopback host without keys (docs/hardening.md has the threat model).

The model loads once. Concurrent requests are micro-batched: a single worker waits `batch_wait_ms` for more requests,
runs one batched `predict` in a thread, and answers each request with its own slice, so many small requests cost
about as much as one batch; a text the model fails on fails only its own request (422 naming it).
Limits (text length and texts per request, both in the OpenAPI schema; characters per request) give 413 with a clear
message; other malformed bodies give 422 (pydantic). Long texts go through the sliding window like everywhere else.
On SIGTERM the server stops accepting and finishes what is in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ..inference.outputs import Thresholds
from ..rundir import model_identity
from . import label_studio
from .batcher import Batcher, TextFailed
from .middleware import DOCS_ASSETS, ApiKeys, BodyLimit, Metrics
from .settings import ServeConfig
from .training import TrainingQueue

log = logging.getLogger(__name__)


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")  # Host headers a loopback server without keys accepts


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host` (127.0.0.0/8, ::1, localhost): serving there without keys is safe."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def read_api_keys(path: str | None, env_value: str | None) -> tuple[str, ...]:
    """Keys from a file (one per line; blank lines and # comments skipped) and/or a comma-separated variable."""
    keys = []
    if path:
        lines = (k.strip() for k in Path(path).read_text().splitlines())
        keys += [k for k in lines if k and not k.startswith("#")]
    if env_value:
        keys += [k.strip() for k in env_value.split(",") if k.strip()]
    return tuple(keys)


class EntitiesRequest(BaseModel):
    # exactly one of the two fields, and neither may be null: said in the OpenAPI schema too (oneOf), so clients and
    # schema-driven testers know; the size limits are added per app (request_model) from the ServeConfig
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["text"]},
                                                                            {"required": ["texts"]}]})
    text: str = Field(None, description="one text")
    texts: list[str] = Field(None, description="several texts")
    review: bool = Field(False, strict=True, description=(
        "also return, per text, the entities scored below the server's thresholds (--min-score, and the per-type "
        "thresholds saved by `llm-ner calibrate --target-precision`) as `needs_review`; without it they are left out"))

    @model_validator(mode="after")
    def _one_of(self) -> EntitiesRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


def request_model(cfg: ServeConfig) -> type[EntitiesRequest]:
    """EntitiesRequest with this server's limits as maxLength / maxItems, so they are validated and documented."""
    text = Annotated[str, Field(max_length=cfg.max_text_chars)]
    return create_model("EntitiesRequest", __base__=EntitiesRequest,
                        text=(text, Field(None, description=f"one text, at most {cfg.max_text_chars} characters")),
                        texts=(list[text], Field(None, max_length=cfg.max_batch, description=(
                            f"several texts, at most {cfg.max_batch}, each at most {cfg.max_text_chars} characters"))))


TOO_LARGE = {"string_too_long", "too_long"}


def _too_large_message(e: dict) -> str:
    where = "".join(f"[{x}]" if isinstance(x, int) else (f".{x}" if i else str(x))
                    for i, x in enumerate(e.get("loc", ())[1:]))  # ("body", "texts", 3) -> "texts[3]"
    n, limit = len(e.get("input") or ()), (e.get("ctx") or {}).get("max_length")
    unit = "characters" if e["type"] == "string_too_long" else "texts"
    return f"{where} has {n} {unit}; the limit is {limit}"


class EntityOut(BaseModel):
    start: int
    end: int
    label: str
    text: str
    score: float


class TextResult(BaseModel):
    entities: list[EntityOut] = Field(description="entities whose score reaches the thresholds; score = the model's "
                                                  "(calibrated) probability of exactly this entity")
    needs_review: list[EntityOut] | None = Field(None, description="entities below the thresholds (only when the "
                                                                   "request set review: true)")


class ModelInfo(BaseModel):
    name: str
    version: str


class EntitiesResponse(BaseModel):
    results: list[TextResult]
    model: ModelInfo
    latency_ms: float


def create_app(cfg: ServeConfig, ner=None) -> FastAPI:
    queue = TrainingQueue(cfg.train_dir, cfg.train_timeout, cfg.keep_rounds, cfg.train_threads) if cfg.train_dir \
        else None
    served = queue.current() if queue and ner is None else None  # a promoted round outlives a restart
    model_dir = str(queue.model_dir_of(served)) if served else cfg.model_dir
    if served:
        log.info("serving %s (the training dir's current round), not the model given", served)
    state: dict = {"identity": model_identity(model_dir, cfg.model_name, None if served else cfg.model_version),
                   "model_dir": model_dir}
    metrics = Metrics({"/", "/health", "/metrics", "/v1/labels", "/v1/entities"} | label_studio.PATHS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..inference.engine import NERModel

        t0 = time.time()
        state["ner"] = ner or NERModel.from_pretrained(model_dir, device=cfg.device,
                                                          trust_remote_code=cfg.trust_remote_code,
                                                          precision=cfg.precision, min_score=cfg.min_score)
        if ner is not None and cfg.min_score is not None:  # a model handed in (tests, embedding) gets it too
            ner.thresholds = Thresholds.of(cfg.min_score, ner.calibration.get("thresholds"))
        state["load_seconds"] = round(time.time() - t0, 2)
        metrics.load_seconds.set(state["load_seconds"])
        state["batcher"] = app.state.batcher = Batcher(state["ner"], cfg, metrics)
        state["batcher"].start()
        log.info("model %s (%s) loaded in %.1f s", state["identity"]["name"], state["identity"]["version"],
                 state["load_seconds"])
        yield
        await state["batcher"].stop()
        if queue:  # no training process outlives the server
            await queue.stop()

    # FastAPIOffline: /docs is FastAPI's Swagger UI with its files served from the package, not from a CDN (an
    # exposed or air-gapped server must not make browsers load scripts from elsewhere)
    app = FastAPIOffline(title="llm-ner", version="1", lifespan=lifespan, redoc_url=None, static_url=DOCS_ASSETS,
                         description="Named-entity recognition with a transformed decoder LLM.")
    # Starlette runs the last added middleware first: CORS outermost (a preflight is answered, and a 401 or 413
    # still carries the CORS headers a browser needs to read it), then the counting, the key check, the body cap.
    app.add_middleware(BodyLimit, limit=cfg.body_limit())
    app.add_middleware(ApiKeys, keys=cfg.api_keys, train_keys=cfg.train_keys)
    if cfg.allowed_hosts:  # loopback without keys: a web page's DNS rebinding must not reach us by another name
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(cfg.allowed_hosts))
    app.add_middleware(metrics.middleware)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError) -> JSONResponse:
        # Over a size limit only -> 413; anything else malformed -> 422. FastAPI's default echoes the offending input
        # back; a body with NaN/Infinity (which the JSON parser accepts) then fails to render and becomes a 500.
        # Report where and what, never the input itself.
        errors = exc.errors()
        if errors and all(e.get("type") in TOO_LARGE for e in errors):
            return JSONResponse(status_code=413, content={"detail": "; ".join(map(_too_large_message, errors))})
        errs = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
                for e in errors]
        return JSONResponse(status_code=422, content={"detail": errs})

    def model_info() -> dict:
        labels = list(state["ner"].labels.types) if "ner" in state else []
        return {**state["identity"], "labels": labels}

    page = resources.files("llm_ner").joinpath("serving/web/demo.html").read_text(encoding="utf-8")  # read once

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", responses={503: {"description": "the batching worker has stopped: requests cannot be "
                                                        "answered (restart the server)"}})
    async def health() -> JSONResponse:
        b = state.get("batcher")
        dead = b.dead() if b else None
        body = {"status": "error" if dead else "ok", "model": model_info(), "load_seconds": state.get("load_seconds"),
                "in_flight": b.in_flight if b else 0, "queued": b.queue.qsize() if b else 0,
                "queued_chars": b.queued_chars if b else 0}
        return JSONResponse(body | ({"detail": dead} if dead else {}), status_code=503 if dead else 200)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/labels")
    async def labels() -> dict:
        ls = state["ner"].labels
        return {"types": list(ls.types), "tags": ls.tags, "descriptions": ls.descriptions, "model": model_info()}

    async def entities(req: EntitiesRequest) -> EntitiesResponse:
        texts = req.all_texts()
        if (n := sum(map(len, texts))) > cfg.max_request_chars:
            raise HTTPException(413, f"the texts have {n} characters in all; the limit is {cfg.max_request_chars}")
        t0 = time.time()
        try:
            res = await state["batcher"].submit(texts) if texts else []
        except TextFailed as e:
            where = "text" if req.text is not None else (f"texts[{e.index}]" if e.index is not None else "the texts")
            log.error("%s of a request could not be processed: %s", where, e)
            raise HTTPException(422, f"{where} could not be processed ({type(e.error).__name__}); other requests "
                                     "were not affected") from None
        return EntitiesResponse(
            results=[TextResult(**r) for r in replace(res, review=req.review).to("records")] if texts else [],
            model=ModelInfo(**state["identity"]), latency_ms=round(1000 * (time.time() - t0), 2))

    async def reload(model_dir: str) -> None:
        """Serve a retrained model from now on (Label Studio retraining): loaded beside the old one, then swapped."""
        from ..inference.engine import NERModel

        new = await asyncio.get_running_loop().run_in_executor(None, lambda: NERModel.from_pretrained(
            model_dir, device=cfg.device, trust_remote_code=cfg.trust_remote_code, precision=cfg.precision,
            min_score=cfg.min_score))
        state["ner"] = state["batcher"].ner = new
        state["model_dir"], state["identity"] = model_dir, model_identity(model_dir, cfg.model_name)
        log.info("now serving %s (%s)", model_dir, state["identity"]["version"])

    app.state.training = queue
    label_studio.add_routes(app, cfg, state, reload, queue)

    # the body model carries this server's limits, so it is made here (and set as a real class, not a string
    # annotation, for FastAPI to resolve)
    entities.__annotations__["req"] = request_model(cfg)
    app.post("/v1/entities", response_model=EntitiesResponse,
             responses={400: {"description": "the body is not parseable (e.g. not UTF-8)"},
                        401: {"description": "an API key is required and was missing or wrong"},
                        413: {"description": "a text, the batch, its characters or the raw body is over the limit"},
                        422: {"description": "the body is malformed, or the model failed on one of its texts "
                                             "(named in detail)"},
                        429: {"description": "the queue is full; retry after the Retry-After seconds"},
                        503: {"description": "not answered within the request time limit, or the server is "
                                             "unhealthy"}})(entities)

    return app


def run(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, graceful_seconds: int = 30) -> None:
    import uvicorn

    if is_loopback(host) and not cfg.all_keys() and not cfg.allowed_hosts:
        cfg = replace(cfg, allowed_hosts=LOOPBACK_NAMES)
    # On SIGTERM/SIGINT uvicorn stops accepting connections and lets in-flight requests finish (up to the timeout).
    uvicorn.run(create_app(cfg), host=host, port=port, timeout_graceful_shutdown=graceful_seconds, log_level="info")
