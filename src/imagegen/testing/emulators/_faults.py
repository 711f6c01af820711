"""Fault injection for the provider emulators: a queue of faults the next requests suffer.

Tests hold the plan (``app.state.faults``) or, for an emulator in another process, post to
its control endpoint ``POST /_emulator/faults`` with ``{"kind": ..., "times": ..., ...}``.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from typing import Any

import attrs


class FaultKind(enum.StrEnum):
    LATENCY = "latency"  # answer normally, after ``delay`` seconds
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After: ``retry_after``
    SERVER_ERROR = "server_error"  # ``status`` (default 503)
    TIMEOUT = "timeout"  # hold the request for ``delay`` seconds (default 3600), then close
    MALFORMED = "malformed"  # 200 with a body that breaks the protocol
    CONTENT_REFUSAL = "content_refusal"  # the provider's own content-policy refusal
    AUTH_ERROR = "auth_error"  # 401
    BAD_REQUEST = "bad_request"  # 400 with the provider's error shape
    ABORTED = "aborted"  # Replicate: the prediction ends "aborted"
    FAILED = "failed"  # Replicate: the prediction ends "failed"


@attrs.frozen
class Fault:
    kind: FaultKind = attrs.field(converter=FaultKind)
    times: int = 1
    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    stage: str = "input"  # content refusals: "input" (prompt) or "output" (result)
    route: str | None = None  # only requests whose path contains this suffer it

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        allowed = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in allowed})


class FaultPlan:
    """Thread-safe: the emulator may run in a server thread while the test enqueues."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._queue: deque[list[Any]] = deque()  # [fault, remaining]

    def push(self, fault: Fault) -> FaultPlan:
        with self._lock:
            self._queue.append([fault, fault.times])
        return self

    def add(self, kind: FaultKind | str, **options: Any) -> FaultPlan:
        return self.push(Fault(kind=FaultKind(kind), **options))

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def take(self, path: str) -> Fault | None:
        """The fault this request suffers, if any (consuming one of its ``times``)."""
        with self._lock:
            for entry in self._queue:
                fault, remaining = entry
                if fault.route is not None and fault.route not in path:
                    continue
                entry[1] = remaining - 1
                if entry[1] <= 0:
                    self._queue.remove(entry)
                return fault  # type: ignore[no-any-return]
            return None

    @property
    def pending(self) -> int:
        with self._lock:
            return sum(remaining for _, remaining in self._queue)
