"""An in-memory ``JobQueue``: the database-backed queue (``SqlJobQueue``) without a database.

``enqueue`` and ``cancel`` write in the caller's ``InMemoryUnitOfWork`` transaction: a job
exists exactly when that transaction commits (a rollback, or leaving ``async with`` without
``commit()``, discards it). The worker's side is the SQL queue's, each call its own
transaction, with time from the injected clock:

- ``claim(worker_id, limit, lease)`` leases up to ``limit`` runnable jobs, oldest first:
  queued ones, and running ones whose lease ran out (their worker died; ``locked_until <
  now``). A claim counts an attempt; a job whose lease ran out after ``max_attempts``
  attempts (or that was asked to stop) is not claimed again but returned as *exhausted*,
  marked failed (or canceled): its generation is the caller's to fail (``AbandonJob``).
- ``heartbeat(worker_id, job_ids, lease)`` renews the worker's leases and returns the jobs
  asked to stop; ``finish(job_id, worker_id, status, error)`` records the end, if the worker
  still holds the job.
- Bytes in a payload (a background edit's uploads), which the SQL queue keeps out of line in
  ``job_inputs``, come back whole to the worker and are gone (None in their place) once the
  job can never run again: done, failed, canceled or out of attempts. The rest of the payload
  goes through JSON, as in the database (tuples come back as lists).
- ``cancel`` in an open transaction locks the generation's jobs (claims skip them, as with
  PostgreSQL's ``SKIP LOCKED``) until it ends; on commit a queued job is canceled and a
  running one asked to stop.

``run_pending`` is a deterministic stand-in for the asyncio ``JobRunner`` in tests: it runs
each runnable job to its end, one at a time::

    queue = InMemoryJobQueue(uow=uow_factory, clock=clock)
    container.gateways.job_queue.override(queue)   # with gateways.uow overridden by uow_factory
    queued = await gen.generate("a fox", background=True)
    await queue.run_pending(container.run_generation_job(), container.abandon_job())
    assert (await gen.get_generation(queued.id)).status == "succeeded"
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from imagegen.application.job_payloads import attach, detach
from imagegen.domain.errors import ImageGenError
from imagegen.domain.jobs import Job, JobStatus
from imagegen.testing.fakes import InMemoryUnitOfWork, InMemoryUnitOfWorkFactory

if TYPE_CHECKING:
    from imagegen.application.ports import Clock, JobQueue, UnitOfWork

__all__ = ["InMemoryJobQueue"]


class _RunsJobs(Protocol):
    async def execute(self, job: Job) -> Any: ...


def _detach(payload: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """The payload as JSON keeps it (as the SQL queue stores it), its bytes kept apart."""
    stripped, blobs = detach(payload)
    try:
        stored: dict[str, Any] = json.loads(json.dumps(stripped))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a job payload must be JSON (and bytes): {exc}") from exc
    return stored, blobs


class _JobState:
    """The committed jobs of one ``InMemoryUnitOfWorkFactory``, the bytes of their payloads
    (by generation, as the SQL ``job_inputs``) and the row locks on the jobs."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.inputs: dict[str, dict[int, bytes]] = {}
        self.locks: dict[str, object] = {}  # job id → the transaction that holds it
        self.guard = threading.RLock()

    def copy_of(self, job: Job) -> Job:
        """The job as a worker gets it: its payload with its bytes (while they are kept)."""
        found = copy.deepcopy(job)
        found.payload = attach(found.payload, self.inputs.get(job.generation_id, {}))
        return found

    @classmethod
    def of(cls, owner: Any) -> _JobState:
        state = getattr(owner, "_job_state", None)
        if state is None:
            state = cls()
            owner._job_state = state
        assert isinstance(state, _JobState)
        return state


class _JobTransaction:
    """One unit of work's job writes: new jobs, and cancels, applied on commit."""

    def __init__(self, state: _JobState) -> None:
        self.state = state
        self.new: dict[str, Job] = {}
        self.inputs: dict[str, dict[int, bytes]] = {}
        self.canceled: dict[str, datetime] = {}  # committed job ids matched by a cancel
        self.discarded: set[str] = set()  # generations whose bytes the commit deletes

    def check(self) -> None:
        clash = self.new.keys() & self.state.jobs.keys()
        if clash:
            raise ValueError(f"jobs {sorted(clash)} were stored by another transaction")

    def commit(self) -> None:
        with self.state.guard:
            for job_id in self.canceled:
                job = self.state.jobs.get(job_id)
                if job is not None:
                    _cancel(job)
            for generation_id in self.discarded:
                self.state.inputs.pop(generation_id, None)
            self.state.jobs.update(self.new)
            self.state.inputs.update(self.inputs)
        self.clear()

    def clear(self) -> None:
        self.new.clear()
        self.inputs.clear()
        self.canceled.clear()
        self.discarded.clear()
        with self.state.guard:
            for job_id in [k for k, owner in self.state.locks.items() if owner is self]:
                del self.state.locks[job_id]


def _cancel(job: Job) -> None:
    if job.status is JobStatus.QUEUED:
        job.status = JobStatus.CANCELED
    elif job.status is JobStatus.RUNNING:
        job.cancel_requested = True


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("naive datetimes are not stored; use UTC-aware ones")
    return when.astimezone(UTC)


class InMemoryJobQueue:
    """A ``JobQueue`` (and the worker's claim / heartbeat / finish) over the jobs of
    ``uow``'s in-memory database. Two queues over the same factory share the jobs, like two
    SQL queues over one database."""

    def __init__(self, *, uow: InMemoryUnitOfWorkFactory, clock: Clock) -> None:
        self._factory = uow
        self._clock = clock
        self._state = _JobState.of(uow)

    def _transaction(self, uow: UnitOfWork) -> _JobTransaction:
        if not isinstance(uow, InMemoryUnitOfWork):
            raise TypeError("the in-memory job queue needs the in-memory unit of work")
        if uow.factory is not self._factory:
            raise ValueError("the unit of work belongs to another InMemoryUnitOfWorkFactory")
        uow._open()  # raises unless the unit of work is open, like the SQL session
        return uow.join("jobs", lambda: _JobTransaction(self._state))

    # --- the JobQueue port: within the caller's transaction ---------------------------------

    async def enqueue(self, uow: UnitOfWork, job: Job) -> None:
        tx = self._transaction(uow)
        with self._state.guard:
            if job.id in tx.new or job.id in self._state.jobs:
                raise ValueError(f"job {job.id} is already stored")
        payload, blobs = _detach(job.payload)
        if blobs:
            # The SQL job_inputs rows refer to the generation (a foreign key).
            if await uow.generations.get(job.tenant_id, job.generation_id) is None:
                raise ValueError(f"job {job.id} refers to an unknown generation")
            tx.inputs[job.generation_id] = dict(enumerate(blobs))
        stored = copy.deepcopy(job)
        stored.created_at = _utc(job.created_at)
        stored.payload = payload
        stored.locked_until, stored.worker_id = None, None
        stored.cancel_requested, stored.last_error = False, None
        tx.new[job.id] = stored

    async def cancel(self, uow: UnitOfWork, generation_id: str) -> None:
        tx = self._transaction(uow)
        now = self._clock.now()
        for job in tx.new.values():
            if job.generation_id == generation_id:
                _cancel(job)
        # The generation is canceled with this transaction: its job never runs again.
        tx.inputs.pop(generation_id, None)
        tx.discarded.add(generation_id)
        with self._state.guard:
            for job in self._state.jobs.values():
                active = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
                if job.generation_id == generation_id and active:
                    tx.canceled[job.id] = now
                    self._state.locks[job.id] = tx

    # --- workers: each call its own transaction ---------------------------------------------

    async def claim(
        self, worker_id: str, limit: int, lease: timedelta
    ) -> tuple[list[Job], list[Job]]:
        """Lease up to ``limit`` runnable jobs; returns (claimed, exhausted), as
        ``SqlJobQueue.claim``."""
        now = self._clock.now()
        claimed: list[Job] = []
        exhausted: list[Job] = []
        with self._state.guard:
            runnable = sorted(
                (
                    job
                    for job in self._state.jobs.values()
                    if job.id not in self._state.locks
                    and (
                        job.status is JobStatus.QUEUED
                        or (
                            job.status is JobStatus.RUNNING
                            and job.locked_until is not None
                            and job.locked_until < now
                        )
                    )
                ),
                key=lambda job: (job.created_at, job.id),
            )
            for job in runnable[: max(limit, 0)]:
                if job.status is JobStatus.RUNNING and (
                    job.attempts >= job.max_attempts or job.cancel_requested
                ):
                    job.status = JobStatus.CANCELED if job.cancel_requested else JobStatus.FAILED
                    job.last_error = f"its worker stopped {job.attempts} times"
                    exhausted.append(copy.deepcopy(job))
                    self._state.inputs.pop(job.generation_id, None)
                    continue
                job.status = JobStatus.RUNNING
                job.attempts += 1
                job.worker_id = worker_id
                job.locked_until = now + lease
                claimed.append(self._state.copy_of(job))
        return claimed, exhausted

    async def heartbeat(self, worker_id: str, job_ids: Sequence[str], lease: timedelta) -> set[str]:
        """Renew this worker's leases; returns the ids of the jobs asked to stop (canceled)."""
        if not job_ids:
            return set()
        now = self._clock.now()
        stopping: set[str] = set()
        with self._state.guard:
            for job_id in job_ids:
                job = self._state.jobs.get(job_id)
                if job is None:
                    continue
                if job.worker_id == worker_id and job.status is JobStatus.RUNNING:
                    job.locked_until = now + lease
                if job.cancel_requested or job.status is JobStatus.CANCELED:
                    stopping.add(job_id)
        return stopping

    async def finish(
        self, job_id: str, worker_id: str, status: JobStatus, error: str | None = None
    ) -> None:
        """Record how the job ended, if this worker still holds it."""
        with self._state.guard:
            job = self._state.jobs.get(job_id)
            if job is not None and job.worker_id == worker_id and job.status is JobStatus.RUNNING:
                job.status, job.last_error, job.locked_until = status, error, None
                if status.is_terminal:
                    self._state.inputs.pop(job.generation_id, None)

    async def get(self, job_id: str) -> Job | None:
        with self._state.guard:
            job = self._state.jobs.get(job_id)
            return self._state.copy_of(job) if job is not None else None

    async def of_generation(self, generation_id: str) -> list[Job]:
        with self._state.guard:
            found = [j for j in self._state.jobs.values() if j.generation_id == generation_id]
            found.sort(key=lambda job: (job.created_at, job.id))
            return [self._state.copy_of(job) for job in found]

    @property
    def jobs(self) -> list[Job]:
        """Every committed job (copies), oldest first."""
        with self._state.guard:
            found = sorted(self._state.jobs.values(), key=lambda job: (job.created_at, job.id))
            return [self._state.copy_of(job) for job in found]

    async def run_pending(
        self,
        run: _RunsJobs,
        abandon: _RunsJobs | None = None,
        *,
        worker_id: str = "fake-worker",
        lease: timedelta = timedelta(seconds=30),
    ) -> int:
        """Claim and run every runnable job, one at a time, as ``JobRunner`` would (done;
        failed with ``code: message`` for an ``ImageGenError``, or with the exception's
        type name); exhausted jobs go to ``abandon``. Returns how many jobs ran."""
        finished = 0
        while True:
            claimed, exhausted = await self.claim(worker_id, 1, lease)
            for job in exhausted:
                if abandon is not None:
                    await abandon.execute(job)
            if not claimed and not exhausted:
                return finished
            for job in claimed:
                status, error = JobStatus.DONE, None
                try:
                    await run.execute(job)
                except asyncio.CancelledError:
                    raise
                except ImageGenError as exc:
                    status, error = JobStatus.FAILED, f"{exc.code}: {exc.message}"
                except Exception as exc:
                    status, error = JobStatus.FAILED, type(exc).__name__
                await self.finish(job.id, worker_id, status, error)
                finished += 1


if TYPE_CHECKING:  # mypy checks here that the fake implements its port

    def _implements(queue: InMemoryJobQueue) -> JobQueue:
        return queue
