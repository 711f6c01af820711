"""The fallback chain: which other models to try when a provider is down, and when not to.

Configured as a mapping from a model reference to the references to try after it, in order
(``Settings.fallbacks``)::

    {"replicate/black-forest-labs/flux-1.1-pro": ["openai/gpt-image-2"],
     "stability": ["openai/gpt-image-2", "local"]}

A reference is ``"provider/model"`` (split at the *first* slash: Replicate's model names have
one of their own) or a bare ``"provider"``. As a key, a bare provider applies to every model of
that provider; as a target it means that provider's default model (the catalog resolves it).
For a call, the exact key's alternatives come first, then the provider-wide ones; duplicates
and the model itself are dropped. The chain is *not* transitive: ``A → B`` and ``B → C`` give
``A`` the alternatives ``[B]`` only, so what is tried is what the mapping says.

When to fall back (``should_fall_back``):

=====================================================  =======  ====================================
error                                                  falls    why
                                                       back?
=====================================================  =======  ====================================
``ProviderUnavailable`` (incl. an open circuit)        yes      the provider is down; another
                                                                may not be
``RateLimited`` (reaches here after the retries)       yes      the provider will not serve us now
``ContentPolicyViolation``                             never    the *prompt* was refused; shopping
                                                                it to a laxer provider is exactly
                                                                what a policy must not allow
``AuthenticationFailed``                               no       a configuration fault to fix, not
                                                                to hide behind another provider
``ProviderRejected``, ``InvalidInput``                 no       the request is at fault: another
                                                                provider would refuse it too
``ProviderProtocolError``                              no       the provider answered success (and
                                                                probably billed); one malformed
                                                                body is not an outage. Repeated
                                                                ones open the circuit, and then the
                                                                call is ``ProviderUnavailable``
anything else (bugs, cancellation)                     no
=====================================================  =======  ====================================

Pure application logic: no framework, no clock, no I/O beyond the ``attempt`` it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import attrs

from imagegen.domain.errors import (
    ConfigurationError,
    ImageGenError,
    ProviderUnavailable,
    RateLimited,
)

log = logging.getLogger("imagegen.providers")

T = TypeVar("T")


@attrs.frozen
class ModelRef:
    """``provider`` and, optionally, ``model`` (None: the provider's default model)."""

    provider: str
    model: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        """``"openai/gpt-image-2"``, ``"replicate/black-forest-labs/flux-1.1-pro"`` (split at
        the first slash) or ``"local"``; raises ``ConfigurationError`` for anything else."""
        if not isinstance(ref, str):
            raise ConfigurationError(f"A model reference must be a string, not {ref!r}.")
        provider, slash, model = ref.strip().partition("/")
        if not provider or (slash and not model) or any(c.isspace() for c in ref.strip()):
            raise ConfigurationError(
                f"{ref!r} is not a model reference: use 'provider/model' or 'provider'.",
                reference=ref,
            )
        return cls(provider, model or None)

    def __str__(self) -> str:
        return self.provider if self.model is None else f"{self.provider}/{self.model}"


def should_fall_back(error: BaseException) -> bool:
    """True when another model may succeed where this one failed (see the module table):
    the provider is unavailable (an open circuit included) or still rate-limiting us."""
    return isinstance(error, ProviderUnavailable | RateLimited)


class FallbackChain:
    """The alternatives of each model, from a mapping like ``Settings.fallbacks``.

    The mapping is checked when the chain is built: a malformed reference is a
    ``ConfigurationError`` at start-up, not at the first outage.
    """

    def __init__(self, fallbacks: Mapping[str, Sequence[str]] | None = None) -> None:
        self._table: dict[ModelRef, tuple[ModelRef, ...]] = {}
        for key, targets in (fallbacks or {}).items():
            if isinstance(targets, str):
                raise ConfigurationError(
                    f"The fallbacks of {key!r} must be a list of model references, "
                    f"not the string {targets!r}.",
                    reference=key,
                )
            self._table[ModelRef.parse(key)] = tuple(ModelRef.parse(t) for t in targets)

    def __bool__(self) -> bool:
        return any(self._table.values())

    def alternatives(self, provider: str, model: str | None = None) -> tuple[ModelRef, ...]:
        """What to try, in order, when ``provider``/``model`` fails with an error that
        ``should_fall_back``: the exact entry's targets, then the provider-wide entry's;
        without duplicates or the model itself."""
        primary = ModelRef(provider, model)
        found: list[ModelRef] = []
        for key in (primary, ModelRef(provider)):
            for target in self._table.get(key, ()):
                if target != primary and target not in found:
                    found.append(target)
        return tuple(found)

    def candidates(self, provider: str, model: str | None = None) -> tuple[ModelRef, ...]:
        """The model itself, then its alternatives."""
        return (ModelRef(provider, model), *self.alternatives(provider, model))

    async def run(
        self,
        provider: str,
        model: str | None,
        attempt: Callable[[ModelRef], Awaitable[T]],
        *,
        on_fallback: Callable[[ModelRef, BaseException, ModelRef], Awaitable[None]] | None = None,
    ) -> T:
        """``attempt`` each candidate in turn until one succeeds. Moves on only when
        ``should_fall_back(error)`` and a candidate is left; otherwise raises that error (so
        when every candidate fails, the last one's error). ``on_fallback(failed, error, next)``
        runs before each move, e.g. to record a warning on the generation."""
        return await run_with_fallback(
            self.candidates(provider, model), attempt, on_fallback=on_fallback
        )


async def run_with_fallback(
    candidates: Iterable[ModelRef],
    attempt: Callable[[ModelRef], Awaitable[T]],
    *,
    on_fallback: Callable[[ModelRef, BaseException, ModelRef], Awaitable[None]] | None = None,
) -> T:
    """``FallbackChain.run`` over an explicit list of candidates (at least one)."""
    queue = list(candidates)
    if not queue:
        raise ValueError("run_with_fallback needs at least one candidate")
    for index, ref in enumerate(queue):
        try:
            return await attempt(ref)
        except Exception as error:
            if index + 1 == len(queue) or not should_fall_back(error):
                raise
            following = queue[index + 1]
            code = error.code if isinstance(error, ImageGenError) else type(error).__name__
            log.warning(
                "%s failed with %s; falling back to %s",
                ref,
                code,
                following,
                extra={"failed": str(ref), "error_code": code, "fallback": str(following)},
            )
            if on_fallback is not None:
                await on_fallback(ref, error, following)
    raise AssertionError("unreachable: the last candidate returns or raises")


__all__ = ["FallbackChain", "ModelRef", "run_with_fallback", "should_fall_back"]
