"""Stripe usage metering against the Stripe meter-events emulator, over a real loopback socket.

The official ``stripe`` SDK (async client, httpx) talks to
``imagegen.testing.emulators.stripe``; each test checks both sides: what arrived (the
emulator's recorded requests and counted events) and what the adapter and the relay made of
the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import pytest

pytest.importorskip("stripe", reason="Stripe metering needs the stripe extra: imagegen[stripe]")
pytest.importorskip("uvicorn", reason="the emulators need the emulators extra")

import httpx
from pydantic import SecretStr
from starlette.applications import Starlette

from imagegen.application.ports import MeterableUsage, UsageQuery
from imagegen.application.use_cases.metering import ReportOutcome, ReportUsage
from imagegen.domain.errors import MeteringError
from imagegen.domain.usage import UsageEvent, UsageKind
from imagegen.infrastructure.billing.resilience import RetryingUsageMeter
from imagegen.infrastructure.billing.stripe_meter import StripeUsageMeter
from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators.stripe import create_app, usage_totals

KEY = "sk_test_51ImagegenSecretKey0123456789abcdefWXYZ"
CUSTOMER = "cus_Test0001"
NOW = datetime.now(UTC).replace(microsecond=0)


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Starlette, str]]:
    app = create_app(api_key=KEY)
    with serve(app) as base_url:
        yield app, base_url


@pytest.fixture
def emulator(served: tuple[Starlette, str]) -> Starlette:
    app = served[0]
    app.state.faults.clear()
    app.state.faults.latency_s = 0.0
    for name in ("requests", "meter_events", "error_reports", "duplicates"):
        getattr(app.state, name).clear()
    app.state.identifiers.clear()
    app.state.idempotency.clear()
    return app


@pytest.fixture
def base_url(served: tuple[Starlette, str]) -> str:
    return served[1]


@pytest.fixture
async def meter(base_url: str) -> Any:
    adapter = StripeUsageMeter(api_key=SecretStr(KEY), api_base=base_url, timeout_s=5.0)
    yield adapter
    await adapter.aclose()


def event(
    n: int = 1,
    *,
    credits: int = 7,
    occurred_at: datetime | None = None,
    kind: UsageKind = UsageKind.CAPTURE,
) -> UsageEvent:
    return UsageEvent(
        id=f"use_res_{n:04d}",
        kind=kind,
        tenant_id="acme",
        principal_id="alice",
        project_id=None,
        generation_id=f"gen_{n:04d}",
        reservation_id=f"res_{n:04d}",
        ledger_entry_id=f"led_{n:04d}",
        provider="local",
        model="local-v1",
        operation="generate",
        images=1 if credits >= 0 else -1,
        included_images=0,
        overage_images=1 if credits >= 0 else -1,
        credits=credits,
        provider_cost_usd=Decimal("0.01"),
        period_start=NOW.replace(day=1),
        occurred_at=occurred_at or NOW - timedelta(minutes=n),
    )


def meterable(n: int = 1, **options: Any) -> MeterableUsage:
    return MeterableUsage(event=event(n, **options), customer_id=CUSTOMER)


def no_sleep_recorder() -> tuple[list[float], Any]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    return delays, sleep


# --- an in-test usage outbox -------------------------------------------------------------------


class Outbox:
    """The usage events and their ``metered_at``, as a ``UsageRepository`` would hold them."""

    def __init__(self, usages: Sequence[MeterableUsage]) -> None:
        self.usages = {u.event.id: u for u in usages}
        self.metered: dict[str, datetime] = {}
        self.crash_on_commit = 0  # commits of marks that die (the process "crashes")


class _Repository:
    def __init__(self, outbox: Outbox, staged: list[tuple[Sequence[str], datetime]]) -> None:
        self._outbox = outbox
        self._staged = staged

    async def add(self, event: UsageEvent) -> None:
        raise NotImplementedError

    async def list(self, query: UsageQuery) -> Sequence[UsageEvent]:
        raise NotImplementedError

    async def unmetered(self, limit: int) -> Sequence[MeterableUsage]:
        pending = [u for i, u in self._outbox.usages.items() if i not in self._outbox.metered]
        pending.sort(key=lambda u: u.event.occurred_at)
        return pending[:limit]

    async def mark_metered(self, event_ids: Sequence[str], at: datetime) -> None:
        self._staged.append((list(event_ids), at))


class _UnitOfWork:
    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._staged: list[tuple[Sequence[str], datetime]] = []
        self.usage = _Repository(outbox, self._staged)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._staged.clear()  # uncommitted: rolled back

    async def commit(self) -> None:
        if self._staged and self._outbox.crash_on_commit > 0:
            self._outbox.crash_on_commit -= 1
            raise RuntimeError("the process died before the marks were committed")
        for ids, at in self._staged:
            for event_id in ids:
                self._outbox.metered[event_id] = at
        self._staged.clear()


class _Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def relay(outbox: Outbox, meter: Any, **options: Any) -> ReportUsage:
    def factory(*, read_only: bool = False) -> _UnitOfWork:
        return _UnitOfWork(outbox)

    return ReportUsage(uow=factory, meter=meter, clock=_Clock(), **options)


# --- what arrives at Stripe --------------------------------------------------------------------


async def test_a_report_arrives_with_stripes_form_fields_and_the_bearer_key(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    usage = meterable(1, credits=7)

    outcome = await meter.report_outcome(usage)

    assert outcome is ReportOutcome.RECORDED
    [request] = emulator.state.requests
    assert request["method"] == "POST"
    assert request["path"] == "/v1/billing/meter_events"
    assert request["status"] == 200
    assert request["authorized"] is True
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert request["headers"]["idempotency-key"]  # the SDK's, fresh per report
    assert request["fields"] == {
        "event_name": "imagegen_credits",
        "payload[stripe_customer_id]": CUSTOMER,
        "payload[value]": "7",
        "identifier": "use_res_0001",
        "timestamp": str(int(usage.event.occurred_at.timestamp())),
    }
    assert usage_totals(emulator) == {"imagegen_credits": {CUSTOMER: 7}}
    assert emulator.state.error_reports == []


async def test_the_event_name_and_payload_keys_are_configurable(
    base_url: str, emulator: Starlette
) -> None:
    meter = StripeUsageMeter(
        api_key=SecretStr(KEY),
        api_base=base_url,
        event_name="images_overage",
        customer_payload_key="customer",
        value_payload_key="credits",
    )
    try:
        await meter.report(meterable(2, credits=3))
    finally:
        await meter.aclose()
    fields = emulator.state.requests[0]["fields"]
    assert fields["event_name"] == "images_overage"
    assert fields["payload[customer]"] == CUSTOMER
    assert fields["payload[credits]"] == "3"


async def test_a_refund_is_a_negative_whole_number_under_its_own_identifier(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    await meter.report(meterable(1, credits=10))
    refund = MeterableUsage(event=event(2, credits=-4, kind=UsageKind.REFUND), customer_id=CUSTOMER)

    assert await meter.report_outcome(refund) is ReportOutcome.RECORDED

    assert emulator.state.requests[-1]["fields"]["payload[value]"] == "-4"
    assert usage_totals(emulator) == {"imagegen_credits": {CUSTOMER: 6}}


async def test_the_sdk_call_does_not_block_the_event_loop(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    emulator.state.faults.add(FaultKind.LATENCY, delay=0.5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await meter.report(meterable(1))
    finally:
        ticker.cancel()
    assert ticks >= 20  # the loop kept running while Stripe took half a second


# --- duplicates --------------------------------------------------------------------------------


async def test_a_repeated_identifier_is_a_duplicate_and_counts_once(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    usage = meterable(1, credits=5)

    first = await meter.report_outcome(usage)
    second = await meter.report_outcome(usage)
    await meter.report(usage)  # the port's report: a duplicate is success, not an error

    assert (first, second) == (ReportOutcome.RECORDED, ReportOutcome.DUPLICATE)
    assert [r["status"] for r in emulator.state.requests] == [200, 400, 400]
    assert len(emulator.state.meter_events) == 1
    assert usage_totals(emulator) == {"imagegen_credits": {CUSTOMER: 5}}


async def test_a_duplicate_answered_with_the_message_only_is_still_a_duplicate() -> None:
    app = create_app(api_key=KEY, duplicate_code=False)
    with serve(app) as url:
        meter = StripeUsageMeter(api_key=SecretStr(KEY), api_base=url)
        try:
            assert await meter.report_outcome(meterable(1)) is ReportOutcome.RECORDED
            assert await meter.report_outcome(meterable(1)) is ReportOutcome.DUPLICATE
        finally:
            await meter.aclose()
    assert len(app.state.meter_events) == 1


# --- faults ------------------------------------------------------------------------------------


async def test_retryable_faults_are_retried_then_the_report_succeeds(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    faults = emulator.state.faults
    faults.add(FaultKind.RATE_LIMIT, retry_after=0.25)
    faults.add(FaultKind.SERVER_ERROR, status=500)
    faults.add(FaultKind.SERVER_ERROR, status=409)
    delays, sleep = no_sleep_recorder()
    retrying = RetryingUsageMeter(meter, max_attempts=4, base_delay_s=0.1, sleep=sleep)

    outcome = await retrying.report_outcome(meterable(1))

    assert outcome is ReportOutcome.RECORDED
    assert [r["status"] for r in emulator.state.requests] == [429, 500, 409, 200]
    assert delays[0] == 0.25  # Stripe's Retry-After, exactly
    assert all(0.05 <= d <= 0.4 for d in delays[1:])  # equal-jitter backoff
    assert len(emulator.state.meter_events) == 1


async def test_a_report_stripe_took_but_never_answered_is_resent_and_counted_once(
    base_url: str, emulator: Starlette
) -> None:
    emulator.state.faults.add(FaultKind.TIMEOUT, delay=5.0)
    meter = StripeUsageMeter(api_key=SecretStr(KEY), api_base=base_url, timeout_s=0.5)
    retrying = RetryingUsageMeter(meter, max_attempts=3, sleep=no_sleep_recorder()[1])
    try:
        outcome = await retrying.report_outcome(meterable(1, credits=9))
    finally:
        await meter.aclose()

    assert outcome is ReportOutcome.DUPLICATE  # the first attempt was recorded
    assert len(emulator.state.requests) == 2
    assert usage_totals(emulator) == {"imagegen_credits": {CUSTOMER: 9}}


async def test_when_retries_run_out_the_error_is_retryable(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    emulator.state.faults.add(FaultKind.SERVER_ERROR, status=503, times=10)
    retrying = RetryingUsageMeter(meter, max_attempts=3, sleep=no_sleep_recorder()[1])

    with pytest.raises(MeteringError) as caught:
        await retrying.report(meterable(1))

    assert caught.value.retryable
    assert not caught.value.event_rejected
    assert caught.value.details["status"] == 503
    assert len(emulator.state.requests) == 3
    assert emulator.state.meter_events == []


async def test_a_connection_failure_is_retryable(emulator: Starlette) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    meter = StripeUsageMeter(api_key=SecretStr(KEY), api_base=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(MeteringError) as caught:
            await meter.report(meterable(1))
    finally:
        await meter.aclose()
    assert caught.value.retryable
    assert caught.value.details["reason"] == "connection"


async def test_a_bad_request_rejects_the_event_and_is_not_retried(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    emulator.state.faults.add(FaultKind.BAD_REQUEST)
    retrying = RetryingUsageMeter(meter, max_attempts=4, sleep=no_sleep_recorder()[1])

    with pytest.raises(MeteringError) as caught:
        await retrying.report(meterable(1))

    error = caught.value
    assert error.event_rejected
    assert not error.retryable
    assert error.details["param"] == "payload[value]"
    assert error.details["stripe_code"] == "parameter_invalid"
    assert "payload[value]" in error.message
    assert len(emulator.state.requests) == 1


async def test_a_wrong_key_refuses_us_not_the_event(base_url: str, emulator: Starlette) -> None:
    meter = StripeUsageMeter(api_key=SecretStr("sk_test_wrong0000000000000000"), api_base=base_url)
    try:
        with pytest.raises(MeteringError) as caught:
            await meter.report(meterable(1))
    finally:
        await meter.aclose()
    error = caught.value
    assert not error.retryable
    assert not error.event_rejected
    assert error.details["reason"] == "authentication"
    assert "STRIPE_API_KEY" in error.message


async def test_without_a_key_nothing_is_sent(emulator: Starlette, base_url: str) -> None:
    meter = StripeUsageMeter(api_key=None, api_base=base_url)
    with pytest.raises(MeteringError) as caught:
        await meter.report(meterable(1))
    assert caught.value.details["reason"] == "no_key"
    assert not caught.value.retryable
    assert not caught.value.event_rejected
    assert emulator.state.requests == []


# --- timestamps --------------------------------------------------------------------------------


async def test_an_event_older_than_stripes_35_days_is_rejected_before_sending(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    old = meterable(1, occurred_at=datetime.now(UTC) - timedelta(days=35))

    with pytest.raises(MeteringError) as caught:
        await meter.report(old)

    assert caught.value.event_rejected
    assert caught.value.details["reason"] == "timestamp_too_far_in_past"
    assert emulator.state.requests == []
    recent = meterable(2, occurred_at=datetime.now(UTC) - timedelta(days=34))
    assert await meter.report_outcome(recent) is ReportOutcome.RECORDED


async def test_an_event_from_the_future_is_sent_with_the_current_time(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    ahead = meterable(1, occurred_at=datetime.now(UTC) + timedelta(hours=1))
    before = int(time.time())

    await meter.report(ahead)

    sent = int(emulator.state.requests[0]["fields"]["timestamp"])
    assert before <= sent <= int(time.time()) + 1
    assert emulator.state.error_reports == []


# --- secrets -----------------------------------------------------------------------------------


async def test_the_secret_key_never_reaches_an_error_a_log_line_or_a_repr(
    base_url: str, emulator: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk_test_51WrongSecretKey9876543210zyxwv"
    errors: list[BaseException] = []
    for key, fault in ((wrong, None), (KEY, FaultKind.BAD_REQUEST), (KEY, FaultKind.RATE_LIMIT)):
        if fault is not None:
            emulator.state.faults.add(fault)
        meter = StripeUsageMeter(api_key=SecretStr(key), api_base=base_url)
        try:
            await meter.report(meterable(1))
        except MeteringError as error:
            errors.append(error)
        finally:
            await meter.aclose()
    emulator.state.faults.add(FaultKind.AUTH_ERROR)
    meter = StripeUsageMeter(api_key=SecretStr(KEY), api_base=base_url)
    with pytest.raises(MeteringError) as caught:
        await meter.report(meterable(1))
    errors.append(caught.value)
    assert len(errors) == 4

    texts = [repr(meter)]
    for error in errors:
        texts += [str(error), repr(error), json.dumps(getattr(error, "details", {}), default=str)]
        assert error.__cause__ is None
        assert error.__context__ is None
    ours = texts + [r.getMessage() for r in caplog.records if r.name.startswith("imagegen")]
    texts += [record.getMessage() for record in caplog.records]  # the SDK's and httpx's too
    await meter.aclose()
    for secret in (KEY, wrong):
        leaks = [text for text in texts if secret in text]
        assert not leaks, leaks[:3]
        # Stripe's 401 quotes the key masked ("sk_test_****WXYZ"); the SDK logs that (its
        # logger), we never repeat it.
        assert not [text for text in ours if secret[-4:] in text], secret
    assert not [text for text in ours if re.search(r"[sr]k_(test|live)_", text)]


# --- the relay over the real socket ------------------------------------------------------------


async def test_a_crash_between_sending_and_marking_resends_and_stripe_counts_once(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    outbox = Outbox([meterable(n, credits=n) for n in range(1, 6)])
    outbox.crash_on_commit = 1

    with pytest.raises(RuntimeError, match="died"):
        await relay(outbox, meter).execute()
    assert outbox.metered == {}  # the marks were lost with the process...
    assert len(emulator.state.meter_events) == 5  # ...after Stripe took every event

    summary = await relay(outbox, meter).execute()

    assert (summary.sent, summary.duplicates, summary.failed) == (0, 5, ())
    assert set(outbox.metered) == set(outbox.usages)
    assert len(emulator.state.meter_events) == 5
    assert usage_totals(emulator) == {"imagegen_credits": {CUSTOMER: 15}}
    assert await relay(outbox, meter).execute() == type(summary)()  # nothing left


async def test_nothing_is_lost_while_the_meter_is_down(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    outbox = Outbox([meterable(n) for n in range(1, 4)])
    emulator.state.faults.add(FaultKind.SERVER_ERROR, status=503, times=100)
    retrying = RetryingUsageMeter(meter, max_attempts=2, sleep=no_sleep_recorder()[1])

    summary = await relay(outbox, retrying).execute()

    assert summary.interrupted is not None
    assert summary.interrupted.retryable
    assert summary.interrupted.code == "unavailable"
    assert (summary.sent, summary.duplicates, summary.failed) == (0, 0, ())
    assert outbox.metered == {}
    assert len(emulator.state.requests) == 2  # stopped at the first event, not 3 x 2 attempts

    emulator.state.faults.clear()
    summary = await relay(outbox, retrying).execute()
    assert summary.sent == 3
    assert summary.ok
    assert set(outbox.metered) == set(outbox.usages)


async def test_a_rejected_event_is_reported_as_failed_without_blocking_the_others(
    emulator: Starlette, meter: StripeUsageMeter
) -> None:
    too_old = meterable(9, occurred_at=datetime.now(UTC) - timedelta(days=40))
    outbox = Outbox([too_old, *(meterable(n) for n in range(1, 5))])
    emulator.state.faults.add(FaultKind.BAD_REQUEST)  # the first event sent is refused
    retrying = RetryingUsageMeter(meter, sleep=no_sleep_recorder()[1])

    summary = await relay(outbox, retrying, batch_size=2).execute()

    assert summary.sent == 3
    assert {f.event_id for f in summary.failed} == {"use_res_0009", "use_res_0004"}
    assert {f.code for f in summary.failed} == {"timestamp_too_far_in_past", "invalid_request"}
    assert summary.interrupted is None
    assert set(outbox.metered) == {"use_res_0001", "use_res_0002", "use_res_0003"}

    summary = await relay(outbox, retrying, batch_size=2).execute()  # the next run
    assert summary.sent == 1  # the refusal was a one-off; the old event is refused again
    assert [f.event_id for f in summary.failed] == ["use_res_0009"]


async def test_a_wrong_key_stops_the_relay_and_marks_nothing(
    base_url: str, emulator: Starlette
) -> None:
    outbox = Outbox([meterable(n) for n in range(1, 4)])
    meter = StripeUsageMeter(api_key=SecretStr("sk_test_nope0000000000000"), api_base=base_url)
    try:
        summary = await relay(outbox, RetryingUsageMeter(meter)).execute()
    finally:
        await meter.aclose()
    assert summary.interrupted is not None
    assert summary.interrupted.code == "authentication"
    assert summary.failed == ()
    assert outbox.metered == {}
    assert len(emulator.state.requests) == 1


# --- the emulator itself -----------------------------------------------------------------------


def _post(base_url: str, data: dict[str, str], **headers: str) -> httpx.Response:
    auth = {"authorization": f"Bearer {KEY}"}
    return httpx.post(f"{base_url}/v1/billing/meter_events", data=data, headers=auth | headers)


def test_the_emulator_validates_like_stripe(base_url: str, emulator: Starlette) -> None:
    good = {
        "event_name": "imagegen_credits",
        "payload[stripe_customer_id]": CUSTOMER,
        "payload[value]": "3",
    }
    missing = _post(base_url, {"payload[value]": "3"})
    assert missing.status_code == 400
    assert missing.json()["error"] | {"doc_url": None} == {
        "type": "invalid_request_error",
        "code": "parameter_missing",
        "param": "event_name",
        "message": "Missing required param: event_name.",
        "doc_url": None,
    }
    unknown = _post(base_url, good | {"color": "red"})
    assert unknown.json()["error"]["code"] == "parameter_unknown"
    bad_time = _post(base_url, good | {"timestamp": "yesterday"})
    assert bad_time.json()["error"]["code"] == "parameter_invalid_integer"
    long_id = _post(base_url, good | {"identifier": "x" * 101})
    assert long_id.json()["error"]["param"] == "identifier"

    no_key = httpx.post(f"{base_url}/v1/billing/meter_events", data=good)
    assert no_key.status_code == 401
    basic = httpx.post(f"{base_url}/v1/billing/meter_events", data=good, auth=(KEY, ""))
    assert basic.status_code == 200
    assert basic.json()["object"] == "billing.meter_event"
    assert basic.json()["identifier"].startswith("emu_")  # generated when absent


def test_the_emulator_reports_asynchronous_validation_failures(
    base_url: str, emulator: Starlette
) -> None:
    base = {"payload[stripe_customer_id]": CUSTOMER, "payload[value]": "1"}
    assert _post(base_url, base | {"event_name": "nope", "identifier": "a"}).status_code == 200
    half = base | {"event_name": "imagegen_credits", "identifier": "b", "payload[value]": "1.5"}
    assert _post(base_url, half).status_code == 200
    old = base | {"event_name": "imagegen_credits", "identifier": "c", "timestamp": "1"}
    assert _post(base_url, old).status_code == 200
    codes = [r["code"] for r in emulator.state.error_reports]
    assert codes == ["no_meter", "meter_event_invalid_value", "timestamp_too_far_in_past"]
    assert emulator.state.meter_events == []


def test_the_emulator_replays_an_idempotency_key(base_url: str, emulator: Starlette) -> None:
    data = {
        "event_name": "imagegen_credits",
        "payload[stripe_customer_id]": CUSTOMER,
        "payload[value]": "2",
        "identifier": "use_x",
    }
    first = _post(base_url, data, **{"idempotency-key": "k1"})
    again = _post(base_url, data, **{"idempotency-key": "k1"})
    other = _post(base_url, data | {"payload[value]": "3"}, **{"idempotency-key": "k1"})
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"
    assert len(emulator.state.meter_events) == 1
    assert httpx.get(f"{base_url}/_emulator/usage").json() == {"imagegen_credits": {CUSTOMER: 2}}


# --- packaging ---------------------------------------------------------------------------------


def test_importing_imagegen_or_the_adapter_does_not_import_stripe() -> None:
    code = (
        "import sys, imagegen\n"
        "assert 'stripe' not in sys.modules, 'imagegen imported stripe'\n"
        "import imagegen.infrastructure.billing.stripe_meter\n"
        "import imagegen.application.use_cases.metering\n"
        "assert 'stripe' not in sys.modules, 'the Stripe adapter imported stripe'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_the_stripe_package_the_meter_says_how_to_install_it() -> None:
    code = (
        "import asyncio, sys\n"
        "sys.modules['stripe'] = None  # as if it were not installed\n"
        "from pydantic import SecretStr\n"
        "from imagegen.infrastructure.billing.stripe_meter import StripeUsageMeter\n"
        "from imagegen.domain.errors import ConfigurationError\n"
        "m = StripeUsageMeter(api_key=SecretStr('sk_test_x'))\n"
        "async def build():\n"
        "    m._get_client()  # what every report does first\n"
        "try:\n"
        "    asyncio.run(build())\n"
        "except ConfigurationError as e:\n"
        "    print(e.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "pip install 'imagegen[stripe]'" in done.stdout
