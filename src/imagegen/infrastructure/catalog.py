"""The model catalog: built-in specs, looked up by provider and model."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal

from imagegen.domain.errors import UnknownModel, UnknownProvider
from imagegen.domain.models import ModelSpec, Operation, Pricing, SizeRule
from imagegen.domain.values import AspectRatio, Credits, ImageFormat, ImageSize, Money

COMMON_RATIOS = tuple(
    AspectRatio.parse(r)
    for r in ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "4:5", "5:4", "21:9")
)


def local_models(credits_per_image: int = 1) -> list[ModelSpec]:
    """The offline renderer: free-form sizes, every format, seeds; no provider bill."""
    return [
        ModelSpec(
            provider="local",
            model="procedural",
            display_name="Local procedural renderer (offline, deterministic)",
            operations=frozenset({Operation.GENERATE}),
            size_rule=SizeRule(
                min_side=64,
                max_side=2048,
                multiple_of=8,
                max_pixels=2048 * 2048,
                default_pixels=1024 * 1024,
            ),
            default_size=ImageSize(1024, 1024),
            formats=(ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.WEBP),
            max_images_per_call=10,
            max_images_per_request=10,
            supports_seed=True,
            supports_negative_prompt=True,
            pricing=Pricing(Credits(credits_per_image), Money(Decimal(0))),
            aspect_ratios=COMMON_RATIOS,
        )
    ]


class StaticModelCatalog:
    """Specs in order; a provider's first spec is its default model."""

    def __init__(self, specs: Iterable[ModelSpec], default_provider: str) -> None:
        self._specs = list(specs)
        self._by_ref = {(s.provider, s.model): s for s in self._specs}
        self._default_provider = default_provider

    def providers(self) -> list[str]:
        return list(dict.fromkeys(s.provider for s in self._specs))

    def get(self, provider: str | None, model: str | None) -> ModelSpec:
        if provider is None and model is not None and "/" in model:
            # "local/procedural" names both at once.
            provider, model = model.split("/", 1)
        name = provider or self._default_provider
        if name not in self.providers():
            known = ", ".join(self.providers())
            raise UnknownProvider(f"Unknown provider {name!r}; available: {known}.", provider=name)
        if model is None:
            return next(s for s in self._specs if s.provider == name)
        spec = self._by_ref.get((name, model))
        if spec is None:
            known = ", ".join(s.model for s in self._specs if s.provider == name)
            raise UnknownModel(
                f"Unknown model {model!r} for provider {name!r}; available: {known}.",
                provider=name,
                model=model,
            )
        return spec

    def all(self) -> Sequence[ModelSpec]:
        return tuple(self._specs)
