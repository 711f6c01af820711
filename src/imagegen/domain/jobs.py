"""A background job: the work of running one queued generation, leased to one worker at a time.

``queued → running → done | failed | canceled``; a ``running`` job whose lease ran out (its
worker died) is claimed again, up to ``max_attempts`` times.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in {JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELED}


RUN_GENERATION = "run_generation"


@attrs.define(eq=False)
class Job:
    id: str
    kind: str
    generation_id: str
    tenant_id: str
    payload: dict[str, Any]
    created_at: datetime
    status: JobStatus = JobStatus.QUEUED
    attempts: int = 0
    max_attempts: int = 3
    locked_until: datetime | None = None
    worker_id: str | None = None
    cancel_requested: bool = False
    last_error: str | None = None
