"""The job runner, wired from the container (``imagegen worker`` and ``imagegen serve``)."""

from __future__ import annotations

from imagegen.bootstrap.container import Container
from imagegen.infrastructure.jobs.runner import JobRunner


def build_job_runner(container: Container, *, concurrency: int | None = None) -> JobRunner:
    settings = container.settings()
    return JobRunner(
        queue=container.gateways.job_queue(),
        run=container.run_generation_job(),
        abandon=container.abandon_job(),
        maintenance=container.sweeper().execute,
        concurrency=concurrency or settings.worker_concurrency,
        lease_seconds=settings.job_lease_seconds,
        poll_seconds=settings.worker_poll_seconds,
        maintenance_seconds=settings.worker_maintenance_seconds,
    )
