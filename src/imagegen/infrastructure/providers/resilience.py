"""The resilience layer: ``ResilientProvider`` wraps any ``ImageProvider`` with a per-attempt
timeout, retries with backoff that honour ``Retry-After``, a concurrency cap, a rate limit and
a circuit breaker. It is an ``ImageProvider`` itself (same ``name``), so the use cases do not
know it is there; the composition root wraps each provider once.

One call, from the outside in::

    circuit breaker        open → fail fast with ProviderUnavailable("… circuit open, retry in N s")
    └── retries (tenacity) RateLimited / ProviderUnavailable, sleeping *between* attempts
        └── concurrency cap (asyncio.Semaphore), held by an attempt, never during a sleep
            └── rate limit (aiolimiter), one token per attempt started
                └── attempt timeout (asyncio.timeout) → ProviderUnavailable(reason="timeout")
                    └── inner.generate(request), or inner.resume(job_id) once a job exists

The breaker sees one outcome per call (after its retries), so "5 consecutive failures" means
five calls that failed even after retrying, not five attempts of one call.

Which errors are retried (a ``generate`` is a *create*: a second attempt may be paid twice)
-----------------------------------------------------------------------------------------
================================  =========  ==================================================
error                             retried?   why
================================  =========  ==================================================
``RateLimited``                   yes        the provider refused before doing any work; we wait
                                             exactly ``retry_after`` when it says, else back
                                             off. A ``retry_after`` above
                                             ``max_retry_after_s`` gives up at once (no sleeping
                                             for an hour inside a request).
``ProviderUnavailable``           yes        5xx and connection failures: no image was made, and
                                             providers do not bill failed requests.
``ProviderUnavailable``           no, unless a timed-out request may still be running *and be
(``reason="timeout"``)            a job id   billed* at the provider; a second create could pay
                                  exists     twice. Set ``retry_timeouts=True`` to accept that.
                                             (The adapters mark their timeouts with
                                             ``reason="timeout"``; so does the attempt timeout.)
``ProviderProtocolError``         no         the provider answered "success" with a body we
                                             cannot use: the work was most likely done and
                                             billed, and the same proxy/API mismatch usually
                                             answers the same way again. It *does* count
                                             towards the circuit breaker.
``AuthenticationFailed``,         no         the caller's (or the configuration's) fault:
``ProviderRejected``,                        retrying cannot change the answer. These never
``ContentPolicyViolation``,                  count towards the breaker either.
``InvalidInput``, anything else
================================  =========  ==================================================

Once the provider has reported a job id (``request.on_job_created``), every later attempt
*resumes that job* (``inner.resume``) instead of creating a new one, so a poll that hit a 5xx
or a timeout never starts a second paid prediction. The caller's own ``on_job_created`` still
sees the id, once.

Libraries, and why
------------------
- **tenacity** (retries): the de-facto standard, maintained, typed, asyncio-native
  (``AsyncRetrying``) and composable: ``stop_any(stop_after_attempt(n), …)``, an injectable
  ``sleep`` (tests record the delays instead of waiting) and a ``before_sleep`` hook for the
  log line. Our only custom piece is the ``wait`` (``RetryAfterOrBackoff``): the provider's
  ``Retry-After`` when it gave one, else *equal-jitter* exponential backoff built from
  tenacity's own strategies — ``wait_exponential(base/2) + wait_random_exponential(base/2)``,
  i.e. a delay uniformly in ``[e/2, e]`` with ``e = min(base * 2**(attempt-1), max)``. Unlike
  full jitter it never retries instantly (a 503 storm always gets half the backoff), and it
  still spreads concurrent callers over half the window.
- **aiolimiter** (rate limit): a small, maintained, typed leaky bucket on the event loop's
  clock. ``AsyncLimiter(rate_burst, rate_burst / rate_per_second)`` starts at most
  ``rate_burst`` attempts at once and ``rate_per_second`` on average.
- **asyncio.Semaphore** (concurrency cap): the standard library's primitive is exactly this.
- **Circuit breaker: our own, ~80 lines (``CircuitBreaker`` below).** We tried the four
  maintained-or-known libraries on asyncio:

  * ``circuitbreaker`` 2.1.3: async support, but untyped (no ``py.typed``), reads
    ``time.monotonic`` directly (no clock to inject), registers breakers in a global monitor,
    lets *every* concurrent call through once half-open (we measured 5 of 5), and an excluded
    exception (a content-policy refusal) *resets* the failure count.
  * ``purgatory`` 3.0.1: asyncio-native and typed, but a message bus and unit of work for one
    counter, wall-clock ``time.time()`` (jumps with NTP, cannot be injected), also lets every
    call through half-open (5 of 5) and also resets the count on excluded exceptions.
  * ``pybreaker`` 1.4.1: its async support is Tornado's ``gen.coroutine``; wall-clock
    ``datetime.now``.
  * ``aiobreaker`` 1.2.0: unreleased since 2021, naive ``datetime.utcnow``.

  None offers an injectable clock (deterministic tests), a single trial call when half-open,
  or "neutral" outcomes (a refusal neither counts nor resets), which are the three things we
  need, so a small state machine is less code and risk than working around any of them.

Loop-bound primitives (semaphore, limiter) are created per event loop, so one provider object
works from the sync facade's private loop and from ``asyncio.run`` alike; the cap and the rate
hold per provider and per event loop. The breaker is shared by all loops.

Log lines go to the ``imagegen.providers`` logger: each retry (provider, operation, attempt,
error code, delay), giving up, and every breaker transition. They never contain the prompt,
the error's message (which may quote provider text) or any credential.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from imagegen.application.ports import (
    ImageProvider,
    ProviderHealth,
    ProviderRequest,
    ProviderResult,
)
from imagegen.domain.errors import (
    ImageGenError,
    ProviderProtocolError,
    ProviderUnavailable,
    RateLimited,
)

log = logging.getLogger("imagegen.providers")

Sleep = Callable[[float], Awaitable[None]]
MonotonicClock = Callable[[], float]

_TIMEOUT: Final = "timeout"


# --- policy ------------------------------------------------------------------------------------


def _positive(_: object, attribute: attrs.Attribute[float], value: float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number > 0, not {value!r}")


def _not_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, not {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


@attrs.frozen(kw_only=True)
class ResiliencePolicy:
    """How hard ``ResilientProvider`` tries, and how it protects the provider.

    ``max_attempts``       attempts per call (1 = no retries).
    ``base_delay_s``       backoff of the first retry (the window doubles each retry) …
    ``max_delay_s``        … up to this.
    ``max_retry_after_s``  a ``Retry-After`` longer than this gives up at once, unslept.
    ``concurrency``        attempts in flight at once.
    ``rate_per_second``    attempts started per second on average (None: no limit) …
    ``rate_burst``         … of which this many may start at once.
    ``failure_threshold``  consecutive failed calls that open the circuit.
    ``reset_timeout_s``    how long an open circuit refuses calls before one trial call.
    ``attempt_timeout_s``  longest one attempt may take (None: the adapter's own timeouts).
    ``retry_timeouts``     retry a timed-out create even without a job id (may pay twice).
    """

    max_attempts: int = attrs.field(default=4, validator=_at_least_one)
    base_delay_s: float = attrs.field(default=0.5, validator=_not_negative)
    max_delay_s: float = attrs.field(default=20.0, validator=_not_negative)
    max_retry_after_s: float = attrs.field(default=60.0, validator=_not_negative)
    concurrency: int = attrs.field(default=8, validator=_at_least_one)
    rate_per_second: float | None = attrs.field(default=None, validator=_positive)
    rate_burst: int = attrs.field(default=1, validator=_at_least_one)
    failure_threshold: int = attrs.field(default=5, validator=_at_least_one)
    reset_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    attempt_timeout_s: float | None = attrs.field(default=None, validator=_positive)
    retry_timeouts: bool = False


# --- waiting between attempts ------------------------------------------------------------------


class RetryAfterOrBackoff(wait_base):
    """tenacity ``wait``: ``RateLimited.retry_after`` when the provider gave one (exactly, as
    asked), else equal-jitter exponential backoff: uniform in ``[e/2, e]`` with
    ``e = min(base_delay_s * 2**(attempt - 1), max_delay_s)``."""

    def __init__(self, base_delay_s: float, max_delay_s: float) -> None:
        half_base, half_max = base_delay_s / 2, max_delay_s / 2
        self._backoff = wait_exponential(multiplier=half_base, max=half_max) + (
            wait_random_exponential(multiplier=half_base, max=half_max)
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return max(0.0, float(error.retry_after))
        return float(self._backoff(retry_state))


class StopOnLongRetryAfter(stop_base):
    """tenacity ``stop``: give up when the provider asks us to wait longer than ``limit_s``."""

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        return error is not None and _retry_after(error) > self._limit_s


def _retry_after(error: BaseException) -> float:
    """``retry_after`` of a ``RateLimited`` that has one, else -inf."""
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return float(error.retry_after)
    return -math.inf


def is_timeout(error: BaseException) -> bool:
    """A ``ProviderUnavailable`` raised because a request timed out (``reason="timeout"``)."""
    return isinstance(error, ProviderUnavailable) and error.details.get("reason") == _TIMEOUT


def is_retryable(error: BaseException, *, job_started: bool, retry_timeouts: bool) -> bool:
    """Whether another attempt is safe and useful (see the table in the module docstring)."""
    if isinstance(error, RateLimited):
        return True
    if isinstance(error, ProviderUnavailable):
        return job_started or retry_timeouts or not is_timeout(error)
    return False


# --- circuit breaker ---------------------------------------------------------------------------


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # the provider looks down: counts towards opening
    NEUTRAL = "neutral"  # the provider answered, the caller was refused: neither counts nor resets


def classify(error: BaseException) -> Outcome:
    """A failure is one that says the provider is down: unavailable, still rate-limited after
    the retries, or answering garbage. Refusals (auth, rejected, content policy), invalid input,
    cancellation and bugs are neutral."""
    if isinstance(error, ProviderUnavailable | RateLimited | ProviderProtocolError):
        return Outcome.FAILURE
    return Outcome.NEUTRAL


@attrs.frozen
class CircuitSnapshot:
    state: CircuitState
    consecutive_failures: int
    retry_in_s: float | None = None  # open: seconds until a trial call is let through
    trial_in_flight: bool = False

    def describe(self) -> str:
        failures = f"{self.consecutive_failures} consecutive failures"
        if self.state is CircuitState.OPEN:
            return f"circuit open, retry in {math.ceil(self.retry_in_s or 0)} s ({failures})"
        if self.state is CircuitState.HALF_OPEN:
            trial = "a trial call is in flight" if self.trial_in_flight else "next call is a trial"
            return f"circuit half-open ({trial})"
        return "circuit closed" + (f" ({failures})" if self.consecutive_failures else "")


class CircuitBreaker:
    """Closed → (``failure_threshold`` consecutive failed calls) → open → (``reset_timeout_s``)
    → half-open: exactly one trial call goes through, others fail fast; its success closes the
    circuit, its failure opens it again, a neutral outcome lets the next call be the trial.

    While open or half-open only the trial's outcome changes the state: calls admitted before
    the circuit opened and finishing later are ignored, so stragglers cannot flap it.
    ``clock`` is monotonic seconds (``time.monotonic`` by default; inject one in tests).
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        reset_timeout_s: float,
        clock: MonotonicClock = time.monotonic,
    ) -> None:
        self._name = name
        self._threshold = failure_threshold
        self._reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def snapshot(self) -> CircuitSnapshot:
        self._maybe_half_open()
        retry_in = None
        if self._state is CircuitState.OPEN:
            retry_in = max(0.0, self._opened_at + self._reset_timeout_s - self._clock())
        return CircuitSnapshot(self._state, self._failures, retry_in, self._trial_in_flight)

    def before_call(self) -> bool:
        """Admit a call (True: it is the half-open trial) or raise ``ProviderUnavailable``."""
        self._maybe_half_open()
        if self._state is CircuitState.CLOSED:
            return False
        if self._state is CircuitState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            log.info("provider %s: circuit half-open, letting one trial call through", self._name)
            return True
        snapshot = self.snapshot()
        retry_in = math.ceil(snapshot.retry_in_s or 1)
        detail = "circuit open" if snapshot.state is CircuitState.OPEN else "circuit half-open"
        raise ProviderUnavailable(
            f"{self._name} is failing; {detail}, retry in {retry_in} s.",
            provider=self._name,
            circuit=snapshot.state.value,
            retry_in_s=retry_in,
        )

    def after_call(self, outcome: Outcome, *, trial: bool) -> None:
        if trial:
            self._trial_in_flight = False
            if outcome is Outcome.SUCCESS:
                self._close()
            elif outcome is Outcome.FAILURE:
                self._open()
            return
        if self._state is not CircuitState.CLOSED:
            return
        if outcome is Outcome.SUCCESS:
            self._failures = 0
        elif outcome is Outcome.FAILURE:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()

    def _maybe_half_open(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self._reset_timeout_s
        ):
            self._state = CircuitState.HALF_OPEN

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        log.warning(
            "provider %s: circuit opened after %d consecutive failures; refusing calls for %g s",
            self._name,
            self._failures,
            self._reset_timeout_s,
        )

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._failures = 0
        log.info("provider %s: circuit closed, the trial call succeeded", self._name)


# --- the wrapper -------------------------------------------------------------------------------


@attrs.define
class _Gates:
    semaphore: asyncio.Semaphore
    limiter: AsyncLimiter | None


@attrs.define
class _Job:
    """Remembers the job id the provider reported during this call, and forwards it."""

    forward: Callable[[str], Awaitable[None]] | None
    id: str | None = None

    async def created(self, job_id: str) -> None:
        first = self.id is None
        self.id = job_id
        if first and self.forward is not None:
            await self.forward(job_id)


class ResilientProvider:
    """``inner`` with timeouts, retries, a concurrency cap, a rate limit and a circuit breaker
    (see the module docstring). ``sleep`` waits between attempts and ``clock`` (monotonic
    seconds) drives the breaker: inject both in tests."""

    def __init__(
        self,
        inner: ImageProvider,
        policy: ResiliencePolicy,
        *,
        clock: MonotonicClock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._sleep = sleep
        self._breaker = CircuitBreaker(
            inner.name,
            failure_threshold=policy.failure_threshold,
            reset_timeout_s=policy.reset_timeout_s,
            clock=clock,
        )
        self._gates_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Gates] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def inner(self) -> ImageProvider:
        return self._inner

    @property
    def policy(self) -> ResiliencePolicy:
        return self._policy

    @property
    def circuit(self) -> CircuitSnapshot:
        return self._breaker.snapshot()

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        job = _Job(request.on_job_created)
        tracked = attrs.evolve(request, on_job_created=job.created)

        async def attempt() -> ProviderResult:
            if job.id is not None:  # never create a second (paid) job: resume the first
                return await self._inner.resume(job.id, tracked)
            return await self._inner.generate(tracked)

        return await self._protected("generate", attempt, job)

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        job = _Job(request.on_job_created, id=job_id)

        async def attempt() -> ProviderResult:
            return await self._inner.resume(job_id, request)

        return await self._protected("resume", attempt, job)

    async def health(self) -> ProviderHealth:
        """The inner provider's health, with the circuit's state appended to ``detail``. Not
        gated by the breaker (it is how an operator sees whether the provider is back)."""
        timeout = self._policy.attempt_timeout_s
        try:
            async with asyncio.timeout(timeout):
                health = await self._inner.health()
        except TimeoutError:
            health = ProviderHealth(self.name, ok=False, detail=f"no answer within {timeout:g} s")
        circuit = self._breaker.snapshot().describe()
        detail = f"{health.detail}; {circuit}" if health.detail else circuit
        return attrs.evolve(health, detail=detail)

    # --- internals ------------------------------------------------------------------------------

    async def _protected(
        self, operation: str, attempt: Callable[[], Awaitable[ProviderResult]], job: _Job
    ) -> ProviderResult:
        trial = self._breaker.before_call()
        outcome = Outcome.NEUTRAL
        try:
            result = await self._with_retries(operation, attempt, job)
        except BaseException as exc:
            outcome = classify(exc)
            raise
        else:
            outcome = Outcome.SUCCESS
            return result
        finally:
            self._breaker.after_call(outcome, trial=trial)

    async def _with_retries(
        self, operation: str, attempt: Callable[[], Awaitable[ProviderResult]], job: _Job
    ) -> ProviderResult:
        policy = self._policy
        attempts = 0

        def retryable(error: BaseException) -> bool:
            return is_retryable(
                error, job_started=job.id is not None, retry_timeouts=policy.retry_timeouts
            )

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "provider %s: %s attempt %d of %d failed with %s; retrying in %.2f s",
                self.name,
                operation,
                state.attempt_number,
                policy.max_attempts,
                _code(error),
                delay,
                extra={
                    "provider": self.name,
                    "operation": operation,
                    "attempt": state.attempt_number,
                    "error_code": _code(error),
                    "retry_delay_s": delay,
                },
            )

        async def one_attempt() -> ProviderResult:
            nonlocal attempts
            attempts += 1
            return await self._attempt(attempt, job)

        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_any(
                stop_after_attempt(policy.max_attempts),
                StopOnLongRetryAfter(policy.max_retry_after_s),
            ),
            wait=RetryAfterOrBackoff(policy.base_delay_s, policy.max_delay_s),
            retry=retry_if_exception(retryable),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            result: ProviderResult = await retrying(one_attempt)
        except ImageGenError as exc:
            if _retry_after(exc) > policy.max_retry_after_s:
                log.warning(
                    "provider %s: %s was asked to retry after %g s (more than %g s); giving up",
                    self.name,
                    operation,
                    _retry_after(exc),
                    policy.max_retry_after_s,
                )
            elif attempts > 1 and retryable(exc):
                log.warning(
                    "provider %s: %s gave up after %d attempts, last error %s",
                    self.name,
                    operation,
                    attempts,
                    exc.code,
                )
            raise
        return result

    async def _attempt(
        self, attempt: Callable[[], Awaitable[ProviderResult]], job: _Job
    ) -> ProviderResult:
        gates = self._gates()
        async with gates.semaphore:
            if gates.limiter is not None:
                await gates.limiter.acquire()
            timeout = self._policy.attempt_timeout_s
            if timeout is None:
                return await attempt()
            scope = asyncio.timeout(timeout)
            try:
                async with scope:
                    return await attempt()
            except TimeoutError:
                if not scope.expired():
                    raise
                raise ProviderUnavailable(
                    f"{self.name} did not answer within {timeout:g} seconds.",
                    provider=self.name,
                    reason=_TIMEOUT,
                    job_id=job.id,
                ) from None

    def _gates(self) -> _Gates:
        loop = asyncio.get_running_loop()
        gates = self._gates_by_loop.get(loop)
        if gates is None:
            policy = self._policy
            limiter = None
            if policy.rate_per_second is not None:
                limiter = AsyncLimiter(
                    policy.rate_burst, policy.rate_burst / policy.rate_per_second
                )
            gates = self._gates_by_loop[loop] = _Gates(
                asyncio.Semaphore(policy.concurrency), limiter
            )
        return gates


def _code(error: BaseException | None) -> str:
    if isinstance(error, ImageGenError):
        return error.code
    return type(error).__name__ if error is not None else "none"


__all__ = [
    "CircuitBreaker",
    "CircuitSnapshot",
    "CircuitState",
    "Outcome",
    "ResiliencePolicy",
    "ResilientProvider",
    "RetryAfterOrBackoff",
    "StopOnLongRetryAfter",
    "classify",
    "is_retryable",
    "is_timeout",
]
