"""The model being served, on `app.state.served`: the one path that loads a model — at start, on a promotion and on
a rollback — its micro-batcher, and what responses say about it (a name and a fingerprint, never a path)."""

from __future__ import annotations

import asyncio
import logging
import time

from ..inference.outputs import Thresholds
from ..rundir import model_identity, model_tag
from .batcher import Batcher
from .middleware import Metrics
from .settings import ServeConfig

log = logging.getLogger(__name__)


class Served:
    def __init__(self, cfg: ServeConfig, model_dir: str, metrics: Metrics, pinned_version: str | None):
        self.cfg, self.model_dir, self.metrics = cfg, model_dir, metrics
        self.identity = model_identity(model_dir, cfg.model_name, pinned_version)
        self.ner = None
        self.batcher: Batcher | None = None
        self.load_seconds: float | None = None

    def _load(self, model_dir: str):
        from ..inference.engine import NERModel

        return NERModel.from_pretrained(model_dir, device=self.cfg.device, trust_remote_code=self.cfg.trust_remote_code,
                                        precision=self.cfg.precision, min_score=self.cfg.min_score,
                                        runtime=self.cfg.runtime)

    def start(self, ner=None) -> None:
        """Load the model (or take the one handed in: tests, an embedding app) and start the batcher."""
        t0 = time.time()
        self.ner = ner or self._load(self.model_dir)
        if ner is not None and self.cfg.min_score is not None:  # a model handed in gets the server's threshold too
            ner.thresholds = Thresholds.of(self.cfg.min_score, ner.calibration.get("thresholds"))
        self.load_seconds = round(time.time() - t0, 2)
        self.metrics.load_seconds.set(self.load_seconds)
        self.batcher = Batcher(self.ner, self.cfg, self.metrics)
        self.batcher.start()
        log.info("model %s (%s) loaded in %.1f s", self.identity["name"], self.identity["version"], self.load_seconds)

    async def swap(self, model_dir: str) -> None:
        """Serve another model from now on: loaded beside the old one (which answers meanwhile), then swapped."""
        new = await asyncio.get_running_loop().run_in_executor(None, self._load, model_dir)
        self.ner = self.batcher.ner = new
        self.model_dir, self.identity = model_dir, model_identity(model_dir, self.cfg.model_name)
        log.info("now serving %s (%s)", model_dir, self.identity["version"])

    def version(self) -> str:
        return model_tag(self.identity)

    def info(self) -> dict:
        return {**self.identity, "labels": list(self.ner.labels.types) if self.ner else []}
