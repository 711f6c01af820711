"""The asyncio worker of the database-backed queue: bounded concurrency, leases, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from imagegen.application.use_cases.jobs import AbandonJob, RunGenerationJob
from imagegen.domain.errors import ImageGenError
from imagegen.domain.jobs import Job, JobStatus
from imagegen.infrastructure.jobs.sql_queue import SqlJobQueue

log = logging.getLogger("imagegen.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    """Claims up to ``concurrency`` jobs at a time and runs each as an asyncio task.

    While a job runs its lease is renewed every third of ``lease_seconds``; if this process
    dies, the lease runs out and another worker claims the job again (it resumes the
    generation's recorded provider jobs rather than paying for new ones). A canceled job's
    task is canceled at the next heartbeat. ``maintenance`` (the reservation sweeper) runs
    every ``maintenance_seconds``.
    """

    def __init__(
        self,
        *,
        queue: SqlJobQueue,
        run: RunGenerationJob,
        abandon: AbandonJob,
        maintenance: Callable[[], Awaitable[object]] | None = None,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        maintenance_seconds: float = 60.0,
        drain_seconds: float = 10.0,
        worker_id: str | None = None,
    ) -> None:
        self._queue = queue
        self._run = run
        self._abandon = abandon
        self._maintenance = maintenance
        self._concurrency = max(1, concurrency)
        self._lease = timedelta(seconds=lease_seconds)
        self._heartbeat_every = max(lease_seconds / 3, 0.05)
        self._poll = poll_seconds
        self._maintenance_every = maintenance_seconds
        self._drain = drain_seconds
        self.worker_id = worker_id or new_worker_id()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.finished = 0

    def stop(self) -> None:
        """Claim nothing more; running jobs get ``drain_seconds`` to finish."""
        self._stop.set()

    async def run(self, *, once: bool = False) -> int:
        """Work until ``stop()`` (or, with ``once``, until no job is left to claim); returns
        the number of jobs this runner finished."""
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + self._heartbeat_every
        next_maintenance = loop.time()
        try:
            while not self._stop.is_set():
                if self._maintenance is not None and loop.time() >= next_maintenance:
                    await self._maintain()
                    next_maintenance = loop.time() + self._maintenance_every
                claimed = await self._claim()
                if once and not self._tasks and not claimed:
                    break
                if loop.time() >= next_heartbeat:
                    await self._heartbeat()
                    next_heartbeat = loop.time() + self._heartbeat_every
                await self._wait(min(self._poll, max(next_heartbeat - loop.time(), 0.0)))
        finally:
            await self._shutdown()
        return self.finished

    async def _claim(self) -> int:
        free = self._concurrency - len(self._tasks)
        if free <= 0:
            return 0
        try:
            claimed, exhausted = await self._queue.claim(self.worker_id, free, self._lease)
        except Exception:
            log.exception("could not claim jobs")
            return 0
        for job in exhausted:
            log.warning("job %s ran out of attempts; failing its generation", job.id)
            with contextlib.suppress(Exception):
                await self._abandon.execute(job)
        for job in claimed:
            log.info(
                "running job %s (generation %s, attempt %d)",
                job.id,
                job.generation_id,
                job.attempts,
            )
            task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
            self._tasks[job.id] = task
            task.add_done_callback(self._forget(job.id))
        return len(claimed) + len(exhausted)

    def _forget(self, job_id: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(job_id, None)

        return forget

    async def _heartbeat(self) -> None:
        try:
            stopping = await self._queue.heartbeat(self.worker_id, list(self._tasks), self._lease)
        except Exception:
            log.exception("could not renew the job leases")
            return
        for job_id in stopping:
            task = self._tasks.get(job_id)
            if task is not None:
                log.info("job %s was canceled; stopping it", job_id)
                task.cancel()

    async def _maintain(self) -> None:
        assert self._maintenance is not None
        try:
            await self._maintenance()
        except Exception:
            log.exception("the periodic maintenance failed")

    async def _wait(self, seconds: float) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait(
                {stop, *self._tasks.values()}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()

    async def _execute(self, job: Job) -> None:
        status, error = JobStatus.DONE, None
        try:
            await self._run.execute(job)
        except asyncio.CancelledError:
            # Asked to stop: by a cancel, or by this worker shutting down past its drain time
            # (the lifecycle then failed the generation and released its credits).
            stopped = self._stop.is_set()
            status = JobStatus.FAILED if stopped else JobStatus.CANCELED
            error = "the worker stopped" if stopped else "canceled"
        except ImageGenError as exc:
            status, error = JobStatus.FAILED, f"{exc.code}: {exc.message}"
        except Exception as exc:
            log.exception("job %s failed", job.id)
            status, error = JobStatus.FAILED, type(exc).__name__
        try:
            await asyncio.shield(self._queue.finish(job.id, self.worker_id, status, error))
        except Exception:
            log.exception("could not record the end of job %s", job.id)
        self.finished += 1

    async def _shutdown(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks.values()), timeout=self._drain)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=self._drain)
