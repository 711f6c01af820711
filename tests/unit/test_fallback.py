"""The fallback chain: which models to try after a failure, and which failures allow it."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen.application.fallback import (
    FallbackChain,
    ModelRef,
    run_with_fallback,
    should_fall_back,
)
from imagegen.application.ports import ProviderRequest
from imagegen.domain.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ContentPolicyViolation,
    ImageGenError,
    InvalidParameter,
    InvalidPrompt,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    UnknownModel,
)
from imagegen.domain.values import ImageFormat, ImageSize
from imagegen.infrastructure.providers.resilience import ResiliencePolicy, ResilientProvider
from imagegen.testing import ScriptedProvider

FLUX = "replicate/black-forest-labs/flux-1.1-pro"
CHAIN = FallbackChain(
    {
        FLUX: ["openai/gpt-image-2", "stability/sd3.5-large"],
        "replicate": ["stability/sd3.5-large", "local"],
        "openai/gpt-image-2": ["local/abstract-v1"],
    }
)


# --- references --------------------------------------------------------------------------------


def test_a_reference_splits_at_the_first_slash() -> None:
    assert ModelRef.parse(FLUX) == ModelRef("replicate", "black-forest-labs/flux-1.1-pro")
    assert ModelRef.parse("openai/gpt-image-2") == ModelRef("openai", "gpt-image-2")
    assert ModelRef.parse("local") == ModelRef("local", None)
    assert str(ModelRef.parse(FLUX)) == FLUX
    assert str(ModelRef("local")) == "local"


@pytest.mark.parametrize("bad", ["", "/gpt-image-2", "openai/", "open ai/x", "openai/gpt image"])
def test_a_malformed_reference_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        ModelRef.parse(bad)


def test_a_malformed_mapping_fails_when_the_chain_is_built() -> None:
    with pytest.raises(ConfigurationError):
        FallbackChain({FLUX: ["openai/"]})
    with pytest.raises(ConfigurationError, match="must be a list"):
        FallbackChain({FLUX: "openai/gpt-image-2"})  # a str is a Sequence[str], too


# --- resolving alternatives --------------------------------------------------------------------


def test_exact_alternatives_come_first_then_provider_wide_ones_without_duplicates() -> None:
    assert CHAIN.alternatives("replicate", "black-forest-labs/flux-1.1-pro") == (
        ModelRef("openai", "gpt-image-2"),
        ModelRef("stability", "sd3.5-large"),
        ModelRef("local"),
    )


def test_a_provider_wide_entry_covers_every_model_of_that_provider() -> None:
    assert CHAIN.alternatives("replicate", "stability-ai/sdxl") == (
        ModelRef("stability", "sd3.5-large"),
        ModelRef("local"),
    )


def test_the_chain_is_not_transitive() -> None:
    # FLUX → gpt-image-2 and gpt-image-2 → local/abstract-v1, but FLUX's list says what it says
    assert ModelRef("local", "abstract-v1") not in CHAIN.alternatives(
        "replicate", "black-forest-labs/flux-1.1-pro"
    )


def test_a_model_never_falls_back_to_itself() -> None:
    chain = FallbackChain({"openai/gpt-image-2": ["openai/gpt-image-2", "openai/gpt-image-1"]})
    assert chain.alternatives("openai", "gpt-image-2") == (ModelRef("openai", "gpt-image-1"),)


def test_candidates_start_with_the_model_itself() -> None:
    assert CHAIN.candidates("openai", "gpt-image-2") == (
        ModelRef("openai", "gpt-image-2"),
        ModelRef("local", "abstract-v1"),
    )


def test_a_model_without_an_entry_has_no_alternatives() -> None:
    assert CHAIN.alternatives("stability", "sd3.5-large") == ()
    assert FallbackChain().candidates("local", "abstract-v1") == (ModelRef("local", "abstract-v1"),)
    assert not FallbackChain()
    assert not FallbackChain({"local": []})
    assert CHAIN


# --- when to fall back -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ProviderUnavailable("503"), True),
        (ProviderUnavailable("no answer", reason="timeout"), True),
        (RateLimited("429", retry_after=3600.0), True),
        (RateLimited("429"), True),
        (ContentPolicyViolation("refused", stage="input"), False),
        (ContentPolicyViolation("refused", stage="output"), False),
        (AuthenticationFailed("401"), False),
        (ProviderRejected("400"), False),
        (ProviderProtocolError("not an image"), False),
        (InvalidParameter("bad"), False),
        (InvalidPrompt("empty"), False),
        (UnknownModel("nope"), False),
        (RuntimeError("a bug"), False),
    ],
    ids=lambda v: getattr(v, "code", type(v).__name__) if not isinstance(v, bool) else str(v),
)
def test_should_fall_back(error: BaseException, expected: bool) -> None:
    assert should_fall_back(error) is expected


async def test_an_open_circuit_falls_back() -> None:
    inner = ScriptedProvider("replicate")
    provider = ResilientProvider(inner, ResiliencePolicy(max_attempts=1, failure_threshold=1))
    inner.fail_next(ProviderUnavailable("503"))
    request = ProviderRequest(
        model="m", prompt="a fox", n=1, size=ImageSize(8, 8), format=ImageFormat.PNG
    )
    with pytest.raises(ProviderUnavailable):
        await provider.generate(request)
    with pytest.raises(ProviderUnavailable, match="circuit open") as raised:
        await provider.generate(request)
    assert should_fall_back(raised.value)


# --- running the chain -------------------------------------------------------------------------


class Attempts:
    """An ``attempt`` callable that fails or succeeds per model, and records the order."""

    def __init__(self, **outcomes: BaseException) -> None:
        self.outcomes = outcomes
        self.tried: list[str] = []

    async def __call__(self, ref: ModelRef) -> str:
        self.tried.append(str(ref))
        error = self.outcomes.get(ref.provider)
        if error is not None:
            raise error
        return f"image from {ref}"


async def test_an_unavailable_provider_falls_back_to_the_next_candidate() -> None:
    attempts = Attempts(replicate=ProviderUnavailable("503"))
    result = await CHAIN.run("replicate", "black-forest-labs/flux-1.1-pro", attempts)
    assert result == "image from openai/gpt-image-2"
    assert attempts.tried == [FLUX, "openai/gpt-image-2"]


async def test_a_content_policy_violation_never_falls_back() -> None:
    refusal = ContentPolicyViolation("refused", stage="input")
    attempts = Attempts(replicate=refusal)
    with pytest.raises(ContentPolicyViolation) as raised:
        await CHAIN.run("replicate", "black-forest-labs/flux-1.1-pro", attempts)
    assert raised.value is refusal
    assert attempts.tried == [FLUX]


async def test_a_refusal_from_a_fallback_stops_the_chain_there() -> None:
    attempts = Attempts(
        replicate=RateLimited("429", retry_after=600.0), openai=ProviderRejected("400")
    )
    with pytest.raises(ProviderRejected):
        await CHAIN.run("replicate", "black-forest-labs/flux-1.1-pro", attempts)
    assert attempts.tried == [FLUX, "openai/gpt-image-2"]


async def test_when_every_candidate_is_down_the_last_error_is_raised() -> None:
    last = ProviderUnavailable("local is down too")
    attempts = Attempts(
        replicate=ProviderUnavailable("503"),
        openai=ProviderUnavailable("503"),
        stability=RateLimited("429"),
        local=last,
    )
    with pytest.raises(ProviderUnavailable) as raised:
        await CHAIN.run("replicate", "black-forest-labs/flux-1.1-pro", attempts)
    assert raised.value is last
    assert attempts.tried == [FLUX, "openai/gpt-image-2", "stability/sd3.5-large", "local"]


async def test_without_alternatives_the_original_error_is_raised() -> None:
    down = ProviderUnavailable("503")
    attempts = Attempts(stability=down)
    with pytest.raises(ProviderUnavailable) as raised:
        await CHAIN.run("stability", "sd3.5-large", attempts)
    assert raised.value is down


async def test_each_fallback_is_reported_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, str, str]] = []

    async def on_fallback(failed: ModelRef, error: BaseException, following: ModelRef) -> None:
        assert isinstance(error, ImageGenError)
        seen.append((str(failed), error.code, str(following)))

    attempts = Attempts(replicate=ProviderUnavailable("503"), openai=RateLimited("429"))
    with caplog.at_level("WARNING", logger="imagegen.providers"):
        await CHAIN.run(
            "replicate", "black-forest-labs/flux-1.1-pro", attempts, on_fallback=on_fallback
        )
    assert seen == [
        (FLUX, "provider_unavailable", "openai/gpt-image-2"),
        ("openai/gpt-image-2", "rate_limited", "stability/sd3.5-large"),
    ]
    assert f"{FLUX} failed with provider_unavailable; falling back to openai/gpt-image-2" in (
        caplog.text
    )


async def test_running_without_candidates_is_a_programming_error() -> None:
    async def never(ref: ModelRef) -> Any:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="at least one candidate"):
        await run_with_fallback([], never)
