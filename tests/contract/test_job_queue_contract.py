"""One contract for the job queue, run against ``InMemoryJobQueue`` (``imagegen.testing``) and
``SqlJobQueue`` on SQLite and PostgreSQL.

The ``JobQueue`` port (``enqueue`` / ``cancel`` in the caller's transaction) and the worker's
side (``claim`` / ``heartbeat`` / ``finish``, each its own transaction) behave the same: a job
exists exactly when its transaction commits, leases run out by the injected clock, a claim
counts an attempt, a job out of attempts is handed back exhausted, and only the worker
holding a job records its end. A hypothesis test drives random operation sequences through
every backend and a reference model of that state machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import IntegrityError

from contract.test_persistence_contract import empty_every_table, generation
from imagegen.application.ports import UnitOfWorkFactory
from imagegen.domain.jobs import RUN_GENERATION, Job, JobStatus
from imagegen.infrastructure.jobs.sql_queue import SqlJobQueue
from imagegen.infrastructure.persistence.engine import create_engine, upgrade_schema
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.testing import InMemoryJobQueue, InMemoryUnitOfWorkFactory, ManualClock, SequentialIds

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))
LEASE = timedelta(seconds=30)
REFUSED = (ValueError, IntegrityError)  # a duplicate the schema refuses


class Queue(Protocol):
    """What both queues offer: the ``JobQueue`` port and the worker's side."""

    async def enqueue(self, uow: Any, job: Job) -> None: ...

    async def cancel(self, uow: Any, generation_id: str) -> None: ...

    async def claim(
        self, worker_id: str, limit: int, lease: timedelta
    ) -> tuple[list[Job], list[Job]]: ...

    async def heartbeat(self, worker_id: str, job_ids: list[str], lease: timedelta) -> set[str]: ...

    async def finish(
        self, job_id: str, worker_id: str, status: JobStatus, error: str | None = None
    ) -> None: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def of_generation(self, generation_id: str) -> list[Job]: ...


@attrs.define
class Jobs:
    """One backend: a unit-of-work factory and a queue over the same (empty) database."""

    name: str
    clock: ManualClock
    uow: UnitOfWorkFactory
    queue: Queue
    reset_tables: Callable[[], Awaitable[tuple[UnitOfWorkFactory, Queue]]]

    async def reset(self) -> None:
        """Empty the database and start the clock at ``T0`` again (hypothesis examples)."""
        self.clock.set(T0)
        self.uow, self.queue = await self.reset_tables()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def jobs(request: pytest.FixtureRequest) -> AsyncIterator[Jobs]:
    clock = ManualClock(T0)
    if request.param == "memory":

        async def fresh_memory() -> tuple[UnitOfWorkFactory, Queue]:
            factory = InMemoryUnitOfWorkFactory()
            return factory, InMemoryJobQueue(uow=factory, clock=clock)

        uow, queue = await fresh_memory()
        yield Jobs("memory", clock, uow, queue, fresh_memory)
        return
    url: str = request.getfixturevalue(f"{request.param}_database")
    engine = create_engine(url)
    try:
        await upgrade_schema(engine)
        await empty_every_table(engine)
        sql_uow = SqlUnitOfWorkFactory(engine, SequentialIds())
        sql_queue = SqlJobQueue(engine=engine, clock=clock)

        async def fresh_sql() -> tuple[UnitOfWorkFactory, Queue]:
            await empty_every_table(engine)
            return sql_uow, sql_queue

        yield Jobs(request.param, clock, sql_uow, sql_queue, fresh_sql)
    finally:
        await engine.dispose()


def job(
    job_id: str,
    *,
    generation_id: str | None = None,
    minutes: int = 0,
    max_attempts: int = 3,
    tenant_id: str = "t1",
) -> Job:
    return Job(
        id=job_id,
        kind=RUN_GENERATION,
        generation_id=generation_id or f"gen_{job_id}",
        tenant_id=tenant_id,
        payload={"prompt": "a red fox", "n": 2, "tags": ["winter"], "max_cost": None},
        created_at=T0 + timedelta(minutes=minutes),
        max_attempts=max_attempts,
    )


async def enqueue(jobs: Jobs, *new: Job) -> None:
    async with jobs.uow() as uow:
        for one in new:
            await jobs.queue.enqueue(uow, one)
        await uow.commit()


async def enqueue_then_fail(jobs: Jobs, new: Job) -> None:
    async with jobs.uow() as uow:
        await jobs.queue.enqueue(uow, new)
        raise RuntimeError("boom")


async def cancel(jobs: Jobs, generation_id: str) -> None:
    async with jobs.uow() as uow:
        await jobs.queue.cancel(uow, generation_id)
        await uow.commit()


def ids(found: list[Job]) -> list[str]:
    return [j.id for j in found]


# --- enqueue: in the caller's transaction -------------------------------------------------------


async def test_a_job_exists_once_its_transaction_commits_with_every_field(jobs: Jobs) -> None:
    created = datetime(2025, 3, 1, 13, 0, 0, 123456, tzinfo=CET)  # stored as UTC
    new = attrs.evolve(job("job_1", max_attempts=5), created_at=created)
    async with jobs.uow() as uow:
        await jobs.queue.enqueue(uow, new)
        assert await jobs.queue.get("job_1") is None  # not committed: no worker sees it
        assert await jobs.queue.claim("w", 10, LEASE) == ([], [])
        await uow.commit()
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert (stored.id, stored.kind, stored.generation_id, stored.tenant_id) == (
        "job_1",
        RUN_GENERATION,
        "gen_job_1",
        "t1",
    )
    assert stored.payload == new.payload
    assert stored.created_at == created
    assert stored.created_at.utcoffset() == timedelta(0)
    assert (stored.status, stored.attempts, stored.max_attempts) == (JobStatus.QUEUED, 0, 5)
    assert (stored.locked_until, stored.worker_id, stored.last_error) == (None, None, None)
    assert stored.cancel_requested is False


async def test_a_transaction_that_does_not_commit_leaves_no_job(jobs: Jobs) -> None:
    async with jobs.uow() as uow:
        await jobs.queue.enqueue(uow, job("job_rolled_back"))
        await uow.rollback()
    async with jobs.uow() as uow:
        await jobs.queue.enqueue(uow, job("job_left"))  # the block ends without commit()
    with pytest.raises(RuntimeError, match="boom"):
        await enqueue_then_fail(jobs, job("job_raised"))
    for job_id in ("job_rolled_back", "job_left", "job_raised"):
        assert await jobs.queue.get(job_id) is None
    assert await jobs.queue.claim("w", 10, LEASE) == ([], [])


async def test_a_job_commits_together_with_the_rest_of_the_transaction(jobs: Jobs) -> None:
    from imagegen.domain.events import DomainEvent

    async with jobs.uow() as uow:
        await jobs.queue.enqueue(uow, job("job_1"))
        uow.record([DomainEvent("generation.queued", "gen_job_1", T0, {"tenant_id": "t1"})])
        await uow.commit()
        await jobs.queue.enqueue(uow, job("job_2"))  # the next transaction: never committed
    assert ids(await jobs.queue.of_generation("gen_job_1")) == ["job_1"]
    assert await jobs.queue.get("job_2") is None


async def test_a_job_id_is_stored_once(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1"))
    with pytest.raises(REFUSED):
        await enqueue(jobs, job("job_1", generation_id="gen_other"))
    assert ids(await jobs.queue.of_generation("gen_other")) == []


async def test_the_queue_needs_its_own_kind_of_unit_of_work(jobs: Jobs) -> None:
    class Stranger:
        pass

    with pytest.raises(TypeError):
        await jobs.queue.enqueue(Stranger(), job("job_1"))
    with pytest.raises(TypeError):
        await jobs.queue.cancel(Stranger(), "gen_job_1")


async def test_bytes_in_a_payload_reach_the_worker_and_are_dropped_when_the_job_ends(
    jobs: Jobs,
) -> None:
    source, mask = b"\x89PNG source", b"\x89PNG mask"
    payload = {"prompt": "a fox", "images": [source], "mask": mask, "size": (64, 32)}
    for minutes, generation_id in enumerate(("gen_done", "gen_canceled", "gen_stalled")):
        async with jobs.uow() as uow:
            await uow.generations.add(generation(generation_id, created_at=T0))
            new = job(f"job_{generation_id}", generation_id=generation_id, minutes=minutes)
            new.payload, new.max_attempts = payload, 1
            await jobs.queue.enqueue(uow, new)
            await uow.commit()
    stored = await jobs.queue.get("job_gen_done")
    assert stored is not None
    assert stored.payload == {**payload, "size": [64, 32]}  # JSON keeps the rest (as lists)
    claimed, _ = await jobs.queue.claim("w1", 1, LEASE)
    assert ids(claimed) == ["job_gen_done"]
    assert (claimed[0].payload["images"], claimed[0].payload["mask"]) == ([source], mask)
    await jobs.queue.finish("job_gen_done", "w1", JobStatus.DONE)
    await cancel(jobs, "gen_canceled")
    await jobs.queue.claim("dead", 1, LEASE)  # gen_stalled's only attempt: its worker dies
    jobs.clock.advance(LEASE + timedelta(seconds=1))
    _, exhausted = await jobs.queue.claim("w2", 1, LEASE)
    assert ids(exhausted) == ["job_gen_stalled"]
    for job_id in ("job_gen_done", "job_gen_canceled", "job_gen_stalled"):
        ended = await jobs.queue.get(job_id)
        assert ended is not None
        assert (ended.payload["images"], ended.payload["mask"]) == ([None], None), job_id


async def test_bytes_in_a_payload_need_the_generation_stored(jobs: Jobs) -> None:
    new = job("job_1", generation_id="gen_missing")
    new.payload = {"images": [b"bytes"]}
    with pytest.raises(REFUSED):
        await enqueue(jobs, new)
    assert await jobs.queue.get("job_1") is None


# --- claims and leases ----------------------------------------------------------------------------


async def test_a_claim_leases_the_oldest_queued_jobs_up_to_its_limit(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_c", minutes=3), job("job_a", minutes=1), job("job_b", minutes=2))
    claimed, exhausted = await jobs.queue.claim("w1", 2, LEASE)
    assert (ids(claimed), exhausted) == (["job_a", "job_b"], [])
    first = claimed[0]
    assert (first.status, first.attempts, first.worker_id) == (JobStatus.RUNNING, 1, "w1")
    assert first.locked_until == T0 + LEASE
    stored = await jobs.queue.get("job_a")
    assert stored is not None
    assert (stored.status, stored.worker_id) == (JobStatus.RUNNING, "w1")
    claimed, _ = await jobs.queue.claim("w2", 5, LEASE)
    assert ids(claimed) == ["job_c"]
    assert await jobs.queue.claim("w3", 5, LEASE) == ([], [])  # every lease still runs


async def test_a_job_whose_lease_ran_out_is_claimed_again_as_its_next_attempt(
    jobs: Jobs,
) -> None:
    await enqueue(jobs, job("job_1"))
    await jobs.queue.claim("dead", 1, LEASE)
    jobs.clock.advance(LEASE)
    assert await jobs.queue.claim("w2", 1, LEASE) == ([], [])  # at the lease's end: still held
    jobs.clock.advance(seconds=1)
    claimed, exhausted = await jobs.queue.claim("w2", 1, LEASE)
    assert exhausted == []
    assert [(j.id, j.attempts, j.worker_id) for j in claimed] == [("job_1", 2, "w2")]
    assert claimed[0].locked_until == T0 + LEASE + timedelta(seconds=1) + LEASE


async def test_a_heartbeat_renews_only_the_leases_of_the_worker_holding_them(
    jobs: Jobs,
) -> None:
    await enqueue(jobs, job("job_1"), job("job_2", minutes=1))
    await jobs.queue.claim("w1", 2, LEASE)
    jobs.clock.advance(seconds=20)
    assert await jobs.queue.heartbeat("w1", ["job_1"], LEASE) == set()
    assert await jobs.queue.heartbeat("intruder", ["job_2"], LEASE) == set()
    assert await jobs.queue.heartbeat("w1", [], LEASE) == set()
    renewed = await jobs.queue.get("job_1")
    assert renewed is not None
    assert renewed.locked_until == T0 + timedelta(seconds=50)
    jobs.clock.advance(seconds=15)  # T0 + 35 s: job_2's lease ran out, job_1's did not
    claimed, _ = await jobs.queue.claim("w2", 5, LEASE)
    assert [(j.id, j.attempts) for j in claimed] == [("job_2", 2)]


async def test_a_job_out_of_attempts_is_handed_back_exhausted_and_failed(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1", max_attempts=2))
    for worker in ("w1", "w2"):
        claimed, _ = await jobs.queue.claim(worker, 1, LEASE)
        assert ids(claimed) == ["job_1"]
        jobs.clock.advance(LEASE + timedelta(seconds=1))
    claimed, exhausted = await jobs.queue.claim("w3", 1, LEASE)
    assert claimed == []
    assert [(j.id, j.status, j.attempts) for j in exhausted] == [("job_1", JobStatus.FAILED, 2)]
    assert exhausted[0].last_error == "its worker stopped 2 times"
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert stored.status is JobStatus.FAILED
    jobs.clock.advance(timedelta(hours=1))
    assert await jobs.queue.claim("w4", 1, LEASE) == ([], [])


async def test_only_the_worker_holding_a_job_records_its_end(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1"))
    await jobs.queue.claim("w1", 1, LEASE)
    jobs.clock.advance(LEASE + timedelta(seconds=1))
    await jobs.queue.claim("w2", 1, LEASE)  # w1 lost it
    await jobs.queue.finish("job_1", "w1", JobStatus.FAILED, "too late")
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert (stored.status, stored.worker_id) == (JobStatus.RUNNING, "w2")
    await jobs.queue.finish("job_1", "w2", JobStatus.DONE)
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert (stored.status, stored.locked_until, stored.last_error) == (JobStatus.DONE, None, None)
    await jobs.queue.finish("job_1", "w2", JobStatus.FAILED, "twice")  # ended: no change
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert stored.status is JobStatus.DONE
    jobs.clock.advance(timedelta(hours=1))
    assert await jobs.queue.claim("w3", 1, LEASE) == ([], [])


async def test_a_failed_job_keeps_its_error(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1"))
    await jobs.queue.claim("w1", 1, LEASE)
    await jobs.queue.finish("job_1", "w1", JobStatus.FAILED, "provider_unavailable: down")
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert (stored.status, stored.last_error) == (JobStatus.FAILED, "provider_unavailable: down")


# --- cancel ------------------------------------------------------------------------------------


async def test_cancelling_a_queued_job_means_it_never_runs(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1", generation_id="gen_1"), job("job_2", minutes=1))
    await cancel(jobs, "gen_1")
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert stored.status is JobStatus.CANCELED
    claimed, exhausted = await jobs.queue.claim("w1", 5, LEASE)
    assert (ids(claimed), exhausted) == (["job_2"], [])  # another generation's job is untouched


async def test_cancelling_a_running_job_asks_its_worker_to_stop(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1", generation_id="gen_1"))
    await jobs.queue.claim("w1", 1, LEASE)
    await cancel(jobs, "gen_1")
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert (stored.status, stored.cancel_requested) == (JobStatus.RUNNING, True)
    assert await jobs.queue.heartbeat("w1", ["job_1"], LEASE) == {"job_1"}
    await jobs.queue.finish("job_1", "w1", JobStatus.CANCELED, "canceled")
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert stored.status is JobStatus.CANCELED


async def test_a_canceled_job_whose_worker_died_is_handed_back_canceled(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1", generation_id="gen_1"))
    await jobs.queue.claim("dead", 1, LEASE)
    await cancel(jobs, "gen_1")
    jobs.clock.advance(LEASE + timedelta(seconds=1))
    claimed, exhausted = await jobs.queue.claim("w2", 1, LEASE)
    assert claimed == []
    assert [(j.id, j.status) for j in exhausted] == [("job_1", JobStatus.CANCELED)]


async def test_a_cancel_that_does_not_commit_changes_nothing(jobs: Jobs) -> None:
    await enqueue(jobs, job("job_1", generation_id="gen_1"))
    async with jobs.uow() as uow:
        await jobs.queue.cancel(uow, "gen_1")
        await uow.rollback()
    stored = await jobs.queue.get("job_1")
    assert stored is not None
    assert stored.status is JobStatus.QUEUED
    assert ids((await jobs.queue.claim("w1", 1, LEASE))[0]) == ["job_1"]


async def test_a_job_canceled_in_the_transaction_that_queued_it_never_runs(jobs: Jobs) -> None:
    async with jobs.uow() as uow:
        await jobs.queue.enqueue(uow, job("job_1", generation_id="gen_1"))
        await jobs.queue.cancel(uow, "gen_1")
        await jobs.queue.enqueue(uow, job("job_2", generation_id="gen_1", minutes=1))
        await uow.commit()
    statuses = [(j.id, j.status) for j in await jobs.queue.of_generation("gen_1")]
    assert statuses == [("job_1", JobStatus.CANCELED), ("job_2", JobStatus.QUEUED)]


async def test_a_job_being_canceled_is_skipped_by_claims_until_the_cancel_ends(
    jobs: Jobs,
) -> None:
    if jobs.name == "sqlite":
        pytest.skip("SQLite serializes writers: the claim would wait for the cancel to end")
    await enqueue(jobs, job("job_1", generation_id="gen_1"), job("job_2", minutes=1))
    async with jobs.uow() as uow:
        await jobs.queue.cancel(uow, "gen_1")
        claimed, _ = await jobs.queue.claim("w1", 5, LEASE)
        assert ids(claimed) == ["job_2"]  # job_1 is locked by the open cancel
        await uow.rollback()
    claimed, _ = await jobs.queue.claim("w1", 5, LEASE)
    assert ids(claimed) == ["job_1"]  # the cancel rolled back: it runs


async def test_the_jobs_of_a_generation_are_listed_oldest_first(jobs: Jobs) -> None:
    await enqueue(
        jobs,
        job("job_b", generation_id="gen_1", minutes=2),
        job("job_a", generation_id="gen_1", minutes=1),
        job("job_x", generation_id="gen_2"),
    )
    assert ids(await jobs.queue.of_generation("gen_1")) == ["job_a", "job_b"]
    assert await jobs.queue.of_generation("gen_none") == []
    assert await jobs.queue.get("job_none") is None


# --- the state machine, against a reference model, on random operation sequences ---------------


@attrs.define
class ModelJob:
    id: str
    generation_id: str
    created: int
    max_attempts: int
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    worker: str | None = None
    locked_until: datetime | None = None
    cancel_requested: bool = False


@attrs.define
class Model:
    """The reference: what ``SqlJobQueue``'s docstrings promise, in a few lines."""

    jobs: dict[str, ModelJob] = attrs.field(factory=dict)

    def runnable(self, now: datetime) -> list[ModelJob]:
        found = [
            j
            for j in self.jobs.values()
            if j.status is JobStatus.QUEUED
            or (
                j.status is JobStatus.RUNNING
                and j.locked_until is not None
                and j.locked_until < now
            )
        ]
        return sorted(found, key=lambda j: (j.created, j.id))

    def claim(
        self, worker: str, limit: int, now: datetime, lease: timedelta
    ) -> tuple[list[str], list[str]]:
        claimed, exhausted = [], []
        for j in self.runnable(now)[:limit]:
            if j.status is JobStatus.RUNNING and (
                j.attempts >= j.max_attempts or j.cancel_requested
            ):
                j.status = JobStatus.CANCELED if j.cancel_requested else JobStatus.FAILED
                exhausted.append(j.id)
                continue
            j.status, j.attempts, j.worker = JobStatus.RUNNING, j.attempts + 1, worker
            j.locked_until = now + lease
            claimed.append(j.id)
        return claimed, exhausted

    def heartbeat(self, worker: str, job_ids: list[str], now: datetime) -> set[str]:
        stopping = set()
        for job_id in job_ids:
            j = self.jobs.get(job_id)
            if j is None:
                continue
            if j.worker == worker and j.status is JobStatus.RUNNING:
                j.locked_until = now + LEASE
            if j.cancel_requested or j.status is JobStatus.CANCELED:
                stopping.add(job_id)
        return stopping

    def finish(self, job_id: str, worker: str, status: JobStatus) -> None:
        j = self.jobs.get(job_id)
        if j is not None and j.worker == worker and j.status is JobStatus.RUNNING:
            j.status, j.locked_until = status, None

    def cancel(self, generation_id: str) -> None:
        for j in self.jobs.values():
            if j.generation_id != generation_id:
                continue
            if j.status is JobStatus.QUEUED:
                j.status = JobStatus.CANCELED
            elif j.status is JobStatus.RUNNING:
                j.cancel_requested = True


WORKERS = st.sampled_from(["w1", "w2"])
GENERATIONS = st.sampled_from(["gen_1", "gen_2", "gen_3"])
JOB_IDS = st.sampled_from([f"job_{i}" for i in range(4)])
ENQUEUE = st.tuples(st.just("enqueue"), GENERATIONS, st.integers(1, 3), st.booleans())
CLAIM = st.tuples(st.just("claim"), WORKERS, st.integers(1, 3))
# Steps around the lease (30 s): exactly at its end, just past it, and well past it.
ADVANCE = st.tuples(st.just("advance"), st.sampled_from([1, 29, 30, 31, 61]))
STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "enqueue": ENQUEUE,
    "claim": CLAIM,
    "advance": ADVANCE,
    "cancel": st.tuples(st.just("cancel"), GENERATIONS, st.booleans()),
    "heartbeat": st.tuples(
        st.just("heartbeat"), WORKERS, st.lists(JOB_IDS, max_size=3, unique=True)
    ),
    "finish": st.tuples(
        st.just("finish"),
        JOB_IDS,
        WORKERS,
        st.sampled_from([JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED]),
    ),
}
# Claims and clock steps drive the state machine: draw them more often than the rest.
OPERATIONS = st.sampled_from(
    [
        "enqueue",
        "enqueue",
        "claim",
        "claim",
        "claim",
        "advance",
        "advance",
        "cancel",
        "heartbeat",
        "finish",
    ]
).flatmap(lambda kind: STEPS[kind])


async def run_operations(jobs: Jobs, operations: list[tuple[Any, ...]]) -> None:
    await jobs.reset()
    model = Model()
    created = 0
    for operation in operations:
        kind, *args = operation
        now = jobs.clock.now()
        if kind == "enqueue":
            generation_id, max_attempts, commit = args
            job_id = f"job_{created}"
            new = attrs.evolve(
                job(job_id, generation_id=generation_id, max_attempts=max_attempts),
                created_at=T0 + timedelta(seconds=created),
            )
            created += 1
            async with jobs.uow() as uow:
                await jobs.queue.enqueue(uow, new)
                if commit:
                    await uow.commit()
            if commit:
                model.jobs[job_id] = ModelJob(job_id, generation_id, created, max_attempts)
        elif kind == "cancel":
            generation_id, commit = args
            async with jobs.uow() as uow:
                await jobs.queue.cancel(uow, generation_id)
                if commit:
                    await uow.commit()
            if commit:
                model.cancel(generation_id)
        elif kind == "claim":
            worker, limit = args
            claimed, exhausted = await jobs.queue.claim(worker, limit, LEASE)
            assert (ids(claimed), ids(exhausted)) == model.claim(worker, limit, now, LEASE)
        elif kind == "heartbeat":
            worker, job_ids = args
            stopping = await jobs.queue.heartbeat(worker, job_ids, LEASE)
            assert stopping == model.heartbeat(worker, job_ids, now)
        elif kind == "finish":
            job_id, worker, status = args
            await jobs.queue.finish(job_id, worker, status)
            model.finish(job_id, worker, status)
        else:
            jobs.clock.advance(seconds=args[0])
        if jobs.name == "memory":  # a database round trip per job and step is too slow
            await compare(jobs, model, created, operation)
    await compare(jobs, model, created, operations[-1])


async def compare(jobs: Jobs, model: Model, created: int, operation: tuple[Any, ...]) -> None:
    """Every job the model knows is stored as the model says; the others are not stored."""
    for expected in model.jobs.values():
        stored = await jobs.queue.get(expected.id)
        assert stored is not None, expected.id
        assert (
            stored.status,
            stored.attempts,
            stored.worker_id,
            stored.locked_until,
            stored.cancel_requested,
        ) == (
            expected.status,
            expected.attempts,
            expected.worker,
            expected.locked_until,
            expected.cancel_requested,
        ), (expected.id, operation)
    for job_id in (f"job_{i}" for i in range(created)):
        if job_id not in model.jobs:
            assert await jobs.queue.get(job_id) is None  # its transaction did not commit


def _machine_settings(examples: int) -> Any:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same sequences on every run: a failure is reproducible
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


SEQUENCES = st.lists(OPERATIONS, min_size=12, max_size=40)


@pytest.mark.parametrize("jobs", ["memory"], indirect=True)
@_machine_settings(60)
@given(operations=SEQUENCES)
async def test_random_operation_sequences_agree_with_the_reference_model(
    jobs: Jobs, operations: list[tuple[Any, ...]]
) -> None:
    await run_operations(jobs, operations)


@pytest.mark.parametrize(
    "jobs", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
@_machine_settings(8)  # the same sequences' first few: a database makes each one slower
@given(operations=SEQUENCES)
async def test_random_operation_sequences_agree_with_the_reference_model_on_sql(
    jobs: Jobs, operations: list[tuple[Any, ...]]
) -> None:
    await run_operations(jobs, operations)


# --- the fake's own helper: a deterministic worker for tests ----------------------------------


async def test_run_pending_runs_every_runnable_job_once_as_the_runner_would() -> None:
    from imagegen.domain.errors import ProviderUnavailable

    clock = ManualClock(T0)
    factory = InMemoryUnitOfWorkFactory()
    queue = InMemoryJobQueue(uow=factory, clock=clock)
    async with factory() as uow:
        for new in (
            job("job_stalled", minutes=-1, max_attempts=1),
            job("job_ok"),
            job("job_down", minutes=1),
            job("job_bug", minutes=2),
        ):
            await queue.enqueue(uow, new)
        await uow.commit()
    claimed, _ = await queue.claim("dead", 1, LEASE)  # its worker dies: the lease runs out
    assert ids(claimed) == ["job_stalled"]
    clock.advance(LEASE + timedelta(seconds=1))
    ran: list[str] = []
    abandoned: list[str] = []

    class Run:
        async def execute(self, one: Job) -> None:
            ran.append(one.id)
            if one.id == "job_down":
                raise ProviderUnavailable("down")
            if one.id == "job_bug":
                raise KeyError("bug")

    class Abandon:
        async def execute(self, one: Job) -> None:
            abandoned.append(one.id)

    assert await queue.run_pending(Run(), Abandon()) == 3
    assert (ran, abandoned) == (["job_ok", "job_down", "job_bug"], ["job_stalled"])
    statuses = {j.id: (j.status, j.attempts, j.last_error) for j in queue.jobs}
    assert statuses == {
        "job_stalled": (JobStatus.FAILED, 1, "its worker stopped 1 times"),
        "job_ok": (JobStatus.DONE, 1, None),
        "job_down": (JobStatus.FAILED, 1, "provider_unavailable: down"),
        "job_bug": (JobStatus.FAILED, 1, "KeyError"),
    }
    assert await queue.run_pending(Run(), Abandon()) == 0  # nothing is left
    assert len(ran) == 3


async def test_background_generations_run_and_cancel_entirely_on_the_fakes(
    tmp_path: Path,
) -> None:
    from imagegen import AsyncImageGen, Settings
    from imagegen.bootstrap.container import build_container
    from imagegen.testing import InMemoryBlobStorage, ScriptedProvider

    container = build_container(Settings(data_dir=tmp_path, auto_migrate=False))
    factory, clock = InMemoryUnitOfWorkFactory(), ManualClock(T0)
    queue = InMemoryJobQueue(uow=factory, clock=clock)
    container.gateways.uow.override(factory)
    container.gateways.storage.override(InMemoryBlobStorage())
    container.gateways.clock.override(clock)
    container.gateways.ids.override(SequentialIds())
    container.gateways.local_provider.override(ScriptedProvider("local"))
    container.gateways.job_queue.override(queue)
    async with AsyncImageGen(container=container) as gen:
        queued = await gen.generate("a red fox", size="64x64", background=True)
        assert [(j.generation_id, j.status) for j in queue.jobs] == [(queued.id, JobStatus.QUEUED)]
        assert (await gen.balance()).reserved == 1
        ran = await queue.run_pending(container.run_generation_job(), container.abandon_job())
        assert ran == 1
        assert (await gen.get_generation(queued.id)).status == "succeeded"
        canceled = await gen.generate("a blue fox", size="64x64", background=True)
        await gen.cancel(canceled.id)
        assert [j.status for j in queue.jobs] == [JobStatus.DONE, JobStatus.CANCELED]
        assert await queue.run_pending(container.run_generation_job()) == 0
        balance = await gen.balance()
        assert (balance.balance, balance.reserved) == (99, 0)
    assert [e.name for e in factory.outbox] == ["generation.succeeded", "generation.canceled"]
