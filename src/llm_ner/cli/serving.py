"""The HTTP service command. Its options are ServeConfig's fields (serving/settings.py: each default, help and check
declared there once), plus the few that are the command's own: where to listen and where the keys come from."""

from __future__ import annotations

import inspect
import os
import typing
from dataclasses import MISSING, fields
from typing import Annotated

from ..errors import UserError
from ..serving import settings as S
from . import options
from .options import Opt, Verbose, command, setup_logging

# The command's own options (not settings of the app it serves).
OWN = {
    "host": (Annotated[str, Opt(help="the address to listen on (not loopback: keys are required, or --no-auth)")],
             "127.0.0.1"),
    "port": (Annotated[int, Opt()], 8000),
    "shutdown_timeout": (Annotated[int, Opt(help="on SIGTERM, seconds the requests in flight get to finish")], 30),
    "api_key_file": (Annotated[str | None, Opt(envvar="LLM_NER_API_KEY_FILE", help=(
        "API keys, one per line: every path but /, /health and the docs then needs 'Authorization: Bearer KEY' "
        "(also: LLM_NER_API_KEYS, comma-separated)"))], None),
    "train_key_file": (Annotated[str | None, Opt(envvar="LLM_NER_TRAIN_KEY_FILE", help=(
        "training keys, one per line: they may also predict; /train, /webhook and /v1/training/rollback need one "
        "when keys are set (also: LLM_NER_TRAIN_KEYS, comma-separated)"))], None),
    "no_auth": (Annotated[bool, Opt("--no-auth", help="serve without API keys on a non-loopback --host: anyone who "
                                                      "can reach it may use it")], False),
    "verbose": (Verbose, False),
}


def setting_options() -> list[inspect.Parameter]:
    """One option per ServeConfig field that has a help (or names a shared option); repeatable for a tuple."""
    hints = typing.get_type_hints(S.ServeConfig)
    params = []
    for f in fields(S.ServeConfig):
        if "shared" in f.metadata:
            annotation = getattr(options, f.metadata["shared"])
        elif "help" in f.metadata:
            kind = list[str] | None if hints[f.name] == tuple[str, ...] else hints[f.name]
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            annotation = Annotated[kind, Opt(flag, help=f.metadata["help"])]
        else:
            continue
        default = inspect.Parameter.empty if f.name == "model_dir" else (
            None if f.default == () else f.default if f.default is not MISSING else None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))
    return params


def serve(**kw) -> None:
    """HTTP service: demo page at /, POST /v1/entities, GET /v1/labels, /health, /metrics, OpenAPI docs at /docs;
    a Label Studio ML backend at /setup, /predict, /webhook (point a project's Model settings at this URL)."""
    setup_logging(kw.pop("verbose"))
    from ..modeling.persistence import read_model_config
    from ..serving.serve import is_loopback, read_api_keys, run

    own = {k: kw.pop(k) for k in OWN if k in kw}
    tuples = {f.name for f in fields(S.ServeConfig) if f.default == ()}
    cfg = S.ServeConfig(**{k: tuple(v or ()) if k in tuples else v for k, v in kw.items()})  # checked there
    read_model_config(cfg.model_dir)  # a missing or broken model dir is a one-line error before the server starts
    keys = read_api_keys(own["api_key_file"], os.environ.get("LLM_NER_API_KEYS"))
    train_keys = read_api_keys(own["train_key_file"], os.environ.get("LLM_NER_TRAIN_KEYS"))
    for path, got in ((own["api_key_file"], keys), (own["train_key_file"], train_keys)):
        if path and not got:
            raise UserError(f"{path}: no API key in it (one per line)")
    if not (keys or train_keys) and not own["no_auth"] and not is_loopback(own["host"]):
        raise UserError(f"refusing to serve on {own['host']} without API keys: anyone who can reach it could use it. "
                        "Give keys (--api-key-file FILE, or LLM_NER_API_KEYS=k1,k2), or say --no-auth to serve it open")
    run(S.ServeConfig(**{**cfg.__dict__, "api_keys": keys, "train_keys": train_keys}), own["host"], own["port"],
        own["shutdown_timeout"])


_params = setting_options()
_params[1:1] = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                for k, (a, d) in OWN.items()]
serve.__signature__ = inspect.Signature(_params, return_annotation=None)
serve.__annotations__ = {p.name: p.annotation for p in _params}
command()(serve)
