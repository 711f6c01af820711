"""``RetryingUsageMeter``: bounded retries with backoff around any ``UsageMeter``.

Only ``MeteringError(retryable=True)`` is retried (429, 409, 5xx, connection, timeout): a
re-send is harmless because the meter deduplicates by the event's identifier. Refusals (the
event, or our credentials) are raised at once. The wait is the meter's ``retry_after`` when it
gave one (and it is at most ``max_retry_after_s``; a longer one gives up at once), else
equal-jitter exponential backoff, as in ``imagegen.infrastructure.providers.resilience``. When
the attempts run out the last error is raised, and the relay (``ReportUsage``) stops the run
with every event not taken still in the outbox.

The retries live here, not in the relay, because the application layer does not import
tenacity; the relay sees one outcome per event.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base

from imagegen.application.ports import MeterableUsage, UsageMeter
from imagegen.application.use_cases.metering import OutcomeReportingMeter, ReportOutcome
from imagegen.domain.errors import MeteringError
from imagegen.infrastructure.providers.resilience import RetryAfterOrBackoff

log = logging.getLogger("imagegen.metering")

Sleep = Callable[[float], Awaitable[None]]


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, MeteringError) and error.retryable


def _retry_after(error: BaseException | None) -> float | None:
    if not isinstance(error, MeteringError):
        return None
    value = error.details.get("retry_after")
    if isinstance(value, int | float) and math.isfinite(value):
        return max(0.0, float(value))
    return None


class _MeteringWait(RetryAfterOrBackoff):
    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = _retry_after(error)
        return retry_after if retry_after is not None else super().__call__(retry_state)


class _StopOnLongRetryAfter(stop_base):
    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        retry_after = _retry_after(error)
        return retry_after is not None and retry_after > self._limit_s


class RetryingUsageMeter:
    """A ``UsageMeter`` (and ``OutcomeReportingMeter``) that retries ``inner``'s transient
    failures: at most ``max_attempts`` attempts per report, backing off from ``base_delay_s``
    up to ``max_delay_s``. ``sleep`` is injectable (tests record the delays)."""

    def __init__(
        self,
        inner: UsageMeter,
        *,
        max_attempts: int = 4,
        base_delay_s: float = 0.5,
        max_delay_s: float = 20.0,
        max_retry_after_s: float = 60.0,
        sleep: Sleep | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name, value in (
            ("base_delay_s", base_delay_s),
            ("max_delay_s", max_delay_s),
            ("max_retry_after_s", max_retry_after_s),
        ):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        self._inner = inner
        self._max_attempts = max_attempts
        self._wait = _MeteringWait(base_delay_s, max_delay_s)
        self._max_retry_after_s = max_retry_after_s
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep

    def __repr__(self) -> str:
        return f"RetryingUsageMeter({self._inner!r}, max_attempts={self._max_attempts})"

    @property
    def inner(self) -> UsageMeter:
        return self._inner

    async def report(self, usage: MeterableUsage) -> None:
        await self.report_outcome(usage)

    async def report_outcome(self, usage: MeterableUsage) -> ReportOutcome:
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            stop=stop_any(
                stop_after_attempt(self._max_attempts),
                _StopOnLongRetryAfter(self._max_retry_after_s),
            ),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=lambda state: _log_retry(usage, state),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(usage)
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    async def _once(self, usage: MeterableUsage) -> ReportOutcome:
        if isinstance(self._inner, OutcomeReportingMeter):
            return await self._inner.report_outcome(usage)
        await self._inner.report(usage)
        return ReportOutcome.RECORDED


def _log_retry(usage: MeterableUsage, state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    reason = error.details.get("reason") if isinstance(error, MeteringError) else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "meter report of %s failed (attempt %d, %s); retrying in %.2f s",
        usage.event.id,
        state.attempt_number,
        reason or type(error).__name__,
        delay,
    )


__all__ = ["RetryingUsageMeter"]
