"""Batch prediction over corpora larger than one machine, with an existing engine (Ray Data), calling the same NERModel.

    llm-ner batch-predict --model DIR --input corpus.jsonl --output out_dir/ [--address ray://head:10001]

Each Ray worker loads the model once (`NERBatchPredictor` is a callable class, so `map_batches` keeps it alive) and
gets batches of texts; results are written as JSON lines, one file per block, in the input's order within a block.
Without `--address` Ray starts locally (single machine, what the tests run); with it, the same code runs on a cluster
— add workers and raise `--concurrency`. On Spark the equivalent is a pandas UDF that builds one NERModel per
executor (docs/scaling.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data import DataError
from ..data.formats import FORMATS, format_names, record_text
from ..data.readers import iter_jsonl, open_lines


class NERBatchPredictor:
    """For `ray.data.Dataset.map_batches` (batch_format="numpy"): {"text": array} -> adds "entities" (JSON strings)."""

    def __init__(self, model_dir: str, batch_size: int = 32, threads: int | None = None, precision: str = "auto",
                 min_score: float | None = None, review: bool = False, runtime: str = "auto"):
        import torch

        from ..inference.engine import NERModel

        if threads:
            torch.set_num_threads(threads)
        self.ner = NERModel.from_pretrained(model_dir, batch_size=batch_size, device="cpu", precision=precision,
                                            min_score=min_score, runtime=runtime)
        self.review = review

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        records = self.ner(texts, review=self.review).to("records")
        batch["entities"] = [json.dumps(r["entities"], ensure_ascii=False) for r in records]
        if self.review:  # the entities below the thresholds, for a person to check
            batch["needs_review"] = [json.dumps(r["needs_review"], ensure_ascii=False) for r in records]
        return batch


# The registry's formats whose texts Ray can read line by line: a text per line, or JSON lines with a 'text' field
# (other fields kept). Token formats need sentence grouping, Label Studio / DocBin a whole-file parse.
STREAMED = [n for n in format_names(texts=True) if n == "text" or FORMATS[n].texts is FORMATS["jsonl-text"].texts]


def check_jsonl_texts(path: str) -> None:
    """Every line of a JSON-lines input is a JSON object with a string 'text': the readers' own checks, on a stream
    (the file may be huge)."""
    try:
        with open_lines(path) as f:
            for lineno, rec in iter_jsonl(f, path):
                record_text(rec, path, lineno)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason}); re-encode the file as UTF-8") from None
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz
        raise DataError(f"{path}: cannot be read ({e})") from None


def predictor_args(model_dir: str, batch_size: int, threads: int | None, precision: str, min_score: float | None,
                   review: bool, runtime: str = "auto") -> dict:
    """What each Ray actor builds its NERBatchPredictor from: the command's own options, --batch-size included."""
    return {"model_dir": str(Path(model_dir).resolve()), "batch_size": batch_size, "threads": threads,
            "precision": precision, "min_score": min_score, "review": review, "runtime": runtime}


def ray_predict(model_dir: str, input_path: str, output_dir: str, address: str | None = None, concurrency: int = 1,
                batch_size: int = 64, threads: int | None = None, precision: str = "auto",
                min_score: float | None = None, review: bool = False, runtime: str = "auto") -> int:
    """Read {"text": ...} JSON lines or plain text (a text per line; the format is detected from the content),
    predict, write JSON lines to output_dir."""
    import ray

    from ..data import detect_format

    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Ray adds its files beside whatever is there, and the count below would read them all
        raise DataError(f"--output {output_dir}: not an empty folder; give a new or empty one")
    fmt = detect_format(input_path, allow_text=True)
    if fmt not in STREAMED:
        raise DataError(f"{input_path}: batch-predict reads texts ({', '.join(STREAMED)}), not {fmt}; use "
                        "`llm-ner predict --input` for the other formats")
    if fmt != "text":
        check_jsonl_texts(input_path)  # here, with the line named, not as a Ray traceback from inside a worker

    ours = not ray.is_initialized()  # a Ray the caller started (a cluster, a notebook, a test session) stays up
    if ours:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        # text: one row per line, column "text"; JSON lines: one row per record, other fields kept
        ds = ray.data.read_text(input_path) if fmt == "text" else ray.data.read_json(input_path, lines=True)
        ds = ds.map_batches(NERBatchPredictor, fn_constructor_kwargs=predictor_args(
            model_dir, batch_size, threads, precision, min_score, review, runtime),
            batch_size=batch_size, batch_format="numpy", concurrency=concurrency)
        ds.write_json(output_dir)
        return sum(_count_lines(f) for f in out.glob("*.json"))
    finally:
        if ours:
            ray.shutdown()


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)
