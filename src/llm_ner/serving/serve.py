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
import base64
import hmac
import ipaddress
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ..inference.outputs import Thresholds
from ..rundir import model_identity
from . import label_studio
from .settings import ServeConfig

log = logging.getLogger(__name__)


OPEN_PATHS = {"/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"}  # no key needed: no data in them
DOCS_ASSETS = "/docs-assets"  # Swagger UI's own files, served by us (fastapi-offline): /docs needs no CDN


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


async def _send_json(send, status: int, body: dict, headers: tuple = ()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before anything parses it. A declared Content-Length is
    checked up front; a chunked body is read up to the limit (never more is held) and replayed to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = {"detail": f"the request body is over the limit of {self.limit} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_json(send, 413 if length.isdigit() else 400,
                                    too_large if length.isdigit() else {"detail": "bad Content-Length"})
        if length is not None:  # the server (h11/httptools) stops at Content-Length: nothing more to guard
            return await self.app(scope, receive, send)
        chunks, n = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            n += len(chunks[-1])
            if n > self.limit:
                return await _send_json(send, 413, too_large)
            if not msg.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class ApiKeys:
    """ASGI middleware: with keys configured, every path outside OPEN_PATHS needs `Authorization: Bearer KEY`. Keys
    are compared in constant time, all of them every time (no early exit that would time which one nearly matched);
    the 401 says nothing about why."""

    def __init__(self, app, keys: tuple[str, ...]):
        self.app, self.keys = app, [k.encode() for k in keys]

    def allowed(self, header: bytes | None) -> bool:
        """`Bearer KEY`, or `Basic base64(any-user:KEY)` — what Label Studio sends to an ML backend with basic auth."""
        scheme, _, given = (header or b"").partition(b" ")
        given, scheme = given.strip(), scheme.lower()
        known = scheme in (b"bearer", b"basic")
        if scheme == b"basic":
            try:
                given = base64.b64decode(given, validate=True).partition(b":")[2]
            except ValueError:
                known = False
        ok = False
        for k in self.keys:  # every key, whatever the header: no early exit to time
            ok |= hmac.compare_digest(given, k)
        return ok and known

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS
                or scope["path"].startswith(DOCS_ASSETS + "/")  # Swagger UI's scripts and styles
                or scope["method"] == "OPTIONS"):  # CORS preflight carries no credentials
            return await self.app(scope, receive, send)
        if not self.allowed(dict(scope["headers"]).get(b"authorization")):
            return await _send_json(send, 401, {"detail": "unauthorized"}, ((b"www-authenticate", b"Bearer"),))
        await self.app(scope, receive, send)


class Metrics:
    """Prometheus metrics of one app (its own registry, so two apps in one process do not mix), and the ASGI
    middleware that counts every request by path and status and times it."""

    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

    def __init__(self, paths: set[str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.paths = paths  # known routes; anything else counts as "other" (bounded label values)
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llm_ner_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=r)
        self.latency = Histogram("llm_ner_request_seconds", "request latency in seconds", ["path"], registry=r)
        self.batch = Histogram("llm_ner_batch_texts", "texts per model call", buckets=self.BATCH_BUCKETS,
                               registry=r)
        self.queue_depth = Gauge("llm_ner_queue_depth", "requests waiting for the model", registry=r)
        self.queue_chars = Gauge("llm_ner_queue_chars", "characters waiting for the model", registry=r)
        self.in_flight = Gauge("llm_ner_in_flight", "requests accepted and not yet answered", registry=r)
        self.load_seconds = Gauge("llm_ner_model_load_seconds", "seconds the model took to load", registry=r)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app):
        async def asgi(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope["path"] if scope["path"] in self.paths else "other"
            status, t0 = 500, time.perf_counter()

            async def send_status(msg):
                nonlocal status
                if msg["type"] == "http.response.start":
                    status = msg["status"]
                await send(msg)

            try:
                await app(scope, receive, send_status)
            finally:
                self.requests.labels(path, str(status)).inc()
                self.latency.labels(path).observe(time.perf_counter() - t0)

        return asgi


class TextFailed(Exception):
    """The model raised on one text of a request (found by running the texts alone): that request fails, no other."""

    def __init__(self, index: int | None, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.index, self.error = index, error


@dataclass
class _Job:
    texts: list[str]
    fut: asyncio.Future
    chars: int


class _Batcher:
    """Collects requests and runs them through the model in combined batches, one batch at a time.

    What a request costs is counted in texts and characters, not requests: the queue refuses (429) past `max_queue`
    requests or `max_queue_chars` characters waiting. A request not answered within `request_timeout` gets 503; if it
    is still queued then, it is dropped before it costs any work. One text that makes the model raise fails only its
    own request: a failed batch is re-run request by request, and the failing request text by text, to name the text.
    """

    def __init__(self, ner, cfg: ServeConfig, metrics: Metrics):
        self.ner, self.cfg, self.metrics = ner, cfg, metrics
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=cfg.max_queue)
        self.queued_chars = 0
        self.task: asyncio.Task | None = None
        self.in_flight = 0  # requests submitted and not yet answered (queued or in the model): shown by /health
        self.last_batch_seconds = 1.0  # how long the last model call took: the Retry-After hint
        metrics.queue_depth.set_function(self.queue.qsize)
        metrics.queue_chars.set_function(lambda: self.queued_chars)
        metrics.in_flight.set_function(lambda: self.in_flight)

    def start(self) -> None:
        self.task = asyncio.create_task(self._worker())

    def dead(self) -> str | None:
        """Why the worker is not running (None while it is): /health reports it, so a supervisor restarts us."""
        if self.task is None or not self.task.done():
            return None
        err = None if self.task.cancelled() else self.task.exception()
        return f"the batching worker stopped ({type(err).__name__}: {err})" if err else "the batching worker stopped"

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    def _busy(self) -> HTTPException:
        retry = str(max(1, math.ceil(self.last_batch_seconds)))
        return HTTPException(429, f"the server is busy ({self.queue.qsize()} requests, {self.queued_chars} characters "
                                  "are waiting); retry later", headers={"Retry-After": retry})

    async def submit(self, texts: list[str]) -> list:
        if why := self.dead():
            raise HTTPException(503, why)
        chars = sum(map(len, texts))
        # an empty queue takes any request the size limits let through; otherwise the characters waiting are capped
        if self.queue.qsize() and self.queued_chars + chars > self.cfg.max_queue_chars:
            raise self._busy()
        job = _Job(texts, asyncio.get_running_loop().create_future(), chars)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise self._busy() from None
        self.queued_chars += chars
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.cfg.request_timeout):
                return await asyncio.shield(job.fut)
        except TimeoutError:
            job.fut.cancel()  # still queued: the worker skips it; already running: its answer is dropped
            raise HTTPException(503, f"the request was not answered within {self.cfg.request_timeout:g} s "
                                     "(--request-timeout); send fewer or shorter texts, or retry later") from None
        finally:
            self.in_flight -= 1

    async def _worker(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            await asyncio.sleep(self.cfg.batch_wait_ms / 1000)  # let requests that arrive together share a batch
            while not self.queue.empty() and sum(len(j.texts) for j in jobs) < self.cfg.max_batch_texts:
                jobs.append(self.queue.get_nowait())
            self.queued_chars -= sum(j.chars for j in jobs)
            jobs = [j for j in jobs if not j.fut.done()]  # timed out while queued: no work for them
            try:
                await self._run(jobs)
            except Exception as e:  # a bug here must not leave requests hanging, nor stop the worker
                log.exception("batch failed")
                for j in jobs:
                    if not j.fut.done():
                        j.fut.set_exception(e)

    async def _predict(self, texts: list[str]) -> list:
        self.metrics.batch.observe(len(texts))
        t0 = time.perf_counter()
        res = await asyncio.get_running_loop().run_in_executor(None, self.ner, texts)
        self.last_batch_seconds = time.perf_counter() - t0
        return res

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            res = await self._predict([t for j in jobs for t in j.texts])
        except Exception as e:
            if len(jobs) > 1:  # isolate: each request alone, so only the one holding the bad text fails
                for j in jobs:
                    await self._run([j])
            elif not jobs[0].fut.done():
                jobs[0].fut.set_exception(await self._name_failing_text(jobs[0].texts, e))
            return
        k = 0
        for j in jobs:
            if not j.fut.done():
                j.fut.set_result(res[k : k + len(j.texts)])
            k += len(j.texts)

    async def _name_failing_text(self, texts: list[str], error: Exception) -> TextFailed:
        if len(texts) > 1:
            for i, t in enumerate(texts):
                try:
                    await self._predict([t])
                except Exception as e:
                    return TextFailed(i, e)
        return TextFailed(0 if len(texts) == 1 else None, error)  # None: the texts fail only together


def create_app(cfg: ServeConfig, ner=None) -> FastAPI:
    state: dict = {"identity": model_identity(cfg.model_dir, cfg.model_name, cfg.model_version),
                   "model_dir": cfg.model_dir}
    metrics = Metrics({"/", "/health", "/metrics", "/v1/labels", "/v1/entities"} | label_studio.PATHS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from ..inference.engine import NERModel

        t0 = time.time()
        state["ner"] = ner or NERModel.from_pretrained(cfg.model_dir, device=cfg.device,
                                                          trust_remote_code=cfg.trust_remote_code,
                                                          precision=cfg.precision, min_score=cfg.min_score)
        if ner is not None and cfg.min_score is not None:  # a model handed in (tests, embedding) gets it too
            ner.thresholds = Thresholds.of(cfg.min_score, ner.calibration.get("thresholds"))
        state["load_seconds"] = round(time.time() - t0, 2)
        metrics.load_seconds.set(state["load_seconds"])
        state["batcher"] = app.state.batcher = _Batcher(state["ner"], cfg, metrics)
        state["batcher"].start()
        log.info("model %s (%s) loaded in %.1f s", state["identity"]["name"], state["identity"]["version"],
                 state["load_seconds"])
        yield
        await state["batcher"].stop()
        if getattr(app.state, "training", None):  # no training process outlives the server
            await app.state.training.stop()

    # FastAPIOffline: /docs is FastAPI's Swagger UI with its files served from the package, not from a CDN (an
    # exposed or air-gapped server must not make browsers load scripts from elsewhere)
    app = FastAPIOffline(title="llm-ner", version="1", lifespan=lifespan, redoc_url=None, static_url=DOCS_ASSETS,
                         description="Named-entity recognition with a transformed decoder LLM.")
    # Starlette runs the last added middleware first: CORS outermost (a preflight is answered, and a 401 or 413
    # still carries the CORS headers a browser needs to read it), then the counting, the key check, the body cap.
    app.add_middleware(BodyLimit, limit=cfg.body_limit())
    app.add_middleware(ApiKeys, keys=cfg.api_keys)
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

    label_studio.add_routes(app, cfg, state, reload)

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

    # On SIGTERM/SIGINT uvicorn stops accepting connections and lets in-flight requests finish (up to the timeout).
    uvicorn.run(create_app(cfg), host=host, port=port, timeout_graceful_shutdown=graceful_seconds, log_level="info")
