"""Third-party providers, discovered through the ``imagegen.providers`` entry-point group.

A package adds a provider by declaring, in its ``pyproject.toml``::

    [project.entry-points."imagegen.providers"]
    acme = "acme_imagegen:plugin"

where ``plugin`` is an object (or a class / zero-argument callable that returns one) with

- ``name`` — the provider name users pass as ``--provider``;
- ``create(settings) -> ImageProvider`` — builds the adapter (it receives imagegen's
  ``Settings``; read your own keys from the environment, as SecretStr);
- ``models() -> Sequence[ModelSpec]`` — its catalog entries, each with ``provider == name``.

The adapter is wrapped in the same resilience layer as the built-in ones, its models are
negotiated, priced and billed like any other. A plugin cannot replace a built-in provider.
``examples/provider_plugin.py`` is a complete one.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from imagegen.application.ports import ImageProvider
from imagegen.domain.errors import ConfigurationError
from imagegen.domain.models import ModelSpec

log = logging.getLogger("imagegen.providers")

ENTRY_POINT_GROUP = "imagegen.providers"
BUILT_IN = frozenset({"local", "openai", "replicate", "stability"})


@runtime_checkable
class ProviderPlugin(Protocol):
    @property
    def name(self) -> str: ...

    def create(self, settings: Any) -> ImageProvider: ...

    def models(self) -> Sequence[ModelSpec]: ...


def _as_plugin(entry: importlib.metadata.EntryPoint) -> ProviderPlugin:
    try:
        loaded = entry.load()
    except Exception as error:
        raise ConfigurationError(
            f"Provider plugin {entry.name!r} ({entry.value}) could not be imported: "
            f"{type(error).__name__}: {error}",
            plugin=entry.name,
        ) from None
    plugin = loaded if isinstance(loaded, ProviderPlugin) else loaded()
    if not isinstance(plugin, ProviderPlugin):
        raise ConfigurationError(
            f"Provider plugin {entry.name!r} ({entry.value}) has no name, create() and models().",
            plugin=entry.name,
        )
    return plugin


def discover_plugins(group: str = ENTRY_POINT_GROUP) -> list[ProviderPlugin]:
    """Every installed provider plugin, checked: unique names, no built-in name, and models
    that belong to the plugin's provider."""
    plugins: dict[str, ProviderPlugin] = {}
    for entry in importlib.metadata.entry_points(group=group):
        plugin = _as_plugin(entry)
        if plugin.name in BUILT_IN or plugin.name in plugins:
            raise ConfigurationError(
                f"Provider plugin {entry.name!r} uses the name {plugin.name!r}, which is taken.",
                plugin=entry.name,
            )
        strays = [m.ref for m in plugin.models() if m.provider != plugin.name]
        if strays:
            raise ConfigurationError(
                f"Provider plugin {plugin.name!r} lists models of another provider: "
                f"{', '.join(strays)}.",
                plugin=entry.name,
            )
        plugins[plugin.name] = plugin
        log.info("loaded provider plugin %s from %s", plugin.name, entry.value)
    return list(plugins.values())
