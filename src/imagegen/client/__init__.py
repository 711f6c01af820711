"""The Python API: ``ImageGen`` (sync) and ``AsyncImageGen`` (asyncio)."""

from imagegen.client._async import AsyncImageGen
from imagegen.client._results import (
    AssetResult,
    BalanceResult,
    EstimateResult,
    GenerationResult,
    ImageResult,
    ModelInfo,
    Page,
)
from imagegen.client._sync import ImageGen

__all__ = [
    "AssetResult",
    "AsyncImageGen",
    "BalanceResult",
    "EstimateResult",
    "GenerationResult",
    "ImageGen",
    "ImageResult",
    "ModelInfo",
    "Page",
]
