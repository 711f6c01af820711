"""The model catalog: specs looked up by provider and model.

The specs come from ``models.toml`` in this package (versioned with the library), from a user's
catalog file that overrides or extends it (``load_catalog``), and, for the offline ``local``
provider, from code (``local_models``: its price is a setting, not data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from imagegen.domain.errors import UnknownModel, UnknownProvider
from imagegen.domain.models import FixedCredits, ModelSpec, Operation, SizeRule
from imagegen.domain.values import AspectRatio, Credits, ImageFormat, ImageSize
from imagegen.infrastructure.catalog.loader import SCHEMA_VERSION, load_catalog, load_specs

__all__ = [
    "COMMON_RATIOS",
    "SCHEMA_VERSION",
    "StaticModelCatalog",
    "load_catalog",
    "load_specs",
    "local_models",
]

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
            pricing=FixedCredits(credits_per_image=Credits(credits_per_image)),
            aspect_ratios=COMMON_RATIOS,
        )
    ]


class StaticModelCatalog:
    """Specs in order, with a default model per provider (``defaults``, else the provider's
    first spec that is not deprecated, else its first)."""

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        default_provider: str,
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        self._specs = list(specs)
        self._by_ref = {(s.provider, s.model): s for s in self._specs}
        self._default_provider = default_provider
        self._defaults = dict(defaults or {})

    @property
    def defaults(self) -> dict[str, str]:
        """The default model named for each provider that has one."""
        return dict(self._defaults)

    def providers(self) -> list[str]:
        return list(dict.fromkeys(s.provider for s in self._specs))

    @property
    def default_provider(self) -> str:
        return self._default_provider

    def default_model(self, provider: str) -> ModelSpec:
        """The model used when a request names ``provider`` but no model."""
        chosen = self._defaults.get(provider)
        if chosen is not None and (provider, chosen) in self._by_ref:
            return self._by_ref[(provider, chosen)]
        own = [s for s in self._specs if s.provider == provider]
        if not own:
            raise self._unknown_provider(provider)
        return next((s for s in own if not s.deprecated), own[0])

    def get(self, provider: str | None, model: str | None) -> ModelSpec:
        if provider is None and model is not None:
            return self._find(model)
        name = provider or self._default_provider
        if name not in self.providers():
            raise self._unknown_provider(name)
        if model is None:
            return self.default_model(name)
        spec = self._by_ref.get((name, model))
        if spec is None and model.startswith(f"{name}/"):
            # "openai/gpt-image-2" with provider="openai" names the model twice.
            spec = self._by_ref.get((name, model.removeprefix(f"{name}/")))
        if spec is None:
            known = ", ".join(s.model for s in self._specs if s.provider == name)
            raise UnknownModel(
                f"Unknown model {model!r} for provider {name!r}; available: {known}.",
                provider=name,
                model=model,
            )
        return spec

    def _find(self, model: str) -> ModelSpec:
        """A model named without its provider: ``"local/procedural"``,
        ``"replicate/black-forest-labs/flux-schnell"``, or a model id one provider has
        (``"gpt-image-2"``, ``"black-forest-labs/flux-schnell"``)."""
        head, _, rest = model.partition("/")
        if rest and head in self.providers():
            return self.get(head, rest)
        matches = [s for s in self._specs if s.model == model]
        if len(matches) == 1:
            return matches[0]
        preferred = [s for s in matches if s.provider == self._default_provider]
        if preferred:
            return preferred[0]
        if matches:
            owners = ", ".join(s.provider for s in matches)
            raise UnknownModel(
                f"Model {model!r} is offered by several providers ({owners}); name one.",
                model=model,
            )
        if head and rest:
            raise self._unknown_provider(head)
        raise UnknownModel(
            f"Unknown model {model!r}; `imagegen models` lists the available ones.", model=model
        )

    def _unknown_provider(self, name: str) -> UnknownProvider:
        known = ", ".join(self.providers())
        return UnknownProvider(f"Unknown provider {name!r}; available: {known}.", provider=name)

    def all(self) -> Sequence[ModelSpec]:
        return tuple(self._specs)
