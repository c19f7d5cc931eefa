"""The reward server's micro-batcher: concurrent requests scored together on one thread.

One worker task takes the first queued request plus everything queued behind it (up to
`max_batch` solutions, waiting up to `max_wait_ms` for more when the queue runs dry), and
scores them all with one `PRM.score` call in a dedicated thread (the event loop keeps
accepting meanwhile); each request's future gets its own slice. The default wait is 0: a
batch is what queued while the model was busy. Measured with bench/serve_load.py (16
closed-loop clients, CPU): waiting 5 ms put all 16 clients into one batch and left the
model idle a third of the time while the answers went out and the next requests came in
(326 requests/s); with no wait the clients split into two waves whose HTTP work overlaps
the other wave's forward pass (model busy 98%, 490 requests/s). A wait can help open-loop
traffic when a forward costs the same for 1 or 16 sequences (GPU). The queue is bounded:
when it is full a request is answered 503 at once instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


class Overloaded(Exception):
    """The request queue is full."""


@dataclass
class Job:
    """One request's solutions, waiting for their step values."""

    problems: list[str]
    solutions: list[list[str]]
    future: asyncio.Future


@dataclass
class BatchStats:
    requests: int = 0
    solutions: int = 0
    batches: int = 0
    rejected: int = 0
    failed: int = 0
    scoring_seconds: float = 0.0
    """Wall time the model thread spent scoring (its busy time)."""


class MicroBatcher:
    """Collects concurrent requests into single-pass scoring calls on one model thread.

    `score(problems, solutions) -> step values` runs only on this batcher's thread, so the
    model and its tokenizer are never used from two threads at once.
    """

    def __init__(self, score: Callable, max_batch: int, max_wait_ms: float, max_queue: int):
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdrm-prm")
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(Overloaded("server shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, problems: list[str], solutions: list[list[str]]) -> list[list[float]]:
        if not solutions:
            return []
        job = Job(problems, solutions, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.rejected += 1
            raise Overloaded(
                f"server overloaded: queue full ({self.queue.qsize()} pending), retry later"
            ) from None
        return await job.future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            try:
                await self._collect_and_score(batch)
            except Exception as e:  # noqa: BLE001 - a bug here must not stop the worker
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)

    async def _collect_and_score(self, batch: list[Job]) -> None:
        """Add queued jobs to `batch` up to max_batch solutions or max_wait, score, answer.

        `batch` is extended in place, so `_run` can fail every collected job if this raises.
        """
        loop = asyncio.get_running_loop()
        size = len(batch[0].solutions)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            if self.queue.empty():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            else:
                job = self.queue.get_nowait()
            batch.append(job)
            size += len(job.solutions)
        live = [job for job in batch if not job.future.done()]  # clients that gave up are skipped
        if not live:
            return
        start = time.perf_counter()
        results = await loop.run_in_executor(self._executor, self._score_jobs, live)
        self.stats.scoring_seconds += time.perf_counter() - start
        self.stats.batches += 1
        for job, (values, error) in zip(live, results, strict=True):
            self.stats.requests += 1
            self.stats.solutions += len(job.solutions)
            if job.future.done():
                continue
            if error is None:
                job.future.set_result(values)
            else:
                self.stats.failed += 1
                job.future.set_exception(error)

    def _score_jobs(
        self, jobs: list[Job]
    ) -> list[tuple[list[list[float]] | None, Exception | None]]:
        """Step values per job from one scoring call; on failure, each job alone (so one bad
        request cannot fail the requests it happened to share a batch with)."""
        problems = [p for job in jobs for p in job.problems]
        solutions = [s for job in jobs for s in job.solutions]
        try:
            values = self.score(problems, solutions)
        except Exception as e:  # noqa: BLE001 - reported to the client, the server lives on
            if len(jobs) == 1:
                return [(None, e)]
            return [self._score_jobs([job])[0] for job in jobs]
        out, start = [], 0
        for job in jobs:
            out.append((values[start : start + len(job.solutions)], None))
            start += len(job.solutions)
        return out
