"""Background jobs on the database-backed queue, on SQLite and PostgreSQL: a job outlives
the process that queued it, a stalled job (its worker died) is claimed again and charged at
most once, and cancel works for queued and running generations."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from imagegen import AsyncImageGen, Settings
from imagegen.application.commands import GenerateCommand
from imagegen.domain.jobs import JobStatus

TINY = "64x64"


def _with(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


async def _until(check: object, deadline_s: float = 15.0) -> None:
    """Poll ``check`` (an async callable returning a truthy value) until it holds."""
    assert callable(check)
    end = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.05)


async def _jobs(client: AsyncImageGen, generation_id: str) -> list[JobStatus]:
    jobs = await client.container.gateways.job_queue().of_generation(generation_id)
    return [job.status for job in jobs]


async def test_a_queued_job_survives_a_restart_and_charges_once(settings: Settings) -> None:
    async with AsyncImageGen(settings) as first:
        queued = await first.generate("a fox", size=TINY, n=2, background=True)
        assert queued.status == "queued"
        held = await first.balance()
        assert (held.balance, held.reserved) == (100, 2)
    # The process that queued it is gone; a new one (a worker) picks the job up.
    async with AsyncImageGen(settings) as worker:
        assert await worker.run_jobs(once=True) == 1
        done = await worker.get_generation(queued.id)
        assert done.status == "succeeded"
        assert (len(done.images), done.credits_charged) == (2, 2)
        balance = await worker.balance()
        assert (balance.balance, balance.reserved) == (98, 0)
        assert await worker.verify_ledger() == []
        assert await _jobs(worker, queued.id) == [JobStatus.DONE]
        # Running the job again (a duplicate delivery) changes nothing.
        job = (await worker.container.gateways.job_queue().of_generation(queued.id))[0]
        await worker.container.run_generation_job().execute(job)
        assert (await worker.balance()).balance == 98


async def test_cancelling_a_queued_generation_releases_its_credits(settings: Settings) -> None:
    async with AsyncImageGen(settings) as client:
        queued = await client.generate("a fox", size=TINY, background=True)
        canceled = await client.cancel(queued.id)
        assert canceled.status == "canceled"
        assert (await client.cancel(queued.id)).status == "canceled"  # idempotent
        assert await client.run_jobs(once=True) == 0
        balance = await client.balance()
        assert (balance.balance, balance.reserved) == (100, 0)
        assert await _jobs(client, queued.id) == [JobStatus.CANCELED]
        assert await client.verify_ledger() == []


async def test_cancelling_a_running_generation_stops_its_job(settings: Settings) -> None:
    slow = _with(settings, local_latency_ms=20_000, job_lease_seconds=0.3)
    async with AsyncImageGen(slow) as client:
        queued = await client.generate("a fox", size=TINY, background=True)
        worker = asyncio.create_task(client.run_jobs(once=True))

        async def running() -> bool:
            return (await client.get_generation(queued.id)).status == "running"

        await _until(running)
        assert (await client.cancel(queued.id)).status == "canceled"
        assert await asyncio.wait_for(worker, 10) == 1  # stopped long before the 20 s
        assert (await client.get_generation(queued.id)).status == "canceled"
        balance = await client.balance()
        assert (balance.balance, balance.reserved) == (100, 0)
        assert await _jobs(client, queued.id) == [JobStatus.CANCELED]
        assert await client.verify_ledger() == []


async def test_a_stalled_job_is_claimed_again_and_charged_once(settings: Settings) -> None:
    async with AsyncImageGen(settings) as client:
        queued = await client.generate("a fox", size=TINY, background=True)
        queue = client.container.gateways.job_queue()
        # A worker claims the job, starts the generation, then dies (its lease runs out).
        claimed, _ = await queue.claim("dead-worker", 1, timedelta(seconds=0))
        assert [job.generation_id for job in claimed] == [queued.id]
        await _start(client, queued.id)
        assert await client.run_jobs(once=True) == 1
        jobs = await queue.of_generation(queued.id)
        assert [(j.status, j.attempts) for j in jobs] == [(JobStatus.DONE, 2)]
        balance = await client.balance()
        assert (balance.balance, balance.reserved) == (99, 0)
        assert (await client.get_generation(queued.id)).credits_charged == 1
        assert await client.verify_ledger() == []


async def test_a_job_out_of_attempts_fails_its_generation(settings: Settings) -> None:
    async with AsyncImageGen(_with(settings, job_max_attempts=1)) as client:
        queued = await client.generate("a fox", size=TINY, background=True)
        queue = client.container.gateways.job_queue()
        await queue.claim("dead-worker", 1, timedelta(seconds=0))
        assert await client.run_jobs(once=True) == 0
        failed = await client.get_generation(queued.id)
        assert (failed.status, failed.failure_code) == ("failed", "abandoned")
        balance = await client.balance()
        assert (balance.balance, balance.reserved) == (100, 0)
        assert await _jobs(client, queued.id) == [JobStatus.FAILED]
        assert await client.verify_ledger() == []


async def _start(client: AsyncImageGen, generation_id: str) -> None:
    """What a worker killed mid-job leaves behind: the generation started, nothing more."""
    async with client.container.gateways.uow()() as uow:
        generation = await uow.generations.get("default", generation_id)
        assert generation is not None
        generation.start(generation.updated_at)
        await uow.generations.save(generation)
        await uow.commit()


# --- procrastinate (PostgreSQL) -----------------------------------------------------------------


@pytest.fixture
def procrastinate_settings(tmp_path: Path, postgres_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,  # type: ignore[arg-type]
        job_queue="procrastinate",
        job_lease_seconds=1.0,
        worker_poll_seconds=0.1,
    )


async def _procrastinate_statuses(client: AsyncImageGen, generation_id: str) -> list[str]:
    queue = client.container.gateways.job_queue()
    engine = client.container.gateways.engine()
    statuses: list[str] = await queue.status_of(generation_id, engine)
    return statuses


@pytest.mark.postgres
async def test_procrastinate_defers_in_the_generation_transaction(
    procrastinate_settings: Settings,
) -> None:
    async with AsyncImageGen(procrastinate_settings) as client:
        queue = client.container.gateways.job_queue()
        generate = client.container.generate_images()
        command = GenerateCommand(prompt="a fox", size=TINY)

        async def defer_then_fail(uow: Any, generation: Any) -> None:
            await queue.enqueue(uow, _job_for(generation))
            raise RuntimeError("the transaction dies after the job was deferred")

        with pytest.raises(RuntimeError):
            await generate.submit(command, defer_then_fail)
        engine = client.container.gateways.engine()
        async with engine.connect() as connection:
            jobs = await connection.scalar(text("SELECT count(*) FROM procrastinate_jobs"))
        assert jobs == 0  # rolled back with the generation and its reservation
        assert (await client.balance()).reserved == 0

        queued = await client.generate("a fox", size=TINY, background=True)
        assert await _procrastinate_statuses(client, queued.id) == ["todo"]
        assert (await client.balance()).reserved == 1
        assert await client.run_jobs(once=True) == 0
        done = await client.get_generation(queued.id)
        assert (done.status, done.credits_charged) == ("succeeded", 1)
        assert await _procrastinate_statuses(client, queued.id) == ["succeeded"]

        other = await client.generate("a cat", size=TINY, background=True)
        assert (await client.cancel(other.id)).status == "canceled"
        assert await _procrastinate_statuses(client, other.id) == ["cancelled"]
        balance = await client.balance()
        assert (balance.balance, balance.reserved) == (99, 0)
        assert await client.verify_ledger() == []


def _job_for(generation: Any) -> Any:
    from imagegen.domain.jobs import RUN_GENERATION, Job

    return Job(
        id="job_x",
        kind=RUN_GENERATION,
        generation_id=generation.id,
        tenant_id=generation.tenant_id,
        payload={"prompt": "a fox"},
        created_at=generation.created_at,
    )


def test_importing_imagegen_does_not_import_procrastinate() -> None:
    code = (
        "import sys, imagegen, imagegen.interfaces.cli, imagegen.interfaces.http\n"
        "import imagegen.bootstrap.jobs\n"
        "assert 'procrastinate' not in sys.modules, 'imagegen imported procrastinate'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
