"""The model catalog, and pricing a request before it runs."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from imagegen.application.commands import GenerateCommand, GenerationPolicy
from imagegen.application.ports import ModelCatalog
from imagegen.domain.models import ModelSpec
from imagegen.domain.negotiation import NegotiatedRequest
from imagegen.domain.values import Credits, Money


class ListModels:
    def __init__(self, *, catalog: ModelCatalog) -> None:
        self._catalog = catalog

    def execute(self) -> Sequence[ModelSpec]:
        return self._catalog.all()


@attrs.frozen
class Estimate:
    spec: ModelSpec
    request: NegotiatedRequest
    credits: Credits
    usd: Money | None

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.request.warnings


class EstimateCost:
    """What a generation would cost, negotiated exactly as ``GenerateImages`` would do it."""

    def __init__(self, *, catalog: ModelCatalog, policy: GenerationPolicy) -> None:
        self._catalog = catalog
        self._policy = policy

    def execute(self, command: GenerateCommand) -> Estimate:
        from imagegen.application.use_cases.generate import plan_generation

        plan = plan_generation(command, self._catalog, self._policy)
        usd = plan.spec.pricing.usd_per_image
        return Estimate(
            plan.spec,
            plan.negotiated,
            plan.estimate,
            usd * plan.negotiated.n if usd is not None else None,
        )
