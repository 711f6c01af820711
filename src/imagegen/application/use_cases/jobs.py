"""Background generations and edits: submit (reserve + queue in one transaction), run, cancel.

A submitted generation is ``queued`` with its credits reserved; a worker runs it through
the usual lifecycle (``GenerateImages.run_queued``). Cancelling ends it as ``canceled`` and
releases the reservation in one transaction under the account's lock, so whatever the
worker does afterwards (capture, fail) finds the reservation resolved and changes nothing:
credits are charged at most once, and never for a canceled generation.

An edit's job carries its inputs: the uploaded image(s) and mask travel in the payload as
``bytes``, which the queue adapters keep out of line of the JSON (``job_inputs``), in the
same transaction as the job; a DAM source travels as its asset id. The worker rebuilds the
``EditCommand`` from the payload and plans it again (decoding and checking the inputs as the
synchronous edit does). The queue deletes the uploads when the job is over: they are request
data, not assets (the result's provenance names its source asset, when there is one).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from imagegen.application.accounts import account_id_for
from imagegen.application.billing import return_holds
from imagegen.application.commands import EditCommand, GenerateCommand
from imagegen.application.ports import Clock, IdGenerator, JobQueue, UnitOfWork, UnitOfWorkFactory
from imagegen.application.use_cases.generate import GenerateImages, GenerationOutcome
from imagegen.domain.billing import CreditAccount
from imagegen.domain.errors import GenerationNotFound, InvalidStateTransition
from imagegen.domain.generation import Generation, GenerationStatus
from imagegen.domain.jobs import RUN_GENERATION, Job

log = logging.getLogger("imagegen.jobs")


# The payload's key naming the command of an edit's job (a generation's payload has none).
COMMAND_KEY = "command"
EDIT = "edit"


def command_payload(command: GenerateCommand | EditCommand) -> dict[str, Any]:
    """The command as a payload, for the job: the worker plans the generation again from it.
    JSON, except an edit's uploads (``bytes``), which the queue stores beside the job."""
    data = attrs.asdict(command)
    data["tags"] = list(command.tags)
    data["max_cost"] = str(command.max_cost) if command.max_cost is not None else None
    if isinstance(command, EditCommand):
        data[COMMAND_KEY] = EDIT
        data["images"] = list(command.images)
        data["outpaint"] = list(command.outpaint) if command.outpaint is not None else None
    return data


def command_from_payload(payload: dict[str, Any]) -> GenerateCommand | EditCommand:
    data = dict(payload)
    kind = data.pop(COMMAND_KEY, None)
    data["tags"] = tuple(data.get("tags") or ())
    if data.get("max_cost") is not None:
        data["max_cost"] = Decimal(data["max_cost"])
    if kind != EDIT:
        return GenerateCommand(**data)
    # Uploads the queue no longer has (the job already ended) are left out: planning such
    # an edit again fails cleanly ("needs a source image"), it never sends something else.
    data["images"] = tuple(i for i in data.get("images") or () if isinstance(i, bytes))
    if not isinstance(data.get("mask"), bytes):
        data["mask"] = None
    if data.get("outpaint") is not None:
        left, right, up, down = data["outpaint"]
        data["outpaint"] = (left, right, up, down)
    return EditCommand(**data)


async def _release(
    uow: UnitOfWork, account: CreditAccount | None, generation: Generation, now: datetime
) -> None:
    """Release the generation's reservation if it is still active (the account is locked)."""
    reservation = (
        await uow.accounts.get_reservation(generation.reservation_id)
        if generation.reservation_id
        else None
    )
    if account is None or reservation is None or reservation.status.is_resolved:
        return
    account.release(reservation, now)
    await uow.accounts.save(account)
    await uow.accounts.save_reservation(reservation)
    await return_holds(uow, account.tenant_id, reservation)


class SubmitGeneration:
    """Start a generation or an edit in the background: returns it ``queued``, credits
    reserved, and — for an edit — its uploads stored with the job."""

    def __init__(
        self,
        *,
        generate: GenerateImages,
        queue: JobQueue,
        clock: Clock,
        ids: IdGenerator,
        max_attempts: int = 3,
    ) -> None:
        self._generate = generate
        self._queue = queue
        self._clock = clock
        self._ids = ids
        self._max_attempts = max_attempts

    async def execute(self, command: GenerateCommand | EditCommand) -> GenerationOutcome:
        payload = command_payload(command)

        async def enqueue(uow: UnitOfWork, generation: Generation) -> None:
            job = Job(
                id=self._ids.new("job"),
                kind=RUN_GENERATION,
                generation_id=generation.id,
                tenant_id=generation.tenant_id,
                payload=payload,
                created_at=self._clock.now(),
                max_attempts=self._max_attempts,
            )
            await self._queue.enqueue(uow, job)

        return await self._generate.submit(command, enqueue)


class RunGenerationJob:
    """What a worker does with a job: run (or, after a crash, resume) its generation."""

    def __init__(self, *, generate: GenerateImages) -> None:
        self._generate = generate

    async def execute(self, job: Job) -> GenerationOutcome:
        command = command_from_payload(job.payload)
        return await self._generate.run_queued(job.generation_id, job.tenant_id, command)


class CancelGeneration:
    """Cancel a queued or running generation: ``canceled``, its reservation released, and its
    job stopped. Cancelling a canceled generation returns it; a finished one cannot be."""

    def __init__(self, *, uow: UnitOfWorkFactory, clock: Clock, queue: JobQueue) -> None:
        self._uow = uow
        self._clock = clock
        self._queue = queue

    async def execute(self, generation_id: str, tenant_id: str) -> Generation:
        async with self._uow() as uow:
            # The account's lock first: the worker captures or fails under it, so what is read
            # after it is current and nothing changes it until this commits.
            account = await uow.accounts.lock(account_id_for(tenant_id))
            generation = await uow.generations.get(tenant_id, generation_id)
            if generation is None:
                raise GenerationNotFound(
                    f"No generation {generation_id}.", generation_id=generation_id
                )
            if generation.status is GenerationStatus.CANCELED:
                return generation
            if generation.status.is_terminal:
                raise InvalidStateTransition(
                    f"Generation {generation_id} is {generation.status.value}; only a queued or "
                    "running generation can be canceled.",
                    generation_id=generation_id,
                    current=generation.status.value,
                )
            now = self._clock.now()
            await _release(uow, account, generation, now)
            generation.cancel(now)
            uow.record(generation.events)
            await uow.generations.save(generation)
            await self._queue.cancel(uow, generation_id)
            await uow.commit()
        log.info("canceled generation %s", generation_id)
        return generation


class AbandonJob:
    """A job that kept losing its worker (``max_attempts`` leases ran out): fail its
    generation and release the reservation, as the sweeper would."""

    def __init__(self, *, uow: UnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock

    async def execute(self, job: Job) -> None:
        async with self._uow() as uow:
            account = await uow.accounts.lock(account_id_for(job.tenant_id))
            generation = await uow.generations.get(job.tenant_id, job.generation_id)
            if generation is None or generation.status.is_terminal:
                return
            now = self._clock.now()
            await _release(uow, account, generation, now)
            generation.fail(
                "abandoned",
                f"The generation's worker stopped {job.attempts} times before it completed; "
                "its credits were released.",
                now,
            )
            uow.record(generation.events)
            await uow.generations.save(generation)
            await uow.commit()
