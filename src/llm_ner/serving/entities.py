"""The prediction API's routes: the demo page, POST /v1/entities, GET /v1/labels — with the request and response
models that carry this server's limits (so they are validated and documented in the OpenAPI schema)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from .batcher import TextFailed
from .middleware import auth
from .settings import ServeConfig

log = logging.getLogger(__name__)


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


def too_large_message(e: dict) -> str:
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


ENTITY_ERRORS = {400: {"description": "the body is not parseable (e.g. not UTF-8)"},
                 401: {"description": "an API key is required and was missing or wrong"},
                 413: {"description": "a text, the batch, its characters or the raw body is over the limit"},
                 422: {"description": "the body is malformed, or the model failed on one of its texts (named in "
                                      "detail)"},
                 429: {"description": "the queue is full; retry after the Retry-After seconds"},
                 503: {"description": "not answered within the request time limit, or the server is unhealthy"}}


def router(cfg: ServeConfig) -> APIRouter:
    r = APIRouter()
    page = resources.files("llm_ner").joinpath("serving/web/demo.html").read_text(encoding="utf-8")  # read once

    @r.get("/", response_class=HTMLResponse, include_in_schema=False, **auth("open"))
    async def demo() -> HTMLResponse:
        return HTMLResponse(page)

    @r.get("/v1/labels", **auth("predict"))
    async def labels(request: Request) -> dict:
        served = request.app.state.served
        ls = served.ner.labels
        return {"types": list(ls.types), "tags": ls.tags, "descriptions": ls.descriptions, "model": served.info()}

    async def entities(req: EntitiesRequest, request: Request) -> EntitiesResponse:
        served, texts = request.app.state.served, req.all_texts()
        if (n := sum(map(len, texts))) > cfg.max_request_chars:
            raise HTTPException(413, f"the texts have {n} characters in all; the limit is {cfg.max_request_chars}")
        t0 = time.time()
        try:
            res = await served.batcher.submit(texts) if texts else []
        except TextFailed as e:
            where = "text" if req.text is not None else (f"texts[{e.index}]" if e.index is not None else "the texts")
            log.error("%s of a request could not be processed: %s", where, e)
            raise HTTPException(422, f"{where} could not be processed ({type(e.error).__name__}); other requests "
                                     "were not affected") from None
        return EntitiesResponse(
            results=[TextResult(**x) for x in replace(res, review=req.review).to("records")] if texts else [],
            model=ModelInfo(**served.identity), latency_ms=round(1000 * (time.time() - t0), 2))

    # the body model carries this server's limits, so it is made here (and set as a real class, not a string
    # annotation, for FastAPI to resolve)
    entities.__annotations__["req"] = request_model(cfg)
    r.post("/v1/entities", response_model=EntitiesResponse, responses=ENTITY_ERRORS, **auth("predict"))(entities)
    return r
