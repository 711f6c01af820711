"""The model catalog, and pricing a request before it runs."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from imagegen.application.commands import GenerateCommand, GenerationPolicy
from imagegen.application.ports import ModelCatalog
from imagegen.domain.models import ModelSpec
from imagegen.domain.negotiation import NegotiatedRequest
from imagegen.domain.pricing import Quote
from imagegen.domain.values import Credits, Money


class ListModels:
    def __init__(self, *, catalog: ModelCatalog) -> None:
        self._catalog = catalog

    def execute(self) -> Sequence[ModelSpec]:
        return self._catalog.all()


@attrs.frozen
class Estimate:
    """A priced request: the model, the request as it would be sent, and its quote."""

    spec: ModelSpec
    request: NegotiatedRequest
    quote: Quote
    pricing_warnings: tuple[str, ...] = ()

    @property
    def credits(self) -> Credits:
        """What a generation would reserve (and, at most, charge)."""
        return self.quote.credits

    @property
    def usd(self) -> Money | None:
        """The provider cost we expect (None when no provider bills us)."""
        return self.quote.usd

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.request.warnings + self.pricing_warnings


def pricing_warnings(spec: ModelSpec, priced: Quote) -> tuple[str, ...]:
    """What a user should know about a price: a deprecated model, a bounded quote."""
    warnings: list[str] = []
    if spec.deprecated:
        when = f" (shutdown: {spec.shutdown_on.isoformat()})" if spec.shutdown_on else ""
        instead = f"; use {spec.replacement} instead" if spec.replacement else ""
        warnings.append(f"{spec.ref} is deprecated by its provider{when}{instead}.")
    if not priced.exact:
        warnings.append(f"The price of {spec.ref} is an upper bound: {priced.basis}.")
    return tuple(warnings)


class EstimateCost:
    """What a generation would cost, negotiated and quoted exactly as ``GenerateImages`` does
    it (``policy.usd_per_credit`` turns provider USD into whole credits per image, rounded up).
    The quote is the requested model's; a fallback chain may reserve more (``reservation``)."""

    def __init__(self, *, catalog: ModelCatalog, policy: GenerationPolicy) -> None:
        self._catalog = catalog
        self._policy = policy

    def execute(self, command: GenerateCommand) -> Estimate:
        from imagegen.application.use_cases.generate import plan_generation

        plan = plan_generation(command, self._catalog, self._policy)
        priced = plan.primary.quote
        return Estimate(plan.spec, plan.negotiated, priced, pricing_warnings(plan.spec, priced))
