"""``JobQueue`` on procrastinate (PostgreSQL only; ``pip install 'imagegen[jobs]'``).

The job is deferred on the SQLAlchemy session's own psycopg connection, inside the
transaction that creates the generation and reserves its credits: both commit, or neither.
Workers are procrastinate workers (``imagegen worker`` with ``IMAGEGEN_JOB_QUEUE=
procrastinate``); beside them a maintenance loop re-queues the jobs of workers that stopped
heart-beating (their process died) and sweeps expired credit reservations. Cancelling aborts
a running job: procrastinate cancels its asyncio task.

Bytes in a payload (a background edit's uploads) go to our ``job_inputs`` table on the same
connection and transaction (see ``inputs``); the task reads them back before it runs and
deletes them once the job is over.

Imported only when this queue is configured: ``import imagegen`` never loads procrastinate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import procrastinate
from procrastinate.jobs import Status
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen.application.ports import UnitOfWork
from imagegen.application.use_cases.jobs import AbandonJob, RunGenerationJob
from imagegen.domain.errors import ConfigurationError, ImageGenError
from imagegen.domain.jobs import RUN_GENERATION, Job, JobStatus
from imagegen.infrastructure.jobs import inputs
from imagegen.infrastructure.persistence.uow import SqlUnitOfWork

log = logging.getLogger("imagegen.worker")

TASK = f"imagegen.{RUN_GENERATION}"
QUEUE = "imagegen"
_SCHEMA_LOCK = int.from_bytes(hashlib.sha256(b"imagegen-procrastinate").digest()[:7], "big")


def make_app(database_url: str) -> procrastinate.App:
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            "IMAGEGEN_JOB_QUEUE=procrastinate needs PostgreSQL (IMAGEGEN_DATABASE_URL); "
            "use the default 'inprocess' queue with SQLite."
        )
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))


async def _driver_connection(uow: UnitOfWork) -> Any:
    """The psycopg connection under the unit of work's session, in its open transaction."""
    if not isinstance(uow, SqlUnitOfWork):
        raise TypeError("the procrastinate job queue needs the SQL unit of work")
    connection = await uow.session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def ensure_schema(engine: AsyncEngine) -> None:
    """Apply procrastinate's own schema once (its SQL, not ours: it versions it itself)."""
    async with engine.begin() as connection:
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        found = await connection.scalar(text("SELECT to_regclass('procrastinate_jobs')"))
        if found is None:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            await driver.execute(procrastinate.schema.SchemaManager.get_schema())


class ProcrastinateJobQueue:
    def __init__(self, app: procrastinate.App) -> None:
        self.app = app

    async def enqueue(self, uow: UnitOfWork, job: Job) -> None:
        payload, blobs = inputs.detach(job.payload)
        if blobs:
            assert isinstance(uow, SqlUnitOfWork)
            await inputs.store(uow.session, job.generation_id, blobs, datetime.now(UTC))
        connection = await _driver_connection(uow)
        await self.app.configure_task(TASK, queue=QUEUE, connection=connection).defer_async(
            job_id=job.id,
            generation_id=job.generation_id,
            tenant_id=job.tenant_id,
            payload=payload,
            max_attempts=job.max_attempts,
        )

    async def cancel(self, uow: UnitOfWork, generation_id: str) -> None:
        assert isinstance(uow, SqlUnitOfWork)
        rows = await uow.session.execute(
            text(
                "SELECT id FROM procrastinate_jobs WHERE task_name = :task "
                "AND status IN ('todo', 'doing') AND args->>'generation_id' = :generation"
            ),
            {"task": TASK, "generation": generation_id},
        )
        connection = await _driver_connection(uow)
        for (job_id,) in rows.all():
            # todo → cancelled; doing → abort requested (the worker cancels the task).
            await self.app.job_manager.cancel_job_by_id_async(
                job_id, abort=True, connection=connection
            )
        # The generation is canceled with this transaction: its job never runs again.
        await inputs.discard(uow.session, [generation_id])

    async def status_of(self, generation_id: str, engine: AsyncEngine) -> list[str]:
        """The procrastinate statuses of the generation's jobs (for tests and operators)."""
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT status::text FROM procrastinate_jobs "
                    "WHERE args->>'generation_id' = :generation ORDER BY id"
                ),
                {"generation": generation_id},
            )
            return [row[0] for row in rows.all()]


async def _with_inputs(app: procrastinate.App, job: Job) -> Job:
    """The job with the bytes its payload left in ``job_inputs`` put back."""
    if not inputs.slots(job.payload):
        return job
    rows = await app.connector.execute_query_all_async(
        "SELECT slot, data, sha256 FROM job_inputs WHERE generation_id = %(generation)s",
        generation=job.generation_id,
    )
    blobs = {
        row["slot"]: bytes(row["data"])
        for row in rows
        if hashlib.sha256(bytes(row["data"])).hexdigest() == row["sha256"]
    }
    job.payload = inputs.attach(job.payload, blobs)
    return job


async def _discard_inputs(app: procrastinate.App, generation_id: str) -> None:
    """The job is over (it will not run again): delete its bytes."""
    try:
        await app.connector.execute_query_async(
            "DELETE FROM job_inputs WHERE generation_id = %(generation)s",
            generation=generation_id,
        )
    except Exception:
        log.exception("could not delete the inputs of generation %s", generation_id)


def _domain_job(kwargs: dict[str, Any], attempts: int) -> Job:
    return Job(
        id=kwargs["job_id"],
        kind=RUN_GENERATION,
        generation_id=kwargs["generation_id"],
        tenant_id=kwargs["tenant_id"],
        payload=kwargs["payload"],
        created_at=datetime.now(UTC),
        status=JobStatus.RUNNING,
        attempts=attempts,
        max_attempts=kwargs.get("max_attempts", 1),
    )


class ProcrastinateWorker:
    """A procrastinate worker running generation jobs, plus the maintenance loop."""

    def __init__(
        self,
        *,
        app: procrastinate.App,
        run: RunGenerationJob,
        abandon: AbandonJob,
        maintenance: Callable[[], Awaitable[object]] | None,
        concurrency: int,
        lease_seconds: float,
        poll_seconds: float,
        maintenance_seconds: float,
        drain_seconds: float = 10.0,
    ) -> None:
        self._app = app
        self._run = run
        self._abandon = abandon
        self._maintenance = maintenance
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._maintenance_every = maintenance_seconds
        self._drain = drain_seconds
        self._stop = asyncio.Event()
        self.worker_id = "procrastinate"
        if TASK not in app.tasks:
            self._register()

    def _register(self) -> None:
        run = self._run
        app = self._app

        @self._app.task(name=TASK, queue=QUEUE, pass_context=True)
        async def run_generation(context: procrastinate.JobContext, /, **kwargs: Any) -> None:
            job = _domain_job(kwargs, context.job.attempts + 1)
            try:
                await run.execute(await _with_inputs(app, job))
            except ImageGenError as error:
                # The generation recorded it (failed, credits released): the job is done.
                log.info("generation %s failed: %s", job.generation_id, error.message)
            finally:
                # Whatever ended the task, procrastinate does not run it again (only a dead
                # worker's job is retried, and a dead worker reaches no finally).
                if inputs.slots(kwargs.get("payload")):
                    await asyncio.shield(_discard_inputs(app, job.generation_id))

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, once: bool = False) -> int:
        async with self._app.open_async():
            worker = asyncio.create_task(
                self._app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=self._concurrency,
                    wait=not once,
                    fetch_job_polling_interval=self._poll,
                    abort_job_polling_interval=max(self._lease / 3, 0.1),
                    update_heartbeat_interval=max(self._lease / 3, 0.1),
                    stalled_worker_timeout=self._lease,
                    shutdown_graceful_timeout=self._drain,
                    install_signal_handlers=False,
                )
            )
            stop = asyncio.create_task(self._stop.wait())
            try:
                while not worker.done():
                    await self._maintain()
                    await asyncio.wait(
                        {worker, stop},
                        timeout=self._maintenance_every,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if self._stop.is_set() and not worker.done():
                        worker.cancel()  # procrastinate then shuts down gracefully
            finally:
                stop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
        return 0

    async def _maintain(self) -> None:
        """Re-queue the jobs of stalled workers (or fail them past ``max_attempts``), then
        sweep expired reservations."""
        try:
            manager = self._app.job_manager
            for stalled in await manager.get_stalled_jobs(
                queue=QUEUE, seconds_since_heartbeat=self._lease
            ):
                assert stalled.id is not None
                job = _domain_job(stalled.task_kwargs, stalled.attempts + 1)
                if job.attempts >= job.max_attempts:
                    log.warning("job %s ran out of attempts; failing its generation", stalled.id)
                    await manager.finish_job_by_id_async(stalled.id, Status.FAILED, False)
                    await self._abandon.execute(job)
                    await _discard_inputs(self._app, job.generation_id)
                else:
                    log.info("re-queueing job %s of a stalled worker", stalled.id)
                    await manager.retry_job(stalled)
            if self._maintenance is not None:
                await self._maintenance()
        except Exception:
            log.exception("the periodic maintenance failed")
