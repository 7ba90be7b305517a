"""The HTTP service command."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Annotated

from ..errors import UserError
from ..serving import settings as S
from .options import (
    MinScore,
    ModelDir,
    Opt,
    Precision,
    TrustRemoteCode,
    Verbose,
    check_precision,
    check_score,
    command,
    setup_logging,
)


@command()
def serve(
    model: ModelDir,
    host: Annotated[str, Opt()] = "127.0.0.1",
    port: Annotated[int, Opt()] = 8000,
    max_text_chars: Annotated[int, Opt(help=S.help_of("max_text_chars"))] = S.default("max_text_chars"),
    max_batch: Annotated[int, Opt(help=S.help_of("max_batch"))] = S.default("max_batch"),
    batch_wait_ms: Annotated[float, Opt(help=S.help_of("batch_wait_ms"))] = S.default("batch_wait_ms"),
    shutdown_timeout: Annotated[int, Opt(help="on SIGTERM, seconds the requests in flight get to finish")] = 30,
    trust_remote_code: TrustRemoteCode = False,
    precision: Precision = "auto",
    min_score: MinScore = None,
    api_key_file: Annotated[str | None, Opt(envvar="LLM_NER_API_KEY_FILE", help=(
        "API keys, one per line: every path but /, /health and the docs then needs 'Authorization: Bearer KEY' "
        "(also: LLM_NER_API_KEYS, comma-separated)"))] = None,
    no_auth: Annotated[bool, Opt("--no-auth", help="serve without API keys on a non-loopback --host: anyone who can "
                                                   "reach it may use it")] = False,
    cors_origin: Annotated[list[str] | None, Opt(help="an origin browsers may call from (repeat; '*' for any)")] = None,
    max_body_bytes: Annotated[int | None, Opt(help=S.help_of("max_body_bytes"))] = S.default("max_body_bytes"),
    max_queue: Annotated[int, Opt(help=S.help_of("max_queue"))] = S.default("max_queue"),
    max_request_chars: Annotated[int, Opt(help=S.help_of("max_request_chars"))] = S.default("max_request_chars"),
    max_queue_chars: Annotated[int, Opt(help=S.help_of("max_queue_chars"))] = S.default("max_queue_chars"),
    request_timeout: Annotated[float, Opt(help=S.help_of("request_timeout"))] = S.default("request_timeout"),
    model_name: Annotated[str | None, Opt(help=S.help_of("model_name"))] = S.default("model_name"),
    model_version: Annotated[str | None, Opt(help=S.help_of("model_version"))] = S.default("model_version"),
    train_dir: Annotated[str | None, Opt(help=S.help_of("train_dir"))] = S.default("train_dir"),
    train_config: Annotated[str | None, Opt(help=S.help_of("train_config"))] = S.default("train_config"),
    train_set: Annotated[list[str] | None, Opt(help="a --set override for retraining (repeat)")] = None,
    train_timeout: Annotated[float, Opt(help=S.help_of("train_timeout"))] = S.default("train_timeout"),
    train_threads: Annotated[int | None, Opt(help=S.help_of("train_threads"))] = S.default("train_threads"),
    keep_rounds: Annotated[int, Opt(help=S.help_of("keep_rounds"))] = S.default("keep_rounds"),
    max_export_bytes: Annotated[int, Opt(help=S.help_of("max_export_bytes"))] = S.default("max_export_bytes"),
    label_studio_url: Annotated[str | None, Opt(help=S.help_of("label_studio_url"))] = S.default("label_studio_url"),
    fetch_timeout: Annotated[float, Opt(help=S.help_of("fetch_timeout"))] = S.default("fetch_timeout"),
    max_projects: Annotated[int, Opt(help=S.help_of("max_projects"))] = S.default("max_projects"),
    promote_data: Annotated[str | None, Opt(help=S.help_of("promote_data"))] = S.default("promote_data"),
    holdout: Annotated[float, Opt(help=S.help_of("holdout"))] = S.default("holdout"),
    promote_margin: Annotated[float, Opt(help=S.help_of("promote_margin"))] = S.default("promote_margin"),
    promote_min_entities: Annotated[int, Opt(help=S.help_of("promote_min_entities"))] = S.default(
        "promote_min_entities"),
    train_key_file: Annotated[str | None, Opt(envvar="LLM_NER_TRAIN_KEY_FILE", help=(
        "training keys, one per line: they may also predict; /train, /webhook and /v1/training/rollback need one "
        "when keys are set (also: LLM_NER_TRAIN_KEYS, comma-separated)"))] = None,
    verbose: Verbose = False,
) -> None:
    """HTTP service: demo page at /, POST /v1/entities, GET /v1/labels, /health, /metrics, OpenAPI docs at /docs;
    a Label Studio ML backend at /setup, /predict, /webhook (point a project's Model settings at this URL)."""
    setup_logging(verbose)
    from ..modeling.persistence import read_model_config
    from ..serving.serve import is_loopback, read_api_keys, run

    check_score(min_score)
    read_model_config(model)  # a missing or broken model dir is a one-line error before the server starts
    cfg = S.ServeConfig(  # its limits are checked there
        model, max_text_chars, max_batch, batch_wait_ms, trust_remote_code=trust_remote_code,
        precision=check_precision(precision), min_score=min_score, cors_origins=tuple(cors_origin or ()),
        max_body_bytes=max_body_bytes, max_queue=max_queue, model_name=model_name, model_version=model_version,
        max_request_chars=max_request_chars, max_queue_chars=max_queue_chars, request_timeout=request_timeout,
        train_dir=train_dir, train_config=train_config, train_set=tuple(train_set or ()), train_timeout=train_timeout,
        train_threads=train_threads, keep_rounds=keep_rounds, max_export_bytes=max_export_bytes,
        label_studio_url=label_studio_url, fetch_timeout=fetch_timeout, max_projects=max_projects,
        promote_data=promote_data, holdout=holdout, promote_margin=promote_margin,
        promote_min_entities=promote_min_entities)
    keys = read_api_keys(api_key_file, os.environ.get("LLM_NER_API_KEYS"))
    train_keys = read_api_keys(train_key_file, os.environ.get("LLM_NER_TRAIN_KEYS"))
    for path, got in ((api_key_file, keys), (train_key_file, train_keys)):
        if path and not got:
            raise UserError(f"{path}: no API key in it (one per line)")
    if not (keys or train_keys) and not no_auth and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without API keys: anyone who can reach it could use it. Give "
                        "keys (--api-key-file FILE, or LLM_NER_API_KEYS=k1,k2), or say --no-auth to serve it open")
    run(replace(cfg, api_keys=keys, train_keys=train_keys), host, port, shutdown_timeout)
