"""The metering relay: ``ReportUsage`` drains the usage outbox into the external meter (Stripe).

Stripe never decides whether a job may run: generation charges credits and writes its usage
event in its own transaction, and this relay runs separately (``imagegen billing meter-sync``,
a cron job, a worker), later, with the meter up or down.

At least once, never twice
--------------------------------
One run, per batch::

    1. read up to ``batch_size`` unmetered events          (one short read-only transaction)
    2. report each to the meter, one after the other        (no transaction held)
    3. mark the ones the meter took as metered              (its own transaction, after the sends)

- **Nothing is lost.** An event leaves the outbox only in step 3, after the meter took it. If
  the meter is down (or refuses our credentials), the run stops and every event not taken
  stays unmetered for the next run.
- **Nothing is counted twice.** A crash between 2 and 3 leaves events that the meter took
  still unmetered, so the next run sends them again. Each is sent with its usage event's id as
  the meter's idempotent *identifier* (``use_<reservation id>`` for a capture: derived from
  the capture, the same on every send) and the meter counts an identifier once: Stripe
  "enforce[s] uniqueness within a rolling period of at least 24 hours" and answers a repeat
  with an error the adapter turns into ``ReportOutcome.DUPLICATE``, which the relay counts as
  taken and marks. Two relays running at once are safe the same way.
- The window that matters is therefore Stripe's: a crashed run must be re-run within 24 hours
  (run the relay at least hourly). Step 3 follows each batch, so a crash re-sends one batch
  at most.

Failures
--------
- ``MeteringError(retryable=True)`` (rate limit, 5xx, connection), once the bounded retries
  around the meter (``infrastructure.billing.resilience.RetryingUsageMeter``, tenacity) gave
  up: the meter is down. The run marks what was taken and stops; ``summary.interrupted`` says
  why.
- ``MeteringError(event_rejected=True)``: the meter refused that event for what it holds.
  Retrying cannot help, and it must not block the events behind it: it is counted in
  ``summary.failed``, logged, and skipped for the rest of the run. It stays unmetered (the
  ``UsageRepository`` port has no "failed" state), so each run reports it again until someone
  fixes the cause; later runs read past it.
- Any other ``MeteringError`` (credentials, configuration): no event can get through; the run
  stops like a meter outage.
- Anything else is a bug and propagates, after what was taken is marked.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import attrs

from imagegen.application.ports import Clock, MeterableUsage, UsageMeter, UsageRepository
from imagegen.domain.errors import MeteringError

log = logging.getLogger("imagegen.metering")


class ReportOutcome(enum.StrEnum):
    RECORDED = "recorded"  # the meter took the event now
    DUPLICATE = "duplicate"  # the meter already had its identifier: it counts it once, earlier


@runtime_checkable
class OutcomeReportingMeter(Protocol):
    """A ``UsageMeter`` that also says whether a report was new or a duplicate. The relay uses
    it when the meter has it (for ``summary.duplicates``); ``report`` alone is enough."""

    async def report_outcome(self, usage: MeterableUsage) -> ReportOutcome: ...


class UsageUnitOfWork(Protocol):
    """The part of ``UnitOfWork`` the relay needs: one transaction with the usage events."""

    @property
    def usage(self) -> UsageRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...


class UsageUnitOfWorkFactory(Protocol):
    def __call__(self, *, read_only: bool = False) -> UsageUnitOfWork: ...


@attrs.frozen
class MeteringFailure:
    """One report the meter did not take. ``code`` is the error's ``reason`` (e.g.
    ``rate_limited``, ``timestamp_too_far_in_past``) when it has one; ``message`` and ``code``
    are safe to show."""

    event_id: str
    code: str
    message: str
    retryable: bool = False


@attrs.frozen
class MeteringSummary:
    """What one run did. ``sent`` and ``duplicates`` were marked metered; ``failed`` were
    refused (they stay unmetered); ``interrupted`` is why the run stopped early, if it did
    (the meter was down or refused us: everything not yet taken stays unmetered)."""

    sent: int = 0
    duplicates: int = 0
    failed: tuple[MeteringFailure, ...] = ()
    interrupted: MeteringFailure | None = None

    @property
    def metered(self) -> int:
        return self.sent + self.duplicates

    @property
    def ok(self) -> bool:
        return not self.failed and self.interrupted is None


class ReportUsage:
    """Report every unmetered usage event to the meter; return what happened.

    ``batch_size`` events are read and marked per transaction; ``max_events`` bounds one run
    (None: until the outbox is empty). Reports are sent one at a time: Stripe allows one
    concurrent meter event per customer and meter.
    """

    def __init__(
        self,
        *,
        uow: UsageUnitOfWorkFactory,
        meter: UsageMeter,
        clock: Clock,
        batch_size: int = 100,
        max_events: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_events is not None and max_events < 1:
            raise ValueError("max_events must be at least 1 (or None)")
        self._uow = uow
        self._meter = meter
        self._clock = clock
        self._batch_size = batch_size
        self._max_events = max_events

    async def execute(self) -> MeteringSummary:
        sent = duplicates = 0
        failed: list[MeteringFailure] = []
        skipped: set[str] = set()  # refused this run: read past them
        interrupted: MeteringFailure | None = None
        while interrupted is None:
            budget = self._batch_size
            if self._max_events is not None:
                budget = min(budget, self._max_events - sent - duplicates - len(failed))
            if budget <= 0:
                break
            limit = budget + len(skipped)
            async with self._uow(read_only=True) as uow:
                pending = list(await uow.usage.unmetered(limit))
            batch = [usage for usage in pending if usage.event.id not in skipped][:budget]
            if not batch:
                break
            taken: list[str] = []
            try:
                for usage in batch:
                    try:
                        outcome = await self._report(usage)
                    except MeteringError as error:
                        failure = _failure(usage.event.id, error)
                        if not error.event_rejected:
                            interrupted = failure
                            log.warning(
                                "metering stopped at %s (%s): %s; %d event(s) of this batch "
                                "stay unmetered",
                                usage.event.id,
                                error.code,
                                error.message,
                                len(batch) - len(taken),
                            )
                            break
                        failed.append(failure)
                        skipped.add(usage.event.id)
                        log.error(
                            "the meter refused usage event %s (%s): %s; it stays unmetered",
                            usage.event.id,
                            error.code,
                            error.message,
                        )
                        continue
                    taken.append(usage.event.id)
                    if outcome is ReportOutcome.DUPLICATE:
                        duplicates += 1
                    else:
                        sent += 1
            finally:
                # Also when something unexpected propagates: what the meter took is marked.
                if taken:
                    await self._mark(taken)
            if len(pending) < limit:
                break  # the outbox held no more than this
        summary = MeteringSummary(
            sent=sent, duplicates=duplicates, failed=tuple(failed), interrupted=interrupted
        )
        log.info(
            "metering: %d sent, %d duplicate(s), %d refused%s",
            summary.sent,
            summary.duplicates,
            len(summary.failed),
            ", interrupted" if interrupted is not None else "",
        )
        return summary

    async def _report(self, usage: MeterableUsage) -> ReportOutcome:
        if isinstance(self._meter, OutcomeReportingMeter):
            return await self._meter.report_outcome(usage)
        await self._meter.report(usage)
        return ReportOutcome.RECORDED

    async def _mark(self, event_ids: Sequence[str]) -> None:
        async with self._uow() as uow:
            await uow.usage.mark_metered(event_ids, self._clock.now())
            await uow.commit()


def _failure(event_id: str, error: MeteringError) -> MeteringFailure:
    reason = error.details.get("reason")
    return MeteringFailure(
        event_id=event_id,
        code=reason if isinstance(reason, str) and reason else error.code,
        message=error.message,
        retryable=error.retryable,
    )


__all__ = [
    "MeteringFailure",
    "MeteringSummary",
    "OutcomeReportingMeter",
    "ReportOutcome",
    "ReportUsage",
    "UsageUnitOfWork",
    "UsageUnitOfWorkFactory",
]
