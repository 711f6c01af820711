"""Background edits at the use-case level (``SubmitGeneration`` → the job queue →
``RunGenerationJob`` / ``GenerateImages.run_queued``), on SQLite and PostgreSQL, against the
Stability emulator: the uploads are stored with the job in the transaction that reserves the
credits, the worker rebuilds the edit from them, a job claimed again after its worker died
still finds them, cancel and the end of the job delete them, and credits are charged once."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import text

from imagegen import AsyncImageGen, Settings
from imagegen.application.commands import EditCommand
from imagegen.domain.errors import BudgetExceeded, InvalidParameter
from imagegen.domain.generation import Generation
from imagegen.domain.jobs import JobStatus
from imagegen.infrastructure.jobs.inputs import MARKER
from imagegen.testing.emulators import serve
from imagegen.testing.emulators import stability as stability_emulator

STABILITY_KEY = "sk-background-edits-Stability0123456789"
INPAINT = "stable-image-inpaint"
SIZE = (128, 128)


@pytest.fixture(scope="module")
def stability() -> Iterator[tuple[Any, str]]:
    app = stability_emulator.create_app(api_key=STABILITY_KEY)
    with serve(app) as url:
        yield app, url


@pytest.fixture
def emulator(stability: tuple[Any, str]) -> Any:
    app = stability[0]
    app.state.faults.clear()
    app.state.requests.clear()
    app.state.credits = 100_000.0
    return app


@pytest.fixture
async def gen(
    tmp_path: Path, database_url: str, stability: tuple[Any, str], emulator: Any
) -> AsyncIterator[AsyncImageGen]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,  # type: ignore[arg-type]
        starting_credits=100,
        stability_api_key=STABILITY_KEY,  # type: ignore[arg-type]
        stability_base_url=stability[1],
        provider_max_attempts=1,
    )
    async with AsyncImageGen(settings) as library:
        yield library


def photo() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(SIZE, 60).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def mask() -> bytes:
    image = Image.new("RGBA", SIZE, (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), (32, 32, 96, 96))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def inpaint(**changes: Any) -> EditCommand:
    fields: dict[str, Any] = {
        "prompt": "a red door",
        "images": (photo(),),
        "mask": mask(),
        "provider": "stability",
        "model": INPAINT,
        "tenant_id": "default",
    }
    fields.update(changes)
    return EditCommand(**fields)


async def stored_inputs(gen: AsyncImageGen, generation_id: str) -> list[tuple[int, str]]:
    engine = gen.container.gateways.engine()
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT slot, sha256 FROM job_inputs WHERE generation_id = :g ORDER BY slot"),
            {"g": generation_id},
        )
        return [(row[0], row[1]) for row in rows.all()]


async def raw_payload(gen: AsyncImageGen, generation_id: str) -> Any:
    engine = gen.container.gateways.engine()
    async with engine.connect() as connection:
        value = await connection.scalar(
            text("SELECT payload FROM jobs WHERE generation_id = :g"), {"g": generation_id}
        )
    return value


async def stored(gen: AsyncImageGen, generation_id: str) -> Generation:
    async with gen.container.gateways.uow()(read_only=True) as uow:
        generation = await uow.generations.get(gen.tenant_id, generation_id)
    assert generation is not None
    return generation


def inpaint_calls(emulator: Any) -> list[dict[str, Any]]:
    return [r for r in emulator.state.requests if r["path"].endswith("/edit/inpaint")]


async def test_a_submitted_edit_keeps_its_uploads_until_a_worker_runs_it(
    gen: AsyncImageGen, emulator: Any
) -> None:
    command = inpaint()
    before = await gen.balance()

    queued = (await gen.container.submit_generation().execute(command)).generation

    assert queued.status.value == "queued"
    assert queued.parameters.operation.value == "inpaint"
    held = await gen.balance()
    assert held.reserved == queued.estimated_credits > 0
    # The uploads are in job_inputs (by hash), the payload only points at them.
    image, mask_bytes = command.images[0], command.mask
    assert mask_bytes is not None
    assert await stored_inputs(gen, queued.id) == [
        (0, hashlib.sha256(image).hexdigest()),
        (1, hashlib.sha256(mask_bytes).hexdigest()),
    ]
    payload = await raw_payload(gen, queued.id)
    payload = payload if isinstance(payload, dict) else json.loads(payload)
    assert payload["images"] == [{MARKER: 0}]
    assert payload["mask"] == {MARKER: 1}
    assert payload["command"] == "edit"
    assert inpaint_calls(emulator) == []

    assert await gen.run_jobs(once=True) == 1

    done = await gen.get_generation(queued.id)
    assert done.status == "succeeded"
    assert (await stored(gen, queued.id)).parameters.operation.value == "inpaint"
    assert len(done.images) == 1
    (call,) = inpaint_calls(emulator)
    assert call["files"]["image"]["size"] == len(image)
    assert call["files"]["mask"]["size"] == len(mask_bytes)
    after = await gen.balance()
    assert done.credits_charged == queued.estimated_credits
    assert (after.balance, after.reserved) == (before.balance - done.credits_charged, 0)
    assert await gen.verify_ledger() == []
    # The job is over: its uploads are gone; delivering the job again changes nothing.
    assert await stored_inputs(gen, queued.id) == []
    (job,) = await gen.container.gateways.job_queue().of_generation(queued.id)
    assert job.status is JobStatus.DONE
    await gen.container.run_generation_job().execute(job)
    assert (await gen.balance()).balance == after.balance
    assert len(inpaint_calls(emulator)) == 1


async def test_an_edit_of_a_dam_asset_runs_in_the_background_with_its_parent(
    gen: AsyncImageGen,
) -> None:
    made = await gen.generate("a blue door", size="128x128")
    asset = await gen.save_to_dam(made.images[0])
    command = inpaint(images=(), source_asset_id=asset.id)

    queued = (await gen.container.submit_generation().execute(command)).generation

    assert queued.parent_id == asset.id
    assert await stored_inputs(gen, queued.id) == [
        (0, hashlib.sha256(command.mask or b"").hexdigest())
    ]
    assert await gen.run_jobs(once=True) == 1
    done = await gen.get_generation(queued.id)
    assert done.status == "succeeded"
    assert (await stored(gen, queued.id)).parent_id == asset.id
    path = done.images[0].path
    assert path is not None
    assert asset.id.encode() in path.read_bytes()  # the XMP's parentAssetId


async def test_the_client_queues_an_edit_with_background_and_a_worker_finishes_it(
    gen: AsyncImageGen, emulator: Any
) -> None:
    queued = await gen.edit(
        photo(),
        "a red door",
        mask=mask(),
        provider="stability",
        model=INPAINT,
        background=True,
    )
    assert queued.status == "queued"
    assert inpaint_calls(emulator) == []
    assert (await gen.balance()).reserved > 0

    assert await gen.run_jobs(once=True) == 1

    done = await gen.get_generation(queued.id)
    assert done.status == "succeeded"
    assert len(inpaint_calls(emulator)) == 1
    assert (await gen.balance()).reserved == 0
    assert await stored_inputs(gen, queued.id) == []


async def test_a_replayed_key_and_a_refused_edit_store_nothing(gen: AsyncImageGen) -> None:
    keyed = inpaint(idempotency_key="bg-edit-1")
    submit = gen.container.submit_generation()
    first = await submit.execute(keyed)
    again = await submit.execute(keyed)
    assert again.replayed
    assert again.generation.id == first.generation.id
    assert len(await gen.container.gateways.job_queue().of_generation(first.generation.id)) == 1

    # Bad inputs are refused before anything is written, as the synchronous edit does.
    with pytest.raises(InvalidParameter, match="mask"):
        await submit.execute(inpaint(mask=photo()[:200]))
    small = io.BytesIO()
    Image.new("RGBA", (64, 64)).save(small, "PNG")
    with pytest.raises(InvalidParameter, match="must match"):
        await submit.execute(inpaint(mask=small.getvalue()))
    with pytest.raises(BudgetExceeded):  # refused inside the transaction that would reserve
        await submit.execute(inpaint(max_credits=1))
    engine = gen.container.gateways.engine()
    async with engine.connect() as connection:
        generations = await connection.scalar(text("SELECT count(*) FROM generations"))
        rows = await connection.scalar(text("SELECT count(*) FROM job_inputs"))
    assert (generations, rows) == (1, 2)  # the first submission's image and mask only


async def test_cancelling_a_queued_edit_releases_its_credits_and_deletes_its_uploads(
    gen: AsyncImageGen, emulator: Any
) -> None:
    queued = (await gen.container.submit_generation().execute(inpaint())).generation
    assert len(await stored_inputs(gen, queued.id)) == 2

    canceled = await gen.cancel(queued.id)

    assert canceled.status == "canceled"
    assert await stored_inputs(gen, queued.id) == []
    assert await gen.run_jobs(once=True) == 0
    balance = await gen.balance()
    assert (balance.balance, balance.reserved) == (100, 0)
    assert inpaint_calls(emulator) == []
    assert await gen.verify_ledger() == []


async def test_a_job_claimed_again_after_its_worker_died_still_has_its_uploads(
    gen: AsyncImageGen, emulator: Any
) -> None:
    queued = (await gen.container.submit_generation().execute(inpaint())).generation
    queue = gen.container.gateways.job_queue()
    # A worker claims the job (and the uploads with it), then dies: its lease runs out.
    (claimed,), _ = await queue.claim("dead-worker", 1, timedelta(seconds=-1))
    assert isinstance(claimed.payload["images"][0], bytes)
    assert isinstance(claimed.payload["mask"], bytes)
    assert len(await stored_inputs(gen, queued.id)) == 2

    assert await gen.run_jobs(once=True) == 1

    done = await gen.get_generation(queued.id)
    assert done.status == "succeeded"
    assert len(inpaint_calls(emulator)) == 1
    balance = await gen.balance()
    assert (balance.balance, balance.reserved) == (100 - done.credits_charged, 0)
    (job,) = await queue.of_generation(queued.id)
    assert (job.status, job.attempts) == (JobStatus.DONE, 2)
    assert await stored_inputs(gen, queued.id) == []


async def test_an_edit_whose_uploads_are_gone_fails_cleanly_and_charges_nothing(
    gen: AsyncImageGen, emulator: Any
) -> None:
    queued = (await gen.container.submit_generation().execute(inpaint())).generation
    engine = gen.container.gateways.engine()
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM job_inputs"))

    assert await gen.run_jobs(once=True) == 1

    failed = await gen.get_generation(queued.id)
    assert failed.status == "failed"
    assert failed.failure_code == "invalid_parameter"
    assert inpaint_calls(emulator) == []
    balance = await gen.balance()
    assert (balance.balance, balance.reserved) == (100, 0)
    assert await gen.verify_ledger() == []
