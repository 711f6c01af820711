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
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from imagegen.infrastructure.persistence.orm import JobInputRecord

MARKER = "$input"

log = logging.getLogger("imagegen.jobs")


def detach(payload: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """The payload with each ``bytes`` value replaced by a marker, and the bytes by slot."""
    blobs: list[bytes] = []

    def walk(value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            blobs.append(bytes(value))
            return {MARKER: len(blobs) - 1}
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    return walk(payload), blobs


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {MARKER} and isinstance(value[MARKER], int)


def slots(payload: Any) -> bool:
    """Whether ``payload`` has any marker (a job without one needs no read)."""
    if _is_marker(payload):
        return True
    if isinstance(payload, dict):
        return any(slots(item) for item in payload.values())
    if isinstance(payload, list):
        return any(slots(item) for item in payload)
    return False


def attach(payload: dict[str, Any], blobs: Mapping[int, bytes]) -> dict[str, Any]:
    """The payload with its markers replaced by their bytes (None for bytes that are gone:
    the job already ended)."""

    def walk(value: Any) -> Any:
        if _is_marker(value):
            return blobs.get(value[MARKER])
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    result: dict[str, Any] = walk(payload)
    return result


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
