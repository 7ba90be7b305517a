"""The service's ASGI middleware: the raw body cap (before any parsing), the API keys (prediction and training
scopes), and the Prometheus counting. No route here: each route declares its own scope (`auth("train")` in its
decorator, also shown in the OpenAPI schema), and serve.py hands the middleware what the routes declared."""

from __future__ import annotations

import base64
import hmac
import json
import time
from typing import Literal

DOCS_ASSETS = "/docs-assets"  # Swagger UI's own files, served by us (fastapi-offline): /docs needs no CDN
AUTH_KEY = "x-llm-ner-auth"
Auth = Literal["open", "predict", "train"]


def auth(name: Auth) -> dict:
    """A route's auth scope, for its decorator (`@r.get(path, **auth("open"))`): open (no key: no data in it),
    predict (any key; the default of a route that declares none), train (a training key: it trains, promotes or
    rolls back)."""
    return {"openapi_extra": {AUTH_KEY: name}}


def route_auth(ours, app_routes) -> dict[str, Auth]:
    """Path -> scope: each of our routes as it declared (predict when it declares none); the app's own routes
    (FastAPI's /docs, /openapi.json) are open. Our routers have no prefix: a route's path is the app's."""
    scopes: dict[str, Auth] = {r.path: "open" for r in app_routes if isinstance(getattr(r, "path", None), str)}
    scopes.update({r.path: (r.openapi_extra or {}).get(AUTH_KEY, "predict") for r in ours})
    return scopes


async def _send_json(send, status: int, body: dict, headers: tuple = ()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before anything parses it. A declared Content-Length is
    checked up front; a chunked body is read up to the limit (never more is held) and replayed to the app."""

    def __init__(self, app, limit: int, per_path: dict[str, int] | None = None):
        self.app, self.limit, self.per_path = app, limit, per_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope["path"], self.limit)
        too_large = {"detail": f"the request body is over the limit of {limit} bytes"}
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
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
            if n > limit:
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
    """ASGI middleware: with keys configured, every path but the open ones (`scopes`: path -> the scope its route
    declared) needs `Authorization: Bearer KEY`; the paths that train or change the served model (scope "train") need
    a training key (`train_keys`), which may also predict — Label Studio sends one credential for every call. Keys
    are compared in constant time, all of them every time (no early exit that would time which one nearly matched);
    the 401 says nothing about why; a prediction key on a training path gets 403."""

    def __init__(self, app, keys: tuple[str, ...], train_keys: tuple[str, ...] = (),
                 scopes: dict[str, Auth] | None = None):
        self.app, self.keys, self.train = app, [k.encode() for k in keys], [k.encode() for k in train_keys]
        self.scopes = scopes or {}  # a path no route declared (404s): "predict"

    @staticmethod
    def given(header: bytes | None) -> bytes | None:
        """The key in `Bearer KEY`, or in `Basic base64(any-user:KEY)` — what Label Studio sends to an ML backend
        with basic auth; None for anything else."""
        scheme, _, given = (header or b"").partition(b" ")
        given, scheme = given.strip(), scheme.lower()
        if scheme == b"basic":
            try:
                return base64.b64decode(given, validate=True).partition(b":")[2]
            except ValueError:
                return None
        return given if scheme == b"bearer" else None

    @staticmethod
    def _matches(given: bytes | None, keys: list[bytes]) -> bool:
        ok = False
        for k in keys:  # every key, whatever the header: no early exit to time
            ok |= hmac.compare_digest(given or b"", k)
        return ok and given is not None

    def scope_of(self, header: bytes | None) -> str | None:
        """"train", "predict" or None (no valid key) for an Authorization header: every key of both sets is
        compared, whatever the header — the one check requests go through."""
        given = self.given(header)
        trains, predicts = self._matches(given, self.train), self._matches(given, self.keys)
        return "train" if trains else "predict" if predicts else None

    def allowed(self, header: bytes | None) -> bool:
        return self.scope_of(header) is not None

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or not (self.keys or self.train) or self.scopes.get(scope["path"]) == "open"
                or scope["path"].startswith(DOCS_ASSETS + "/")  # Swagger UI's scripts and styles
                or scope["method"] == "OPTIONS"):  # CORS preflight carries no credentials
            return await self.app(scope, receive, send)
        may = self.scope_of(dict(scope["headers"]).get(b"authorization"))
        if may is None:
            return await _send_json(send, 401, {"detail": "unauthorized"}, ((b"www-authenticate", b"Bearer"),))
        trains = may == "train"
        if self.scopes.get(scope["path"]) == "train" and not trains:
            return await _send_json(send, 403, {"detail": "this key may predict, not train: training, promotion "
                                                          "and rollback need a training key (--train-key-file)"})
        scope.setdefault("state", {})["may_train"] = trains  # request.state.may_train: /setup keeps tokens only then
        await self.app(scope, receive, send)


class Metrics:
    """Prometheus metrics of one app (its own registry, so two apps in one process do not mix), and the ASGI
    middleware that counts every request by path and status and times it."""

    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

    def __init__(self, paths: set[str] = frozenset()):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.paths = paths  # the app's routes (serve.py sets them); anything else counts as "other" (bounded labels)
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
