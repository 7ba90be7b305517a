"""HTTP service over NERModel (FastAPI + uvicorn): `create_app` assembles it, `run` serves it.

Each route is declared once, in the router of its concern, with its auth scope (middleware.auth): entities.py (/ the
demo page, POST /v1/entities, GET /v1/labels), ops.py (/health, /metrics), label_studio.py (Label Studio's ML-backend
protocol: /setup, /predict, /webhook), retraining_api.py (/train, /v1/training, /v1/training/rollback); FastAPI adds
the OpenAPI UI at /docs (its files served from the package: works offline). What the routes declare is all the key
check and the metrics know: a new route is one edit in its router. The parts, one concern a module: settings.py (every
option and limit, declared once: `serve`'s options are generated from it), middleware.py (body cap, keys, metrics),
batcher.py (micro-batching), served.py (the model on app.state and its one load path).

Exposing it: with API keys (`--api-key-file`, or LLM_NER_API_KEYS) every route but the open ones (/, /health and the
OpenAPI docs) needs `Authorization: Bearer KEY` (401 otherwise, saying nothing else); `--cors-origin` allows browsers
on other origins; the raw body is capped before any JSON parsing (413); when `max_queue` requests or `max_queue_chars`
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

import ipaddress
import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from . import entities, label_studio, ops, retraining_api
from .middleware import DOCS_ASSETS, ApiKeys, BodyLimit, Metrics, route_auth
from .retraining import TrainingQueue
from .retraining_api import Retrainer
from .served import Served
from .settings import ServeConfig

log = logging.getLogger(__name__)


ROUTERS = (entities, ops, label_studio, retraining_api)  # each module's router(cfg): its routes and their scopes
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


def create_app(cfg: ServeConfig, ner=None) -> FastAPI:
    """The service: its middleware, the routers of each concern, and on app.state the served model (`served`), its
    metrics and the retrainer (None unless `cfg.train_dir`). `ner`: a model to serve instead of loading one."""
    queue = TrainingQueue(cfg.train_dir, cfg.train_timeout, cfg.keep_rounds, cfg.train_threads) if cfg.train_dir \
        else None
    current = queue.current() if queue and ner is None else None  # a promoted round outlives a restart
    if current:
        log.info("serving %s (the training dir's current round), not the model given", current)
    metrics = Metrics()
    served = Served(cfg, str(queue.model_dir_of(current)) if current else cfg.model_dir, metrics,
                    None if current else cfg.model_version)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.start(ner)
        yield
        await served.batcher.stop()
        if queue:  # no training process outlives the server
            await queue.stop()

    # FastAPIOffline: /docs is FastAPI's Swagger UI with its files served from the package, not from a CDN (an
    # exposed or air-gapped server must not make browsers load scripts from elsewhere)
    app = FastAPIOffline(title="llm-ner", version="1", lifespan=lifespan, redoc_url=None, static_url=DOCS_ASSETS,
                         description="Named-entity recognition with a transformed decoder LLM.")
    app.state.cfg, app.state.served, app.state.metrics = cfg, served, metrics
    app.state.retrainer = Retrainer(cfg, queue, served) if queue else None
    app.state.label_studio = label_studio.Projects(cfg.max_projects)
    routers = [module.router(cfg) for module in ROUTERS]
    for r in routers:
        app.include_router(r)
    scopes = route_auth([route for r in routers for route in r.routes], app.routes)
    metrics.paths = set(scopes)
    # Starlette runs the last added middleware first: CORS outermost (a preflight is answered, and a 401 or 413
    # still carries the CORS headers a browser needs to read it), then the counting, the Host check, the key check,
    # the body cap.
    app.add_middleware(BodyLimit, limit=cfg.body_limit(), per_path=cfg.path_body_limits())
    app.add_middleware(ApiKeys, keys=cfg.api_keys, train_keys=cfg.train_keys, scopes=scopes)
    if cfg.allowed_hosts:  # loopback without keys: a web page's DNS rebinding must not reach us by another name
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(cfg.allowed_hosts))
    app.add_middleware(metrics.middleware)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_exception_handler(RequestValidationError, _invalid)
    return app


async def _invalid(request, exc: RequestValidationError) -> JSONResponse:
    """Over a size limit only -> 413; anything else malformed -> 422. FastAPI's default echoes the offending input
    back; a body with NaN/Infinity (which the JSON parser accepts) then fails to render and becomes a 500. Report
    where and what, never the input itself."""
    errors = exc.errors()
    if errors and all(e.get("type") in entities.TOO_LARGE for e in errors):
        return JSONResponse(status_code=413, content={"detail": "; ".join(map(entities.too_large_message, errors))})
    errs = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
            for e in errors]
    return JSONResponse(status_code=422, content={"detail": errs})


def run(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, graceful_seconds: int = 30) -> None:
    import uvicorn

    if is_loopback(host) and not cfg.all_keys() and not cfg.allowed_hosts:
        cfg = replace(cfg, allowed_hosts=LOOPBACK_NAMES)
    # On SIGTERM/SIGINT uvicorn stops accepting connections and lets in-flight requests finish (up to the timeout).
    uvicorn.run(create_app(cfg), host=host, port=port, timeout_graceful_shutdown=graceful_seconds, log_level="info")
