"""Job payloads with bytes in them: a payload is stored as JSON (a column of ``jobs``,
procrastinate's ``args``, the in-memory fake's copy), so each ``bytes`` value is swapped for a
marker ``{"$input": slot}`` and kept elsewhere by slot (``detach``); a worker gets the payload
back whole (``attach``). The SQL queues keep the bytes in ``job_inputs``
(``infrastructure/jobs/inputs.py``), the fake in memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MARKER = "$input"


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
