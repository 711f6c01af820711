"""The metering relay (``ReportUsage``) and the retries around a meter, with in-test fakes.

Over a real socket against the Stripe emulator: ``tests/integration/test_stripe_meter.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import pytest

from imagegen.application.ports import MeterableUsage, UsageQuery
from imagegen.application.use_cases.metering import ReportOutcome, ReportUsage
from imagegen.domain.errors import MeteringError
from imagegen.domain.usage import UsageEvent, UsageKind

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def usage(n: int) -> MeterableUsage:
    event = UsageEvent(
        id=f"use_{n:03d}",
        kind=UsageKind.CAPTURE,
        tenant_id="acme",
        principal_id="alice",
        project_id=None,
        generation_id=f"gen_{n:03d}",
        reservation_id=f"res_{n:03d}",
        ledger_entry_id=None,
        provider="local",
        model="local-v1",
        operation="generate",
        images=1,
        included_images=1,
        overage_images=0,
        credits=n,
        provider_cost_usd=None,
        period_start=T0,
        occurred_at=T0 + timedelta(seconds=n),
    )
    return MeterableUsage(event=event, customer_id="cus_1")


class Outbox:
    def __init__(self, count: int) -> None:
        self.usages = [usage(n) for n in range(1, count + 1)]
        self.metered: dict[str, datetime] = {}
        self.reads: list[int] = []
        self.marks: list[list[str]] = []


class _Repository:
    def __init__(self, outbox: Outbox, staged: list[list[str]]) -> None:
        self._outbox = outbox
        self._staged = staged

    async def add(self, event: UsageEvent) -> None:
        raise NotImplementedError

    async def list(self, query: UsageQuery) -> Sequence[UsageEvent]:
        raise NotImplementedError

    async def unmetered(self, limit: int) -> Sequence[MeterableUsage]:
        self._outbox.reads.append(limit)
        return [u for u in self._outbox.usages if u.event.id not in self._outbox.metered][:limit]

    async def mark_metered(self, event_ids: Sequence[str], at: datetime) -> None:
        self._staged.append(list(event_ids))


class _UnitOfWork:
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._staged: list[list[str]] = []
        self.usage = _Repository(outbox, self._staged)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._staged.clear()

    async def commit(self) -> None:
        for ids in self._staged:
            self._outbox.marks.append(ids)
            for event_id in ids:
                self._outbox.metered[event_id] = T0
        self._staged.clear()


class _Clock:
    def now(self) -> datetime:
        return T0


class ScriptedMeter:
    """Answers per event id: an outcome, or an exception to raise (default: RECORDED)."""

    def __init__(self, script: dict[str, ReportOutcome | BaseException] | None = None) -> None:
        self.script = script or {}
        self.sent: list[str] = []

    async def report(self, usage: MeterableUsage) -> None:
        await self.report_outcome(usage)

    async def report_outcome(self, usage: MeterableUsage) -> ReportOutcome:
        self.sent.append(usage.event.id)
        answer = self.script.get(usage.event.id, ReportOutcome.RECORDED)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class PlainMeter:
    """A ``UsageMeter`` with ``report`` only."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def report(self, usage: MeterableUsage) -> None:
        self.sent.append(usage.event.id)


def relay(outbox: Outbox, meter: object, **options: int | None) -> ReportUsage:
    def factory(*, read_only: bool = False) -> _UnitOfWork:
        return _UnitOfWork(outbox)

    return ReportUsage(uow=factory, meter=meter, clock=_Clock(), **options)  # type: ignore[arg-type]


def rejected() -> MeteringError:
    return MeteringError("refused", event_rejected=True, reason="invalid_request")


async def test_every_event_is_sent_once_and_marked_per_batch() -> None:
    outbox = Outbox(5)
    meter = ScriptedMeter({"use_002": ReportOutcome.DUPLICATE})

    summary = await relay(outbox, meter, batch_size=2).execute()

    assert (summary.sent, summary.duplicates, summary.failed, summary.ok) == (4, 1, (), True)
    assert meter.sent == [u.event.id for u in outbox.usages]
    assert outbox.marks == [["use_001", "use_002"], ["use_003", "use_004"], ["use_005"]]


async def test_refused_events_do_not_block_the_outbox_even_a_batch_of_them() -> None:
    outbox = Outbox(5)
    meter = ScriptedMeter({f"use_00{n}": rejected() for n in (1, 2, 3)})

    summary = await relay(outbox, meter, batch_size=2).execute()

    assert summary.sent == 2
    assert [f.event_id for f in summary.failed] == ["use_001", "use_002", "use_003"]
    assert {f.code for f in summary.failed} == {"invalid_request"}
    assert set(outbox.metered) == {"use_004", "use_005"}
    assert meter.sent == [u.event.id for u in outbox.usages]  # each sent once this run
    assert outbox.reads == [2, 4, 5]  # read past the refused ones


async def test_a_meter_that_refuses_us_stops_the_run_and_keeps_what_it_took() -> None:
    outbox = Outbox(4)
    meter = ScriptedMeter({"use_003": MeteringError("no key", reason="no_key")})

    summary = await relay(outbox, meter).execute()

    assert summary.sent == 2
    assert summary.interrupted is not None
    assert (summary.interrupted.event_id, summary.interrupted.code) == ("use_003", "no_key")
    assert not summary.ok
    assert set(outbox.metered) == {"use_001", "use_002"}
    assert meter.sent == ["use_001", "use_002", "use_003"]


async def test_a_bug_propagates_after_what_the_meter_took_is_marked() -> None:
    outbox = Outbox(3)
    meter = ScriptedMeter({"use_002": ZeroDivisionError("bug")})

    with pytest.raises(ZeroDivisionError):
        await relay(outbox, meter).execute()

    assert set(outbox.metered) == {"use_001"}


async def test_max_events_bounds_a_run() -> None:
    outbox = Outbox(7)
    meter = ScriptedMeter()

    summary = await relay(outbox, meter, batch_size=3, max_events=4).execute()

    assert summary.sent == 4
    assert outbox.reads == [3, 1]


async def test_a_meter_with_report_only_counts_as_sent() -> None:
    outbox = Outbox(2)
    meter = PlainMeter()

    summary = await relay(outbox, meter).execute()

    assert (summary.sent, summary.duplicates) == (2, 0)
    assert meter.sent == ["use_001", "use_002"]


async def test_an_empty_outbox_is_a_quiet_run() -> None:
    summary = await relay(Outbox(0), ScriptedMeter()).execute()
    assert summary.ok
    assert summary.metered == 0


def test_bad_relay_options_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        relay(Outbox(0), ScriptedMeter(), batch_size=0)
    with pytest.raises(ValueError, match="max_events"):
        relay(Outbox(0), ScriptedMeter(), max_events=0)


def test_a_metering_error_is_retryable_or_rejects_the_event_not_both() -> None:
    error = MeteringError("x", retryable=True, reason="rate_limited")
    assert error.retryable
    assert not error.event_rejected
    assert error.details == {"retryable": True, "event_rejected": False, "reason": "rate_limited"}
    with pytest.raises(ValueError, match="not both"):
        MeteringError("x", retryable=True, event_rejected=True)


# --- RetryingUsageMeter -------------------------------------------------------------------------


def _retrying(inner: object, **options: float) -> object:
    from imagegen.infrastructure.billing.resilience import RetryingUsageMeter

    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    meter = RetryingUsageMeter(inner, sleep=sleep, **options)  # type: ignore[arg-type]
    meter.delays = delays  # type: ignore[attr-defined]
    return meter


class FlakyMeter(ScriptedMeter):
    def __init__(self, errors: list[MeteringError]) -> None:
        super().__init__()
        self.errors = errors

    async def report_outcome(self, usage: MeterableUsage) -> ReportOutcome:
        self.sent.append(usage.event.id)
        if self.errors:
            raise self.errors.pop(0)
        return ReportOutcome.DUPLICATE


async def test_retries_transient_failures_with_backoff_and_keeps_the_outcome() -> None:
    inner = FlakyMeter([MeteringError("503", retryable=True)] * 2)
    meter = _retrying(inner, base_delay_s=1.0, max_delay_s=8.0)

    assert await meter.report_outcome(usage(1)) is ReportOutcome.DUPLICATE  # type: ignore[attr-defined]

    assert len(inner.sent) == 3
    first, second = meter.delays  # type: ignore[attr-defined]
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0


async def test_a_retry_after_is_honoured_and_a_long_one_gives_up_at_once() -> None:
    inner = FlakyMeter([MeteringError("429", retryable=True, retry_after=3.0)])
    meter = _retrying(inner)
    await meter.report_outcome(usage(1))  # type: ignore[attr-defined]
    assert meter.delays == [3.0]  # type: ignore[attr-defined]

    inner = FlakyMeter([MeteringError("429", retryable=True, retry_after=600.0)])
    meter = _retrying(inner, max_retry_after_s=60.0)
    with pytest.raises(MeteringError):
        await meter.report_outcome(usage(1))  # type: ignore[attr-defined]
    assert len(inner.sent) == 1


async def test_refusals_are_not_retried_and_attempts_are_bounded() -> None:
    inner = FlakyMeter([rejected()])
    meter = _retrying(inner)
    with pytest.raises(MeteringError):
        await meter.report(usage(1))  # type: ignore[attr-defined]
    assert len(inner.sent) == 1

    inner = FlakyMeter([MeteringError("503", retryable=True)] * 10)
    meter = _retrying(inner, max_attempts=3)
    with pytest.raises(MeteringError) as caught:
        await meter.report(usage(1))  # type: ignore[attr-defined]
    assert caught.value.retryable
    assert len(inner.sent) == 3
