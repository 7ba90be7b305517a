"""HTTP service over NERModel (FastAPI + uvicorn).

  POST /v1/entities   {"texts": ["...", ...]} or {"text": "..."} -> {"results": [{"entities": [...]}, ...]}
  GET  /v1/labels     the model's entity types (with descriptions) and tags
  GET  /health        {"status": "ok", "in_flight": n, ...} once the model is loaded
  GET  /docs          OpenAPI UI (FastAPI)

The model loads once. Concurrent requests are micro-batched: a single worker drains the queue for up to
`batch_wait_ms`, runs one batched `predict` in a thread, and answers each request with its own slice, so many small
requests cost about as much as one batch. Limits (text length, texts per request) are part of the OpenAPI
schema and give 413 with a clear message; other malformed bodies give 422 (pydantic). Long texts go through the
sliding window like everywhere else. On SIGTERM the server stops accepting and finishes what is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    model_dir: str
    max_text_chars: int = 100_000
    max_batch: int = 64  # texts per request
    batch_wait_ms: float = 5.0  # how long the worker waits to gather more requests into one batch
    max_batch_texts: int = 64  # texts per model call
    device: str | None = None
    trust_remote_code: bool = False  # the backbone's own Python code runs only if the user says so
    quantize: str | None = None  # "int8": dynamic int8 Linear layers (CPU); "bf16": the backbone in bf16
    min_score: float | None = None  # entities scored below it (or below their type's calibrated threshold): review


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


class EntitiesResponse(BaseModel):
    results: list[TextResult]
    model: str
    latency_ms: float


class _Batcher:
    """Collects (texts, future) pairs and runs them through the model in combined batches."""

    def __init__(self, ner, cfg: ServeConfig):
        self.ner, self.cfg = ner, cfg
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.in_flight = 0  # requests submitted and not yet answered (queued or in the model): shown by /health

    def start(self) -> None:
        self.task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, texts: list[str]) -> list:
        fut = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        try:
            await self.queue.put((texts, fut))
            return await fut
        finally:
            self.in_flight -= 1

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.cfg.batch_wait_ms / 1000
            n = len(items[0][0])
            while n < self.cfg.max_batch_texts:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                items.append(item)
                n += len(item[0])
            flat = [t for texts, _ in items for t in texts]
            try:
                res = await loop.run_in_executor(None, self.ner.predict_with_review, flat)
            except Exception as e:  # never leave a request hanging
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            k = 0
            for texts, fut in items:
                if not fut.done():
                    fut.set_result(res[k : k + len(texts)])
                k += len(texts)


def create_app(cfg: ServeConfig, ner=None) -> FastAPI:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from .predict import NERModel

        t0 = time.time()
        state["ner"] = ner or NERModel.from_pretrained(cfg.model_dir, device=cfg.device,
                                                          trust_remote_code=cfg.trust_remote_code,
                                                          quantize=cfg.quantize)
        if cfg.min_score is not None:
            state["ner"].min_score = cfg.min_score
        state["load_seconds"] = round(time.time() - t0, 2)
        state["batcher"] = _Batcher(state["ner"], cfg)
        state["batcher"].start()
        log.info("model %s loaded in %.1f s", cfg.model_dir, state["load_seconds"])
        yield
        await state["batcher"].stop()

    app = FastAPI(title="llm-ner", version="1", lifespan=lifespan,
                  description="Named-entity recognition with a transformed decoder LLM.")

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

    @app.get("/health")
    async def health() -> dict:
        b = state.get("batcher")
        return {"status": "ok", "model": cfg.model_dir, "load_seconds": state.get("load_seconds"),
                "in_flight": b.in_flight if b else 0}

    @app.get("/v1/labels")
    async def labels() -> dict:
        ls = state["ner"].labels
        return {"types": list(ls.types), "tags": ls.tags, "descriptions": ls.descriptions}

    async def entities(req: EntitiesRequest) -> EntitiesResponse:
        texts = req.all_texts()
        t0 = time.time()
        res = await state["batcher"].submit(texts) if texts else []
        return EntitiesResponse(
            results=[TextResult(entities=[EntityOut(**e.to_dict()) for e in kept],
                                needs_review=[EntityOut(**e.to_dict()) for e in low] if req.review else None)
                     for kept, low in res],
            model=cfg.model_dir, latency_ms=round(1000 * (time.time() - t0), 2))

    # the body model carries this server's limits, so it is made here (and set as a real class, not a string
    # annotation, for FastAPI to resolve)
    entities.__annotations__["req"] = request_model(cfg)
    app.post("/v1/entities", response_model=EntitiesResponse,
             responses={400: {"description": "the body is not parseable (e.g. not UTF-8)"},
                        413: {"description": "a text or the batch is over the limit"}})(entities)

    return app


def run(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, graceful_seconds: int = 30) -> None:
    import uvicorn

    # On SIGTERM/SIGINT uvicorn stops accepting connections and lets in-flight requests finish (up to the timeout).
    uvicorn.run(create_app(cfg), host=host, port=port, timeout_graceful_shutdown=graceful_seconds, log_level="info")
