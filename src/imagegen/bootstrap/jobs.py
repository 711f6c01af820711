"""The job runner, wired from the container (``imagegen worker`` and ``imagegen serve``)."""

from __future__ import annotations

from imagegen.bootstrap.container import Container
from imagegen.infrastructure.jobs.runner import JobRunner


def build_job_runner(
    container: Container, *, concurrency: int | None = None, maintenance: bool = True
) -> JobRunner:
    """``maintenance``: also sweep expired reservations every
    ``IMAGEGEN_WORKER_MAINTENANCE_SECONDS`` (workers do; the HTTP server's runner does not)."""
    settings = container.settings()
    return JobRunner(
        queue=container.gateways.job_queue(),
        run=container.run_generation_job(),
        abandon=container.abandon_job(),
        maintenance=container.sweeper().execute if maintenance else None,
        concurrency=concurrency or settings.worker_concurrency,
        lease_seconds=settings.job_lease_seconds,
        poll_seconds=settings.worker_poll_seconds,
        maintenance_seconds=settings.worker_maintenance_seconds,
    )
