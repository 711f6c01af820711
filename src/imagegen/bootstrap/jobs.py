"""The job worker, wired from the container (``imagegen worker`` and ``imagegen serve``)."""

from __future__ import annotations

from typing import Protocol

from imagegen.bootstrap.container import Container
from imagegen.domain.errors import ConfigurationError
from imagegen.infrastructure.jobs.runner import JobRunner
from imagegen.infrastructure.jobs.sql_queue import SqlJobQueue


class Worker(Protocol):
    worker_id: str

    def stop(self) -> None: ...

    async def run(self, *, once: bool = False) -> int: ...


def build_job_runner(
    container: Container, *, concurrency: int | None = None, maintenance: bool = True
) -> JobRunner:
    """The in-process runner. ``maintenance``: also sweep expired reservations every
    ``IMAGEGEN_WORKER_MAINTENANCE_SECONDS`` (workers do; the HTTP server's runner does not)."""
    settings = container.settings()
    queue = container.gateways.job_queue()
    if not isinstance(queue, SqlJobQueue):
        raise ConfigurationError("The in-process job runner needs IMAGEGEN_JOB_QUEUE=inprocess.")
    return JobRunner(
        queue=queue,
        run=container.run_generation_job(),
        abandon=container.abandon_job(),
        maintenance=container.sweeper().execute if maintenance else None,
        concurrency=concurrency or settings.worker_concurrency,
        lease_seconds=settings.job_lease_seconds,
        poll_seconds=settings.worker_poll_seconds,
        maintenance_seconds=settings.worker_maintenance_seconds,
    )


def build_worker(container: Container, *, concurrency: int | None = None) -> Worker:
    """What ``imagegen worker`` runs: the configured queue's worker."""
    settings = container.settings()
    if settings.job_queue != "procrastinate":
        return build_job_runner(container, concurrency=concurrency)
    from imagegen.infrastructure.jobs.procrastinate_queue import (
        ProcrastinateJobQueue,
        ProcrastinateWorker,
    )

    queue = container.gateways.job_queue()
    assert isinstance(queue, ProcrastinateJobQueue)
    return ProcrastinateWorker(
        app=queue.app,
        run=container.run_generation_job(),
        abandon=container.abandon_job(),
        maintenance=container.sweeper().execute,
        concurrency=concurrency or settings.worker_concurrency,
        lease_seconds=settings.job_lease_seconds,
        poll_seconds=settings.worker_poll_seconds,
        maintenance_seconds=settings.worker_maintenance_seconds,
    )
