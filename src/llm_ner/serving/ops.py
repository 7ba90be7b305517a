"""The operator's routes: GET /health (what a load balancer or supervisor needs) and GET /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .middleware import auth
from .settings import ServeConfig


def router(cfg: ServeConfig) -> APIRouter:
    """The operator's routes: /health is open (no data in it), /metrics needs a key when keys are set."""
    r = APIRouter()
    r.add_api_route("/health", health, methods=["GET"], **auth("open"), responses={503: {
        "description": "the batching worker has stopped: requests cannot be answered (restart the server)"}})
    r.add_api_route("/metrics", prometheus, methods=["GET"], response_class=Response,
                    responses={200: {"content": {"text/plain": {}}}}, **auth("predict"))
    return r


async def health(request: Request) -> JSONResponse:
    served = request.app.state.served
    b = served.batcher
    dead = b.dead() if b else None
    body = {"status": "error" if dead else "ok", "model": served.info(), "load_seconds": served.load_seconds,
            "in_flight": b.in_flight if b else 0, "queued": b.queue.qsize() if b else 0,
            "queued_chars": b.queued_chars if b else 0}
    return JSONResponse(body | ({"detail": dead} if dead else {}), status_code=503 if dead else 200)


async def prometheus(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(body, media_type=content_type)
