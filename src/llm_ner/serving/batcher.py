"""Micro-batching: concurrent requests share one model call, with bounded queues and per-request failure."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from fastapi import HTTPException

from .middleware import Metrics
from .settings import ServeConfig

log = logging.getLogger(__name__)


class TextFailed(Exception):
    """The model raised on one text of a request (found by running the texts alone): that request fails, no other."""

    def __init__(self, index: int | None, error: BaseException):
        super().__init__(f"{type(error).__name__}: {error}")
        self.index, self.error = index, error


@dataclass
class _Job:
    texts: list[str]
    fut: asyncio.Future
    chars: int


class Batcher:
    """Collects requests and runs them through the model in combined batches, one batch at a time.

    What a request costs is counted in texts and characters, not requests: the queue refuses (429) past `max_queue`
    requests or `max_queue_chars` characters waiting. A request not answered within `request_timeout` gets 503; if it
    is still queued then, it is dropped before it costs any work. One text that makes the model raise fails only its
    own request: a failed batch is re-run request by request, and the failing request text by text, to name the text.
    """

    def __init__(self, ner, cfg: ServeConfig, metrics: Metrics):
        self.ner, self.cfg, self.metrics = ner, cfg, metrics
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=cfg.max_queue)
        self.queued_chars = 0
        self.task: asyncio.Task | None = None
        self.in_flight = 0  # requests submitted and not yet answered (queued or in the model): shown by /health
        self.last_batch_seconds = 1.0  # how long the last model call took: the Retry-After hint
        metrics.queue_depth.set_function(self.queue.qsize)
        metrics.queue_chars.set_function(lambda: self.queued_chars)
        metrics.in_flight.set_function(lambda: self.in_flight)

    def start(self) -> None:
        self.task = asyncio.create_task(self._worker())

    def dead(self) -> str | None:
        """Why the worker is not running (None while it is): /health reports it, so a supervisor restarts us."""
        if self.task is None or not self.task.done():
            return None
        err = None if self.task.cancelled() else self.task.exception()
        return f"the batching worker stopped ({type(err).__name__}: {err})" if err else "the batching worker stopped"

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    def _busy(self) -> HTTPException:
        retry = str(max(1, math.ceil(self.last_batch_seconds)))
        return HTTPException(429, f"the server is busy ({self.queue.qsize()} requests, {self.queued_chars} characters "
                                  "are waiting); retry later", headers={"Retry-After": retry})

    async def submit(self, texts: list[str]) -> list:
        if why := self.dead():
            raise HTTPException(503, why)
        chars = sum(map(len, texts))
        # an empty queue takes any request the size limits let through; otherwise the characters waiting are capped
        if self.queue.qsize() and self.queued_chars + chars > self.cfg.max_queue_chars:
            raise self._busy()
        job = _Job(texts, asyncio.get_running_loop().create_future(), chars)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise self._busy() from None
        self.queued_chars += chars
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.cfg.request_timeout):
                return await asyncio.shield(job.fut)
        except TimeoutError:
            job.fut.cancel()  # still queued: the worker skips it; already running: its answer is dropped
            raise HTTPException(503, f"the request was not answered within {self.cfg.request_timeout:g} s "
                                     "(--request-timeout); send fewer or shorter texts, or retry later") from None
        finally:
            self.in_flight -= 1

    async def _worker(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            await asyncio.sleep(self.cfg.batch_wait_ms / 1000)  # let requests that arrive together share a batch
            while not self.queue.empty() and sum(len(j.texts) for j in jobs) < self.cfg.max_batch_texts:
                jobs.append(self.queue.get_nowait())
            self.queued_chars -= sum(j.chars for j in jobs)
            jobs = [j for j in jobs if not j.fut.done()]  # timed out while queued: no work for them
            try:
                await self._run(jobs)
            except Exception as e:  # a bug here must not leave requests hanging, nor stop the worker
                log.exception("batch failed")
                for j in jobs:
                    if not j.fut.done():
                        j.fut.set_exception(e)

    async def _predict(self, texts: list[str]) -> list:
        self.metrics.batch.observe(len(texts))
        t0 = time.perf_counter()
        res = await asyncio.get_running_loop().run_in_executor(None, self.ner, texts)
        self.last_batch_seconds = time.perf_counter() - t0
        return res

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            res = await self._predict([t for j in jobs for t in j.texts])
        except Exception as e:
            if len(jobs) > 1:  # isolate: each request alone, so only the one holding the bad text fails
                for j in jobs:
                    await self._run([j])
            elif not jobs[0].fut.done():
                jobs[0].fut.set_exception(await self._name_failing_text(jobs[0].texts, e))
            return
        k = 0
        for j in jobs:
            if not j.fut.done():
                j.fut.set_result(res[k : k + len(j.texts)])
            k += len(j.texts)

    async def _name_failing_text(self, texts: list[str], error: Exception) -> TextFailed:
        if len(texts) > 1:
            for i, t in enumerate(texts):
                try:
                    await self._predict([t])
                except Exception as e:
                    return TextFailed(i, e)
        return TextFailed(0 if len(texts) == 1 else None, error)  # None: the texts fail only together
