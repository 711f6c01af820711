"""A third-party provider plugin: a complete, runnable one.

A real plugin is its own package that declares, in its pyproject.toml::

    [project.entry-points."imagegen.providers"]
    swatch = "provider_plugin:plugin"

Run: python examples/provider_plugin.py — it installs that entry point into a temporary
directory (exactly the .dist-info that ``pip install`` would write), then generates with the
plugin's provider like with any built-in one: negotiated, priced, billed, stored in the DAM.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from imagegen.application.ports import (
    ProviderHealth,
    ProviderImage,
    ProviderRequest,
    ProviderResult,
)
from imagegen.domain.errors import UnsupportedOperation
from imagegen.domain.models import ModelSpec, Operation, PerImage, SizeRule
from imagegen.domain.values import ImageFormat, ImageSize, Money


class SwatchProvider:
    """Paints one flat colour per image, picked from the prompt: a stand-in for your API."""

    name = "swatch"

    async def generate(self, request: ProviderRequest) -> ProviderResult:
        from PIL import Image

        if request.operation is not Operation.GENERATE:
            raise UnsupportedOperation("swatch only generates.")
        images = []
        for index in range(request.n):
            shade = (sum(map(ord, request.prompt)) * (index + 1)) % 256
            picture = Image.new("RGB", (request.size.width, request.size.height), (shade, 90, 160))
            buffer = io.BytesIO()
            picture.save(buffer, format=request.format.value.upper())
            images.append(ProviderImage(buffer.getvalue()))
        return ProviderResult(images=tuple(images), cost_usd=Money(Decimal("0.002")) * request.n)

    async def resume(self, job_id: str, request: ProviderRequest) -> ProviderResult:
        raise UnsupportedOperation("swatch has no jobs.")

    async def health(self) -> ProviderHealth:
        return ProviderHealth(self.name, ok=True, latency_ms=0.0, detail="always fine")


class SwatchPlugin:
    name = "swatch"

    def create(self, settings: Any) -> SwatchProvider:
        return SwatchProvider()

    def models(self) -> Sequence[ModelSpec]:
        return [
            ModelSpec(
                provider="swatch",
                model="flat-v1",
                display_name="Flat colour swatches",
                operations=frozenset({Operation.GENERATE}),
                size_rule=SizeRule(min_side=16, max_side=1024, multiple_of=16),
                default_size=ImageSize(256, 256),
                formats=(ImageFormat.PNG, ImageFormat.JPEG),
                max_images_per_call=4,
                max_images_per_request=8,
                supports_seed=False,
                supports_negative_prompt=False,
                pricing=PerImage(usd=Decimal("0.002")),
            )
        ]


plugin = SwatchPlugin()


def install_entry_point(site: Path) -> None:
    """What ``pip install`` of a package declaring the entry point leaves on sys.path."""
    info = site / "swatch_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: swatch-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[imagegen.providers]\nswatch = provider_plugin:plugin\n"
    )
    sys.path[:0] = [str(site), str(Path(__file__).resolve().parent)]


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as site:
        install_entry_point(Path(site))
        from imagegen import ImageGen

        with ImageGen() as gen:
            listed = [m for m in gen.models() if m.provider == "swatch"]
            print("plugin models:", [f"{m.provider}/{m.model}" for m in listed])
            result = gen.generate("teal", provider="swatch", n=6, size="128x128")
            print(
                f"{result.id}: {result.status}, {len(result.images)} images in 2 calls, "
                f"charged {result.credits_charged} credits for ${result.provider_cost_usd}"
            )
