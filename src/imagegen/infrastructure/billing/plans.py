"""The plan catalog: the shipped ``plans.toml`` and a user's file that overrides it.

A plans file is TOML, read and checked the way the model catalog is (same parser, same
error messages naming the file, the plan and the field)::

    schema_version = 1

    [[plans]]
    id = "pro"
    name = "Pro"
    included_images = 200
    overage = "charge"                 # or "refuse"
    overage_credits_per_image = 3      # optional: default is the model's own credit price
    max_images_per_request = 10        # optional
    allowed_models = ["local/*"]       # optional fnmatch patterns on provider/model
    allowed_operations = ["generate"]  # optional
    shared = false

A user's plan with the id of a shipped one replaces it as a whole; other ids add plans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from imagegen.domain.errors import InvalidParameter
from imagegen.domain.models import Operation
from imagegen.domain.plans import Overage, Plan
from imagegen.infrastructure.catalog.loader import _error, _parse, _read_user, _Strict

SCHEMA_VERSION = 1
SHIPPED_PLANS = "plans.toml"
_SHIPPED_NAME = f"imagegen/infrastructure/billing/{SHIPPED_PLANS}"


class PlanEntry(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    included_images: int = Field(ge=0)
    overage: Literal["refuse", "charge"]
    overage_credits_per_image: int | None = Field(default=None, ge=0)
    max_images_per_request: int | None = Field(default=None, ge=1)
    allowed_models: list[str] = Field(default_factory=list)
    allowed_operations: list[str] = Field(default_factory=list)
    shared: bool = False

    @field_validator("allowed_operations")
    @classmethod
    def _operations(cls, value: list[str]) -> list[str]:
        known = {o.value for o in Operation}
        unknown = [v for v in value if v not in known]
        if unknown:
            raise ValueError(f"unknown operation(s) {unknown}; known: {sorted(known)}")
        return value

    def to_domain(self) -> Plan:
        return Plan(
            id=self.id,
            name=self.name,
            description=self.description,
            included_images=self.included_images,
            overage=Overage(self.overage),
            overage_credits_per_image=self.overage_credits_per_image,
            max_images_per_request=self.max_images_per_request,
            allowed_models=tuple(self.allowed_models),
            allowed_operations=tuple(self.allowed_operations),
            shared=self.shared,
        )


class PlansFile(_Strict):
    schema_version: int
    plans: list[PlanEntry] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"this version of imagegen reads plans schema_version {SCHEMA_VERSION}"
            )
        return value


def _plans(file: str, raw: Mapping[str, Any]) -> list[Plan]:
    try:
        parsed = PlansFile.model_validate(raw)
    except ValidationError as error:
        raise _error(file, error, where="plans") from None
    return [entry.to_domain() for entry in parsed.plans]


class StaticPlanCatalog:
    """The ``PlanCatalog`` port over a fixed list of plans."""

    def __init__(self, plans: Sequence[Plan]) -> None:
        self._plans = {plan.id: plan for plan in plans}

    def get(self, plan_id: str) -> Plan:
        plan = self._plans.get(plan_id)
        if plan is None:
            known = ", ".join(sorted(self._plans)) or "none"
            raise InvalidParameter(f"No plan {plan_id!r}; the plans are: {known}.", plan=plan_id)
        return plan

    def all(self) -> Sequence[Plan]:
        return list(self._plans.values())


def load_plans(user_file: Path | None = None) -> StaticPlanCatalog:
    """The shipped plans, with ``user_file``'s replacing or adding (``IMAGEGEN_PLANS_FILE``).
    Raises ``ConfigurationError`` naming the file and the field."""
    package = resources.files("imagegen.infrastructure.billing")
    shipped = _parse(_SHIPPED_NAME, package.joinpath(SHIPPED_PLANS).read_text(encoding="utf-8"))
    plans = {plan.id: plan for plan in _plans(_SHIPPED_NAME, shipped)}
    if user_file is not None:
        raw = _read_user(user_file, kind="plans", setting="IMAGEGEN_PLANS_FILE")
        plans.update({plan.id: plan for plan in _plans(str(user_file), raw)})
    return StaticPlanCatalog(list(plans.values()))
