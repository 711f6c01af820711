"""A job's bytes, out of line: what a payload holds that JSON cannot (an edit's uploads).

A job payload is JSON (a column of ``jobs``, procrastinate's ``args``), but a background edit
needs the uploaded image(s) and mask. ``detach`` swaps every ``bytes`` value of the payload
for a marker ``{"$input": slot}``; the queue writes the bytes to ``job_inputs`` (one row per
slot, keyed by the generation) with the caller's session, so they commit — or roll back —
with the generation, its reservation and the job. A worker gets the payload back whole
(``attach``). The rows are deleted when the job can never run again (done, failed, canceled,
out of attempts); a worker that died leaves them for the one that claims the job next.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegen.application.job_payloads import MARKER, attach, detach, slots
from imagegen.infrastructure.persistence.orm import JobInputRecord

__all__ = ["MARKER", "attach", "detach", "discard", "load", "slots", "store"]

log = logging.getLogger("imagegen.jobs")


async def store(
    session: AsyncSession, generation_id: str, blobs: list[bytes], now: datetime
) -> None:
    """Add the job's bytes within ``session``'s open transaction."""
    if not blobs:
        return
    if session.new:  # the generation the rows reference may still be pending in the session
        await session.flush()
    session.add_all(
        JobInputRecord(
            generation_id=generation_id,
            slot=slot,
            data=data,
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=now,
        )
        for slot, data in enumerate(blobs)
    )
    await session.flush()


async def load(session: AsyncSession, generation_ids: Iterable[str]) -> dict[str, dict[int, bytes]]:
    """The stored bytes of each generation, by slot."""
    wanted = sorted(set(generation_ids))
    found: dict[str, dict[int, bytes]] = {g: {} for g in wanted}
    if not wanted:
        return found
    rows = await session.execute(
        select(
            JobInputRecord.generation_id,
            JobInputRecord.slot,
            JobInputRecord.data,
            JobInputRecord.sha256,
        ).where(JobInputRecord.generation_id.in_(wanted))
    )
    for generation_id, slot, data, sha256 in rows.all():
        if hashlib.sha256(data).hexdigest() != sha256:
            # Left out: the worker then fails the edit cleanly (no source), credits released.
            log.error("input %d of generation %s does not match its hash", slot, generation_id)
            continue
        found[generation_id][slot] = bytes(data)
    return found


async def discard(session: AsyncSession, generation_ids: Iterable[str]) -> None:
    """Delete the generations' bytes (their job will never run again)."""
    wanted = sorted(set(generation_ids))
    if wanted:
        await session.execute(
            delete(JobInputRecord).where(JobInputRecord.generation_id.in_(wanted))
        )
