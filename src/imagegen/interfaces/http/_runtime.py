"""What one app instance holds: the container, the library's lifecycle, and the generations
that outlived their request (a client that stopped waiting does not stop its generation)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from decimal import Decimal
from typing import TypeVar

from imagegen.bootstrap.access import Access, build_access
from imagegen.bootstrap.container import Container
from imagegen.bootstrap.jobs import build_job_runner
from imagegen.bootstrap.webhooks import Webhooks, build_webhooks, supports_webhooks
from imagegen.client import AsyncImageGen
from imagegen.infrastructure.jobs import JobRunner
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.interfaces.http._settings import ServiceSettings

log = logging.getLogger("imagegen.http")

T = TypeVar("T")

# On shutdown, generations still running get this long to finish before they are canceled
# (a canceled generation is marked failed and its reservation released).
DRAIN_SECONDS = 10.0


class Runtime:
    def __init__(self, container: Container, service: ServiceSettings) -> None:
        self.container = container
        self.service = service
        self._library = AsyncImageGen(container=container)
        self._access: Access | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        self._webhooks: Webhooks | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._stop_dispatcher = asyncio.Event()
        self._runner: JobRunner | None = None
        self._runner_task: asyncio.Task[int] | None = None

    @property
    def usd_per_credit(self) -> Decimal:
        return self._library.settings.usd_per_credit

    async def start(self) -> Access:
        """Migrate the database (when configured to) and wire the use cases, once. Called by
        the lifespan, and by the first request when the app is mounted without one."""
        if self._access is not None:
            return self._access
        async with self._lock:
            if self._access is None:
                await self._library.__aenter__()
                self._access = build_access(self.container)
                if supports_webhooks(self.container):
                    self._webhooks = build_webhooks(self.container)
                if self._webhooks and self._library.settings.webhooks_dispatch_in_service:
                    self._stop_dispatcher.clear()
                    self._dispatcher = asyncio.ensure_future(
                        self._webhooks.dispatcher.run_forever(self._stop_dispatcher)
                    )
                self._start_jobs()
        return self._access

    async def webhooks(self) -> Webhooks:
        """The webhook use cases; ``ConfigurationError`` when the unit of work has none."""
        await self.start()
        return self._webhooks or build_webhooks(self.container)  # raises the reason

    def _start_jobs(self) -> None:
        """Run background jobs of the in-process queue in this process too, unless separate
        workers do (``IMAGEGEN_SERVE_RUNS_JOBS=false``; always with procrastinate). The
        reservation sweeper stays with the workers."""
        settings = self._library.settings
        if not settings.serve_runs_jobs or settings.job_queue != "inprocess":
            return
        if not isinstance(self.container.gateways.uow(), SqlUnitOfWorkFactory):
            return  # test fakes: there is no jobs table to run
        self._runner = build_job_runner(self.container, maintenance=False)
        self._runner_task = asyncio.ensure_future(self._runner.run())

    def detach(self, work: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``work`` as a task that goes on if the request waiting for it ends."""
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a detached generation ended with %r", task.exception())

    async def aclose(self) -> None:
        if self._runner is not None and self._runner_task is not None:
            self._runner.stop()
            await asyncio.gather(self._runner_task, return_exceptions=True)
            self._runner = self._runner_task = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_SECONDS)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=DRAIN_SECONDS)
        if self._dispatcher is not None:
            self._stop_dispatcher.set()
            dispatcher, self._dispatcher = self._dispatcher, None
            await asyncio.wait({dispatcher}, timeout=DRAIN_SECONDS)
            dispatcher.cancel()
        if self._webhooks is not None:
            webhooks, self._webhooks = self._webhooks, None
            await webhooks.aclose()
        if self._access is not None:
            access, self._access = self._access, None
            await access.aclose()
            await self._library.aclose()
