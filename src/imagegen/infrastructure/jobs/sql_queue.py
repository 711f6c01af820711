"""``JobQueue`` on the application's own database (SQLite or PostgreSQL).

A job row is written by the caller's unit of work, so it exists exactly when the generation
and its reservation do. Workers claim jobs with a lease (``locked_until``) that they renew
while the job runs; a job whose lease ran out — its worker died — is claimable again, up to
``max_attempts`` claims. Claims are serialized by SQLite's write lock (``BEGIN IMMEDIATE``)
and, on PostgreSQL, spread over workers with ``FOR UPDATE SKIP LOCKED``.

Bytes in a payload (a background edit's uploads) are kept in ``job_inputs`` (see
``inputs``), written with the job and deleted once it can never run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imagegen.application.ports import Clock, UnitOfWork
from imagegen.domain.jobs import Job, JobStatus
from imagegen.infrastructure.jobs import inputs
from imagegen.infrastructure.persistence.engine import READ_ONLY
from imagegen.infrastructure.persistence.orm import JobRecord
from imagegen.infrastructure.persistence.uow import SqlUnitOfWork


def _session_of(uow: UnitOfWork) -> AsyncSession:
    if not isinstance(uow, SqlUnitOfWork):
        raise TypeError("the SQL job queue needs the SQL unit of work")
    return uow.session


def _job(record: JobRecord, blobs: dict[str, dict[int, bytes]] | None = None) -> Job:
    payload = dict(record.payload)
    if blobs is not None and record.generation_id in blobs:
        payload = inputs.attach(payload, blobs[record.generation_id])
    return Job(
        id=record.id,
        kind=record.kind,
        generation_id=record.generation_id,
        tenant_id=record.tenant_id,
        payload=payload,
        created_at=record.created_at,
        status=JobStatus(record.status),
        attempts=record.attempts,
        max_attempts=record.max_attempts,
        locked_until=record.locked_until,
        worker_id=record.worker_id,
        cancel_requested=record.cancel_requested,
        last_error=record.last_error,
    )


class SqlJobQueue:
    def __init__(self, *, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._reads = async_sessionmaker(
            engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )

    # --- the JobQueue port: within the caller's transaction ---------------------------------

    async def enqueue(self, uow: UnitOfWork, job: Job) -> None:
        now = self._clock.now()
        session = _session_of(uow)
        payload, blobs = inputs.detach(job.payload)
        await inputs.store(session, job.generation_id, blobs, now)
        session.add(
            JobRecord(
                id=job.id,
                kind=job.kind,
                generation_id=job.generation_id,
                tenant_id=job.tenant_id,
                payload=payload,
                status=job.status.value,
                attempts=job.attempts,
                max_attempts=job.max_attempts,
                locked_until=None,
                worker_id=None,
                cancel_requested=False,
                last_error=None,
                created_at=job.created_at,
                updated_at=now,
            )
        )

    async def cancel(self, uow: UnitOfWork, generation_id: str) -> None:
        session = _session_of(uow)
        now = self._clock.now()
        of_generation = JobRecord.generation_id == generation_id
        await session.execute(
            update(JobRecord)
            .where(of_generation, JobRecord.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.CANCELED.value, updated_at=now)
        )
        await session.execute(
            update(JobRecord)
            .where(of_generation, JobRecord.status == JobStatus.RUNNING.value)
            .values(cancel_requested=True, updated_at=now)
        )
        # The generation is canceled with this transaction: its job never runs again.
        await inputs.discard(session, [generation_id])

    # --- workers: each call its own transaction ---------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, lease: timedelta
    ) -> tuple[list[Job], list[Job]]:
        """Lease up to ``limit`` runnable jobs: queued ones, and running ones whose lease ran
        out (their worker died). Returns (claimed, exhausted): the latter ran out of attempts
        and are marked failed here; their generation must be failed by the caller."""
        now = self._clock.now()
        claimed: list[Job] = []
        exhausted: list[Job] = []
        runnable = or_(
            JobRecord.status == JobStatus.QUEUED.value,
            and_(JobRecord.status == JobStatus.RUNNING.value, JobRecord.locked_until < now),
        )
        # A read first: an idle worker polling must not take SQLite's write lock each time.
        async with self._reads() as session:
            if (await session.scalar(select(JobRecord.id).where(runnable).limit(1))) is None:
                return claimed, exhausted
        async with self._sessions() as session, session.begin():
            query = (
                select(JobRecord)
                .where(runnable)
                .order_by(JobRecord.created_at, JobRecord.id)
                .limit(limit)
            )
            if self._engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            records = (await session.scalars(query)).all()
            wanted = [r.generation_id for r in records if inputs.slots(r.payload)]
            blobs = await inputs.load(session, wanted)
            ended: list[str] = []
            for record in records:
                record.updated_at = now
                if record.status == JobStatus.RUNNING.value and (
                    record.attempts >= record.max_attempts or record.cancel_requested
                ):
                    record.status = (
                        JobStatus.CANCELED.value
                        if record.cancel_requested
                        else JobStatus.FAILED.value
                    )
                    record.last_error = f"its worker stopped {record.attempts} times"
                    exhausted.append(_job(record))
                    ended.append(record.generation_id)
                    continue
                record.status = JobStatus.RUNNING.value
                record.attempts += 1
                record.worker_id = worker_id
                record.locked_until = now + lease
                claimed.append(_job(record, blobs))
            await inputs.discard(session, ended)
        return claimed, exhausted

    async def heartbeat(self, worker_id: str, job_ids: Sequence[str], lease: timedelta) -> set[str]:
        """Renew this worker's leases; returns the ids of the jobs asked to stop (canceled)."""
        if not job_ids:
            return set()
        now = self._clock.now()
        async with self._sessions() as session, session.begin():
            mine = and_(
                JobRecord.id.in_(list(job_ids)),
                JobRecord.worker_id == worker_id,
                JobRecord.status == JobStatus.RUNNING.value,
            )
            await session.execute(update(JobRecord).where(mine).values(locked_until=now + lease))
            rows = await session.scalars(
                select(JobRecord.id).where(
                    JobRecord.id.in_(list(job_ids)),
                    or_(JobRecord.cancel_requested, JobRecord.status == JobStatus.CANCELED.value),
                )
            )
            return set(rows.all())

    async def finish(
        self, job_id: str, worker_id: str, status: JobStatus, error: str | None = None
    ) -> None:
        """Record how the job ended, if this worker still holds it."""
        now = self._clock.now()
        async with self._sessions() as session, session.begin():
            ended = await session.scalars(
                update(JobRecord)
                .where(
                    JobRecord.id == job_id,
                    JobRecord.worker_id == worker_id,
                    JobRecord.status == JobStatus.RUNNING.value,
                )
                .values(status=status.value, last_error=error, locked_until=None, updated_at=now)
                .returning(JobRecord.generation_id)
            )
            if status.is_terminal:
                await inputs.discard(session, ended.all())

    async def get(self, job_id: str) -> Job | None:
        async with self._reads() as session:
            record = await session.get(JobRecord, job_id)
            if record is None:
                return None
            return _job(record, await inputs.load(session, [record.generation_id]))

    async def of_generation(self, generation_id: str) -> list[Job]:
        async with self._reads() as session:
            rows = await session.scalars(
                select(JobRecord)
                .where(JobRecord.generation_id == generation_id)
                .order_by(JobRecord.created_at)
            )
            records = rows.all()
            blobs = await inputs.load(session, [generation_id])
            return [_job(record, blobs) for record in records]
