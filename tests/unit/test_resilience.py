"""``ResilientProvider``: retries, backoff, Retry-After, concurrency cap, rate limit, breaker.

Nothing here waits for real: retries sleep through an injected recorder, the breaker reads an
injected clock, and the tests about time on the event loop (cap, rate limit, timeouts) run on
``VirtualTimeLoop``, whose clock jumps straight to the next timer whenever the loop would
otherwise wait.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegen.application.ports import (
    ProviderHealth,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
)
from imagegen.domain.errors import (
    AuthenticationFailed,
    ContentPolicyViolation,
    ImageGenError,
    InvalidParameter,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from imagegen.domain.values import ImageFormat, ImageSize
from imagegen.infrastructure.providers.resilience import (
    CircuitState,
    ResiliencePolicy,
    ResilientProvider,
)
from imagegen.testing import ScriptedProvider

T = TypeVar("T")
SECRET_PROMPT = "a red fox, codename PROMPT-MUST-NOT-BE-LOGGED"
TICK = 1e-6  # tolerance for virtual times


# --- helpers -----------------------------------------------------------------------------------


class _FastForwardSelector(selectors.DefaultSelector):
    """Never blocks: when nothing is ready, the virtual clock jumps by the loop's timeout.

    It also moves by at least a nanosecond per idle turn, so code that computes "wait 1e-17 s
    more" from floating-point residue (as a leaky bucket can) still sees time pass instead of
    spinning; times in assertions are compared with ``abs=TICK``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("deadlock: the event loop would wait forever")
        self.now += max(timeout, 1e-9)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._selector_ff = _FastForwardSelector()
        super().__init__(self._selector_ff)

    def time(self) -> float:
        return self._selector_ff.now


def run_virtual(coroutine: Coroutine[Any, Any, T]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(prompt: str = SECRET_PROMPT) -> ProviderRequest:
    return ProviderRequest(
        model="scripted-v1", prompt=prompt, n=1, size=ImageSize(8, 8), format=ImageFormat.PNG
    )


class Harness:
    def __init__(self, inner: Any = None, **policy: Any) -> None:
        self.inner = inner if inner is not None else ScriptedProvider("scripted")
        self.sleep = RecordingSleep()
        self.clock = FakeMonotonic()
        defaults: dict[str, Any] = {"base_delay_s": 1.0, "max_delay_s": 30.0}
        self.policy = ResiliencePolicy(**{**defaults, **policy})
        self.provider = ResilientProvider(
            self.inner, self.policy, clock=self.clock, sleep=self.sleep
        )

    async def fail(self, times: int, error: Exception | None = None) -> None:
        """Make ``times`` calls that each raise (from the provider or the breaker)."""
        for _ in range(times):
            if error is not None:
                self.inner.fail_next(error)
            with pytest.raises(ImageGenError):
                await self.provider.generate(request())


class JobProvider:
    """Reports a job id, then fails while waiting for it (a timeout, the riskiest case)."""

    def __init__(self) -> None:
        self.created = 0
        self.resumed: list[str] = []

    @property
    def name(self) -> str:
        return "jobs"

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        self.created += 1
        assert request.on_job_created is not None
        await request.on_job_created(f"job-{self.created}")
        raise ProviderUnavailable("polling timed out", provider="jobs", reason="timeout")

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        self.resumed.append(job_id)
        return ProviderResult(images=(ProviderImage(b"png"),), provider_job_id=job_id)

    async def health(self) -> ProviderHealth:
        return ProviderHealth(self.name, ok=True)


class ConcurrencyProbe(ScriptedProvider):
    """Counts attempts in flight and records when (loop time) each one started."""

    def __init__(self, work_s: float = 1.0) -> None:
        super().__init__("probe")
        self.work_s = work_s
        self.in_flight = 0
        self.peak = 0
        self.starts: list[float] = []

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.starts.append(asyncio.get_running_loop().time())
        try:
            await asyncio.sleep(self.work_s)
            return await super().generate(request)
        finally:
            self.in_flight -= 1


# --- passing through ---------------------------------------------------------------------------


async def test_a_successful_call_passes_through_under_the_inner_name() -> None:
    h = Harness()
    result = await h.provider.generate(request())
    assert h.provider.name == "scripted"
    assert len(result.images) == 1
    assert [r.prompt for r in h.inner.requests] == [SECRET_PROMPT]
    assert h.sleep.calls == []


# --- retries -----------------------------------------------------------------------------------


async def test_rate_limited_retries_wait_exactly_what_retry_after_says() -> None:
    h = Harness(max_attempts=4, max_delay_s=1.0)  # Retry-After is honoured above max_delay_s
    h.inner.fail_next(RateLimited("slow down", retry_after=7.0))
    h.inner.fail_next(RateLimited("slow down", retry_after=2.5))
    result = await h.provider.generate(request())
    assert result.images
    assert h.sleep.calls == [7.0, 2.5]
    assert len(h.inner.requests) == 3


async def test_a_retry_after_longer_than_the_limit_gives_up_at_once_without_sleeping() -> None:
    h = Harness(max_retry_after_s=60.0)
    error = RateLimited("come back in an hour", retry_after=3600.0)
    h.inner.fail_next(error)
    with pytest.raises(RateLimited) as raised:
        await h.provider.generate(request())
    assert raised.value is error
    assert h.sleep.calls == []
    assert len(h.inner.requests) == 1


async def test_a_retry_after_equal_to_the_limit_is_still_honoured() -> None:
    h = Harness(max_retry_after_s=60.0)
    h.inner.fail_next(RateLimited("slow down", retry_after=60.0))
    await h.provider.generate(request())
    assert h.sleep.calls == [60.0]


@settings(max_examples=60, deadline=None)
@given(
    max_attempts=st.integers(min_value=2, max_value=12),
    base=st.floats(min_value=0.01, max_value=5.0),
    cap=st.floats(min_value=0.01, max_value=60.0),
    rate_limited=st.booleans(),
)
def test_backoff_grows_exponentially_with_jitter_inside_its_window(
    max_attempts: int, base: float, cap: float, rate_limited: bool
) -> None:
    """Attempt ``n``'s retry waits uniformly in ``[e/2, e]``, ``e = min(base * 2**(n-1), cap)``
    (a ``RateLimited`` without ``retry_after`` backs off the same way)."""
    h = Harness(max_attempts=max_attempts, base_delay_s=base, max_delay_s=cap)
    for _ in range(max_attempts):
        h.inner.fail_next(
            RateLimited("busy") if rate_limited else ProviderUnavailable("503 from the provider")
        )

    async def call() -> None:
        with pytest.raises(ImageGenError):
            await h.provider.generate(request())

    asyncio.run(call())
    assert len(h.sleep.calls) == max_attempts - 1
    for attempt, delay in enumerate(h.sleep.calls, start=1):
        window = min(base * 2 ** (attempt - 1), cap)
        assert window / 2 - 1e-9 <= delay <= window + 1e-9, (attempt, delay, window)


async def test_the_jitter_actually_varies_the_delays() -> None:
    delays = set()
    for _ in range(20):
        h = Harness(max_attempts=2, base_delay_s=8.0, max_delay_s=8.0)
        h.inner.fail_next(ProviderUnavailable("503"))
        await h.provider.generate(request())
        delays.update(h.sleep.calls)
    assert len(delays) > 1
    assert all(4.0 <= d <= 8.0 for d in delays)


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    h = Harness(max_attempts=3)
    errors = [ProviderUnavailable(f"503 number {i}") for i in range(3)]
    for error in errors:
        h.inner.fail_next(error)
    with pytest.raises(ProviderUnavailable) as raised:
        await h.provider.generate(request())
    assert raised.value is errors[-1]
    assert len(h.inner.requests) == 3
    assert len(h.sleep.calls) == 2


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationFailed("bad key"),
        ProviderRejected("400: bad parameter"),
        ContentPolicyViolation("refused", stage="input"),
        ContentPolicyViolation("refused", stage="output"),
        InvalidParameter("n out of range"),
        ProviderProtocolError("200 with a body that is not JSON"),
    ],
    ids=lambda e: f"{e.code}",
)
async def test_errors_that_a_retry_cannot_fix_or_might_pay_twice_for_are_not_retried(
    error: ImageGenError,
) -> None:
    h = Harness(max_attempts=5)
    h.inner.fail_next(error)
    with pytest.raises(type(error)) as raised:
        await h.provider.generate(request())
    assert raised.value is error
    assert len(h.inner.requests) == 1
    assert h.sleep.calls == []


async def test_a_timed_out_create_is_not_retried_since_it_may_still_be_billed() -> None:
    h = Harness(max_attempts=4)
    h.inner.fail_next(ProviderUnavailable("no answer within 120 s", reason="timeout"))
    with pytest.raises(ProviderUnavailable):
        await h.provider.generate(request())
    assert len(h.inner.requests) == 1


async def test_timed_out_creates_are_retried_when_the_policy_accepts_the_risk() -> None:
    h = Harness(max_attempts=4, retry_timeouts=True)
    h.inner.fail_next(ProviderUnavailable("no answer within 120 s", reason="timeout"))
    await h.provider.generate(request())
    assert len(h.inner.requests) == 2


async def test_connection_failures_are_retried() -> None:
    h = Harness(max_attempts=4)
    h.inner.fail_next(ProviderUnavailable("connection refused", reason="connection"))
    await h.provider.generate(request())
    assert len(h.inner.requests) == 2


async def test_once_a_job_exists_a_retry_resumes_it_instead_of_paying_for_another() -> None:
    inner = JobProvider()
    h = Harness(inner, max_attempts=3)
    reported: list[str] = []

    async def on_job_created(job_id: str) -> None:
        reported.append(job_id)

    base = request()
    result = await h.provider.generate(
        ProviderRequest(
            model=base.model,
            prompt=base.prompt,
            n=1,
            size=base.size,
            format=base.format,
            on_job_created=on_job_created,
        )
    )
    assert inner.created == 1
    assert inner.resumed == ["job-1"]
    assert reported == ["job-1"]
    assert result.provider_job_id == "job-1"


def test_the_attempt_timeout_turns_a_hang_into_provider_unavailable() -> None:
    h = Harness(attempt_timeout_s=5.0, max_attempts=3)
    h.inner.delay_next(3600)

    async def call() -> tuple[ProviderUnavailable, float]:
        loop = asyncio.get_running_loop()
        with pytest.raises(ProviderUnavailable) as raised:
            await h.provider.generate(request())
        return raised.value, loop.time()

    error, elapsed = run_virtual(call())
    assert error.details["reason"] == "timeout"
    assert "5 seconds" in error.message
    assert elapsed == pytest.approx(5.0, abs=TICK)
    assert len(h.inner.requests) == 1  # a timed-out create is not retried


def test_the_attempt_timeout_of_a_job_retries_by_resuming() -> None:
    class SlowJob(JobProvider):
        async def generate(self, request: ProviderRequest) -> ProviderResult:
            self.created += 1
            assert request.on_job_created is not None
            await request.on_job_created("job-slow")
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    inner = SlowJob()
    h = Harness(inner, attempt_timeout_s=5.0, max_attempts=3)
    result = run_virtual(h.provider.generate(request()))
    assert inner.created == 1
    assert inner.resumed == ["job-slow"]
    assert result.provider_job_id == "job-slow"


async def test_each_retry_is_logged_with_attempt_code_and_delay_but_never_the_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness(max_attempts=3)
    h.inner.fail_next(RateLimited(f"rate limited for {SECRET_PROMPT}", retry_after=4.0))
    h.inner.fail_next(ProviderUnavailable(f"503 while drawing {SECRET_PROMPT}"))
    h.inner.fail_next(ProviderUnavailable("503 again"))
    with (
        caplog.at_level(logging.INFO, logger="imagegen.providers"),
        pytest.raises(ProviderUnavailable),
    ):
        await h.provider.generate(request())
    retries = [r for r in caplog.records if getattr(r, "attempt", None) is not None]
    assert [(r.attempt, r.error_code) for r in retries] == [  # type: ignore[attr-defined]
        (1, "rate_limited"),
        (2, "provider_unavailable"),
    ]
    assert retries[0].retry_delay_s == 4.0  # type: ignore[attr-defined]
    assert "attempt 1 of 3 failed with rate_limited; retrying in 4.00 s" in caplog.text
    assert "gave up after 3 attempts" in caplog.text
    assert all(r.name == "imagegen.providers" for r in caplog.records)
    assert "PROMPT-MUST-NOT-BE-LOGGED" not in caplog.text


# --- concurrency cap and rate limit ------------------------------------------------------------


def test_the_concurrency_cap_holds_for_twenty_concurrent_calls() -> None:
    probe = ConcurrencyProbe(work_s=1.0)
    h = Harness(probe, concurrency=3)

    async def burst() -> None:
        await asyncio.gather(*(h.provider.generate(request()) for _ in range(20)))

    run_virtual(burst())
    assert probe.peak == 3
    assert len(probe.requests) == 20
    assert sorted(probe.starts)[-1] == pytest.approx(
        6.0, abs=TICK
    )  # 20 calls, 3 at a time, 1 s each


def test_a_call_sleeping_before_its_retry_does_not_hold_a_slot() -> None:
    probe = ConcurrencyProbe(work_s=0.1)
    probe.fail_next(RateLimited("slow down", retry_after=5.0))
    provider = ResilientProvider(probe, ResiliencePolicy(concurrency=1))  # real asyncio.sleep

    async def two_calls() -> None:
        first = asyncio.create_task(provider.generate(request("first")))
        await asyncio.sleep(0.5)  # the first call is now sleeping before its retry
        await provider.generate(request("second"))
        await first

    run_virtual(two_calls())
    assert [r.prompt for r in probe.requests] == ["first", "second", "first"]
    assert probe.starts == pytest.approx([0.0, 0.5, 5.1], abs=TICK)


def test_the_rate_limit_spaces_the_attempts_evenly() -> None:
    probe = ConcurrencyProbe(work_s=0.0)
    h = Harness(probe, rate_per_second=2.0, concurrency=10)

    async def burst() -> None:
        await asyncio.gather(*(h.provider.generate(request()) for _ in range(5)))

    run_virtual(burst())
    assert probe.starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0], abs=TICK)


def test_the_rate_limit_allows_a_configured_burst() -> None:
    probe = ConcurrencyProbe(work_s=0.0)
    h = Harness(probe, rate_per_second=2.0, rate_burst=2, concurrency=10)

    async def burst() -> None:
        await asyncio.gather(*(h.provider.generate(request()) for _ in range(5)))

    run_virtual(burst())
    assert probe.starts == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5], abs=TICK)


def test_every_retry_attempt_takes_a_rate_limit_token_too() -> None:
    probe = ConcurrencyProbe(work_s=0.0)
    probe.fail_next(RateLimited("again", retry_after=0.0))
    h = Harness(probe, rate_per_second=1.0)
    run_virtual(h.provider.generate(request()))
    assert probe.starts == pytest.approx([0.0, 1.0], abs=TICK)


def test_one_provider_works_from_several_event_loops() -> None:
    probe = ConcurrencyProbe(work_s=1.0)
    h = Harness(probe, concurrency=2, rate_per_second=100.0)

    async def burst() -> None:
        await asyncio.gather(*(h.provider.generate(request()) for _ in range(4)))

    run_virtual(burst())
    run_virtual(burst())  # a new loop: no "bound to a different event loop" error
    assert probe.peak == 2
    assert len(probe.requests) == 8


# --- circuit breaker ---------------------------------------------------------------------------


async def test_the_circuit_opens_after_the_threshold_and_fails_fast_without_calling() -> None:
    h = Harness(max_attempts=1, failure_threshold=3, reset_timeout_s=30.0)
    await h.fail(3, ProviderUnavailable("503"))
    assert h.provider.circuit.state is CircuitState.OPEN

    h.clock.advance(10)
    with pytest.raises(ProviderUnavailable) as raised:
        await h.provider.generate(request())
    assert "circuit open, retry in 20 s" in raised.value.message
    assert raised.value.details["circuit"] == "open"
    assert raised.value.details["retry_in_s"] == 20
    assert len(h.inner.requests) == 3  # the inner provider was not called


async def test_after_the_reset_timeout_one_trial_goes_through_and_success_closes() -> None:
    h = Harness(max_attempts=1, failure_threshold=2, reset_timeout_s=30.0)
    await h.fail(2, ProviderUnavailable("503"))
    h.clock.advance(30)
    before = h.provider.circuit
    assert before.state is CircuitState.HALF_OPEN

    await h.provider.generate(request())  # the trial succeeds
    after = h.provider.circuit
    assert after.state is CircuitState.CLOSED
    assert after.consecutive_failures == 0
    await h.provider.generate(request())
    assert len(h.inner.requests) == 4


async def test_a_failed_trial_opens_the_circuit_again_for_a_full_timeout() -> None:
    h = Harness(max_attempts=1, failure_threshold=2, reset_timeout_s=30.0)
    await h.fail(2, ProviderUnavailable("503"))
    h.clock.advance(31)
    await h.fail(1, ProviderUnavailable("still 503"))  # the trial
    assert len(h.inner.requests) == 3
    snapshot = h.provider.circuit
    assert snapshot.state is CircuitState.OPEN
    assert snapshot.retry_in_s == pytest.approx(30.0, abs=TICK)
    h.clock.advance(29)
    await h.fail(1)  # fails fast
    assert len(h.inner.requests) == 3


def test_while_half_open_only_one_trial_call_is_in_flight() -> None:
    h = Harness(max_attempts=1, failure_threshold=1, reset_timeout_s=30.0)

    async def scenario() -> list[str]:
        await h.fail(1, ProviderUnavailable("503"))
        h.clock.advance(30)
        h.inner.delay_next(2.0)  # the trial takes a while
        trial = asyncio.create_task(h.provider.generate(request("trial")))
        await asyncio.sleep(0.5)
        outcomes = []
        for _ in range(3):
            try:
                await h.provider.generate(request("impatient"))
                outcomes.append("passed")
            except ProviderUnavailable as exc:
                outcomes.append(exc.details["circuit"])
        await trial
        await h.provider.generate(request("after"))
        return outcomes

    assert run_virtual(scenario()) == ["half-open"] * 3
    assert [r.prompt for r in h.inner.requests] == [SECRET_PROMPT, "trial", "after"]
    assert h.provider.circuit.state is CircuitState.CLOSED


def test_a_cancelled_trial_lets_the_next_call_be_the_trial() -> None:
    h = Harness(max_attempts=1, failure_threshold=1, reset_timeout_s=30.0)

    async def scenario() -> None:
        await h.fail(1, ProviderUnavailable("503"))
        h.clock.advance(30)
        h.inner.delay_next(10.0)
        trial = asyncio.create_task(h.provider.generate(request("trial")))
        await asyncio.sleep(1)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial
        assert h.provider.circuit.state is CircuitState.HALF_OPEN
        await h.provider.generate(request("next trial"))

    run_virtual(scenario())
    assert h.provider.circuit.state is CircuitState.CLOSED


@pytest.mark.parametrize(
    "error",
    [
        ContentPolicyViolation("refused", stage="input"),
        ContentPolicyViolation("refused", stage="output"),
        ProviderRejected("400"),
        AuthenticationFailed("401"),
        InvalidParameter("bad"),
    ],
    ids=lambda e: f"{e.code}",
)
async def test_refusals_never_open_the_circuit(error: ImageGenError) -> None:
    h = Harness(max_attempts=1, failure_threshold=2)
    for _ in range(10):
        h.inner.fail_next(error)
    await h.fail(10)
    assert h.provider.circuit.state is CircuitState.CLOSED
    assert h.provider.circuit.consecutive_failures == 0
    await h.provider.generate(request())
    assert len(h.inner.requests) == 11


async def test_a_refusal_between_failures_neither_counts_nor_resets_the_streak() -> None:
    h = Harness(max_attempts=1, failure_threshold=3)
    await h.fail(2, ProviderUnavailable("503"))
    await h.fail(1, ContentPolicyViolation("refused"))
    assert h.provider.circuit.consecutive_failures == 2
    await h.fail(1, ProviderUnavailable("503"))
    assert h.provider.circuit.state is CircuitState.OPEN


async def test_protocol_errors_and_exhausted_rate_limits_count_as_failures() -> None:
    h = Harness(max_attempts=1, failure_threshold=2)
    await h.fail(1, ProviderProtocolError("not an image"))
    await h.fail(1, RateLimited("429", retry_after=1.0))
    assert h.provider.circuit.state is CircuitState.OPEN


async def test_a_success_resets_the_failure_streak() -> None:
    h = Harness(max_attempts=1, failure_threshold=3)
    await h.fail(2, ProviderUnavailable("503"))
    await h.provider.generate(request())
    await h.fail(2, ProviderUnavailable("503"))
    assert h.provider.circuit.state is CircuitState.CLOSED
    assert h.provider.circuit.consecutive_failures == 2


async def test_a_call_that_retried_and_failed_counts_as_one_failure() -> None:
    h = Harness(max_attempts=3, failure_threshold=2)
    for _ in range(3):
        h.inner.fail_next(ProviderUnavailable("503"))
    with pytest.raises(ProviderUnavailable):
        await h.provider.generate(request())
    assert len(h.inner.requests) == 3
    assert h.provider.circuit.consecutive_failures == 1
    assert h.provider.circuit.state is CircuitState.CLOSED


async def test_a_call_that_recovered_after_retries_is_a_success() -> None:
    h = Harness(max_attempts=3, failure_threshold=1)
    h.inner.fail_next(ProviderUnavailable("503"))
    await h.provider.generate(request())
    assert h.provider.circuit.state is CircuitState.CLOSED


# --- resume and health -------------------------------------------------------------------------


async def test_resume_is_retried_and_guarded_by_the_same_breaker() -> None:
    h = Harness(max_attempts=2, failure_threshold=1)
    h.inner.fail_next(ProviderUnavailable("503"))
    await h.provider.resume("job-7", request())
    assert h.inner.resumed == ["job-7", "job-7"]
    assert len(h.sleep.calls) == 1

    h.inner.fail_next(ProviderUnavailable("503"))
    h.inner.fail_next(ProviderUnavailable("503"))
    with pytest.raises(ProviderUnavailable):
        await h.provider.resume("job-8", request())
    with pytest.raises(ProviderUnavailable, match="circuit open"):
        await h.provider.resume("job-9", request())
    assert "job-9" not in h.inner.resumed


async def test_health_passes_through_and_reports_the_circuit_state() -> None:
    h = Harness(max_attempts=1, failure_threshold=1, reset_timeout_s=30.0)
    health = await h.provider.health()
    assert health.ok
    assert health.provider == "scripted"
    assert health.detail == "scripted; circuit closed"

    await h.fail(1, ProviderUnavailable("503"))
    health = await h.provider.health()
    assert health.ok  # the provider answers its health check; calls are still refused
    assert health.detail == "scripted; circuit open, retry in 30 s (1 consecutive failures)"
    h.clock.advance(30)
    assert (await h.provider.health()).detail.endswith("circuit half-open (next call is a trial)")


def test_a_hanging_health_check_reports_not_ok() -> None:
    class Hanging(ScriptedProvider):
        async def health(self) -> ProviderHealth:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    h = Harness(Hanging("hanging"), attempt_timeout_s=2.0)
    health = run_virtual(h.provider.health())
    assert not health.ok
    assert health.detail == "no answer within 2 s; circuit closed"


# --- policy ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"concurrency": 0},
        {"base_delay_s": -1.0},
        {"max_delay_s": float("inf")},
        {"rate_per_second": 0.0},
        {"reset_timeout_s": 0.0},
        {"attempt_timeout_s": -5.0},
        {"failure_threshold": 0},
        {"rate_burst": 0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ResiliencePolicy(**bad)
