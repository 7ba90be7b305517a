"""The service's settings, declared once: every option's default, its help and its validation
(`ServeConfig.__post_init__`, whoever builds one: the CLI, a test, an embedding app). `llm-ner serve`'s options are
generated from these fields (cli/serving.py): a field with a help is an option (`--name-with-dashes`, or its `flag`),
one marked `shared` takes the CLI's shared option of that name (--precision, --min-score, ...), the others are set
by code. A new serve option is one field here. No FastAPI import: the CLI reads this without the [serve] extra."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import UserError

BODY_BYTES_PER_CHAR = 6  # a JSON string may escape any character as \uXXXX
BODY_JSON_SLACK = 65_536  # the JSON around the texts


def _opt(default, help: str, flag: str | None = None):
    return field(default=default, metadata={"help": help, **({"flag": flag} if flag else {})})


def _shared(default, option: str):
    """A setting whose CLI option every prediction command shares (cli/options.py declares it once)."""
    return field(default=default, metadata={"shared": option})


@dataclass
class ServeConfig:
    model_dir: str = _shared(None, "ModelDir")
    max_text_chars: int = _opt(100_000, "longer texts get 413")
    max_batch: int = _opt(64, "more texts per request get 413")
    batch_wait_ms: float = _opt(5.0, "micro-batching window: how long the worker waits to gather requests (ms)")
    max_batch_texts: int = 64  # texts per model call
    device: str | None = None
    trust_remote_code: bool = _shared(False, "TrustRemoteCode")  # the backbone's own code runs only if asked
    precision: str = _shared("auto", "Precision")  # quantize.PRECISIONS
    runtime: str = _shared("auto", "Runtime")  # persistence.RUNTIMES: what runs the network
    min_score: float | None = _shared(None, "MinScore")  # entities scored below it (or their type's threshold): review
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    cors_origins: tuple[str, ...] = _opt((), "an origin browsers may call from (repeat; '*' for any)",
                                         "--cors-origin")
    max_body_bytes: int | None = _opt(None, f"bigger request bodies get 413 before parsing (default: "
                                            f"{BODY_BYTES_PER_CHAR} bytes per allowed character of "
                                            f"--max-request-chars + {BODY_JSON_SLACK // 1024} KiB)")
    max_queue: int = _opt(256, "requests that may wait for the model; past it: 429 + Retry-After")
    max_request_chars: int = _opt(400_000, "characters over all texts of one request; past it: 413")
    max_queue_chars: int = _opt(2_000_000, "characters that may wait for the model; past it: 429")
    request_timeout: float = _opt(300.0, "seconds a request may wait and run; past it: 503 (if still queued, it "
                                         "costs nothing)")
    model_name: str | None = _opt(None, "the name responses give (default: the run's directory name)")
    model_version: str | None = _opt(None, "the version responses give (default: a fingerprint of the model files)")
    # Label Studio ML backend retraining (label_studio.py): runs go to train_dir (None: retraining off), with this run
    # config (None: the defaults; --init brings the model section) and --set overrides
    train_dir: str | None = _opt(None, "as a Label Studio ML backend, retrain on the project's annotations (`train "
                                       "--init` this model) into DIR/round_K and serve the result; off by default")
    train_config: str | None = _opt(None, "run config for retraining (default: the built-in defaults)")
    train_set: tuple[str, ...] = _opt((), "a --set override for retraining (repeat)")
    train_timeout: float = _opt(3600.0, "seconds a retraining job may run; past it the job is stopped")
    train_threads: int | None = _opt(None, "CPU threads for a retraining job (default: torch's own choice; give "
                                           "fewer than the cores to keep serving responsive)")
    keep_rounds: int = _opt(3, "retraining rounds kept on disk (the served one is never removed)")
    max_export_bytes: int = _opt(50_000_000, "a Label Studio export bigger than this is refused (413)")
    # The Label Studio link (issue 34): the operator names the one host exports are fetched from; a caller's /setup
    # cannot point the server at another (SSRF). http(s) only, no redirect, a total deadline, a byte cap.
    label_studio_url: str | None = _opt(None, "Label Studio's base URL (http or https): the only place the server "
                                              "fetches a project's export from (START_TRAINING); /setup's hostname "
                                              "is not used")
    fetch_timeout: float = _opt(120.0, "seconds a Label Studio export may take to download in all")
    max_projects: int = _opt(100, "Label Studio projects /setup remembers (tokens); past it: 409")
    # The promotion gate: a finished round is served only if it scores at least the served model's F1 + margin on
    # held-out data — the operator's file, else a slice of the export kept out of training.
    promote_data: str | None = _opt(None, "labelled data both models are scored on before a round is served (file "
                                          "or bundled name; default: a slice of the export held out from training)")
    holdout: float = _opt(0.2, "the share of the export's annotated tasks held out for the promotion gate (when "
                               "--promote-data is not given)")
    promote_margin: float = _opt(0.0, "F1 points a new round must gain over the served model on the held-out data "
                                      "to be served (negative: the drop tolerated)")
    promote_min_entities: int = _opt(10, "gold entities the held-out data must hold for the gate to judge; fewer "
                                         "(F1 on nothing is 0 for both models): the round is kept, not served")
    train_keys: tuple[str, ...] = ()  # the keys that may train, promote and roll back (api_keys may only predict)
    allowed_hosts: tuple[str, ...] = ()  # Host headers accepted (set for loopback without keys: DNS rebinding)

    def __post_init__(self) -> None:
        from ..inference.outputs import Thresholds
        from ..inference.precision import check_precision
        from ..modeling.persistence import check_runtime, check_runtime_name

        if not self.model_dir:
            raise UserError("a model dir is required (--model)")
        check_precision(self.precision)
        check_runtime_name(self.runtime)  # the dir itself is read only where it matters (below)
        runtime = check_runtime(self.model_dir, self.runtime) if self.runtime != "auto" or self.train_dir else "auto"
        if runtime not in ("torch", "auto") and self.train_dir:
            raise UserError(f"--train-dir retrains the served model with `train --init`, which needs its PyTorch "
                            f"weights: serve the model dir {self.model_dir} came from, not its {runtime} export")
        Thresholds(self.min_score)
        positive = ("max_text_chars", "max_batch", "max_batch_texts", "max_queue", "max_request_chars",
                    "max_queue_chars")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_wait_ms < 0:
            raise UserError("--batch-wait-ms must be 0 or more")
        if self.max_queue_chars < self.max_request_chars:
            raise UserError("--max-queue-chars must be at least --max-request-chars (else a request could never "
                            "queue)")
        if self.request_timeout <= 0:
            raise UserError("--request-timeout must be more than 0 seconds")
        if self.train_timeout <= 0 or self.keep_rounds < 1 or self.max_export_bytes < 1 or (
                self.train_threads is not None and self.train_threads < 1):
            raise UserError("--train-timeout, --keep-rounds, --max-export-bytes and --train-threads must be positive")
        if self.label_studio_url is not None:
            u = urlsplit(self.label_studio_url)
            if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
                raise UserError(f"--label-studio-url must be an http(s) URL with a host and no query, got "
                                f"{self.label_studio_url!r}")
        if self.fetch_timeout <= 0 or self.max_projects < 1 or not 0 < self.holdout < 1 or \
                self.promote_min_entities < 1:
            raise UserError("--fetch-timeout, --max-projects and --promote-min-entities must be positive, --holdout "
                            "between 0 and 1")
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise UserError("--max-body-bytes must be at least 1")

    def all_keys(self) -> tuple[str, ...]:
        return self.api_keys + self.train_keys

    def body_limit(self) -> int:
        return self.max_body_bytes or BODY_BYTES_PER_CHAR * self.max_request_chars + BODY_JSON_SLACK

    def path_body_limits(self) -> dict[str, int]:
        """Paths whose body another limit governs: POST /train carries a whole export, up to --max-export-bytes
        (its tasks as Label Studio sends them, with the predictions we drop), not a prediction request's size."""
        return {"/train": max(self.body_limit(), 2 * self.max_export_bytes + BODY_JSON_SLACK)} if self.train_dir \
            else {}
