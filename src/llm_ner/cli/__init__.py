"""`llm-ner` command line: thin — each command parses its arguments and calls one library function. One module per
group of commands (run, scoring, predicting, serving, data); what they share — the option types, the error wrapper,
the console — is declared once in options.py. Errors in user input print one line (`error: file:line: ...`) and exit
with status 2, never a stack trace."""
# ruff: noqa: I001  (the modules register their commands on `app` in this order: `llm-ner --help` lists them so)

from . import run, scoring, predicting, serving, data  # noqa: F401
from .options import app

__all__ = ["app"]
