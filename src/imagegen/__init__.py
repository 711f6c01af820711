"""imagegen: AI image generation as a billable, governed capability.

``from imagegen import ImageGen`` is the entry point (``AsyncImageGen`` for asyncio).
Importing ``imagegen`` is cheap: the client, the database layer and the provider SDKs load
when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from imagegen.domain.errors import (
    AccessError,
    ApiKeyNotFound,
    AssetNotFound,
    AuthenticationFailed,
    AuthenticationRequired,
    BillingError,
    BudgetExceeded,
    ConfigurationError,
    ContentPolicyViolation,
    GenerationNotFound,
    IdempotencyConflict,
    ImageGenError,
    InsufficientCredits,
    InvalidInput,
    InvalidParameter,
    InvalidPrompt,
    InvalidSize,
    InvalidStateTransition,
    MeteringError,
    ModelNotInPlan,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderProtocolError,
    ProviderRejected,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    RefundExceedsCapture,
    ReservationAlreadyResolved,
    ReservationError,
    ReservationExpired,
    StorageError,
    TenantNotFound,
    UnknownModel,
    UnknownProvider,
    UnsupportedOperation,
)

if TYPE_CHECKING:
    from imagegen.bootstrap.settings import Settings
    from imagegen.client import (
        AssetResult,
        AsyncImageGen,
        BalanceResult,
        EstimateResult,
        GenerationResult,
        ImageGen,
        ImageResult,
        ModelInfo,
        Page,
    )

__version__ = "0.1.0"

_LAZY = {
    "ImageGen": "imagegen.client",
    "AsyncImageGen": "imagegen.client",
    "AssetResult": "imagegen.client",
    "BalanceResult": "imagegen.client",
    "EstimateResult": "imagegen.client",
    "GenerationResult": "imagegen.client",
    "ImageResult": "imagegen.client",
    "ModelInfo": "imagegen.client",
    "Page": "imagegen.client",
    "Settings": "imagegen.bootstrap.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imagegen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AccessError",
    "ApiKeyNotFound",
    "AssetNotFound",
    "AssetResult",
    "AsyncImageGen",
    "AuthenticationFailed",
    "AuthenticationRequired",
    "BalanceResult",
    "BillingError",
    "BudgetExceeded",
    "ConfigurationError",
    "ContentPolicyViolation",
    "EstimateResult",
    "GenerationNotFound",
    "GenerationResult",
    "IdempotencyConflict",
    "ImageGen",
    "ImageGenError",
    "ImageResult",
    "InsufficientCredits",
    "InvalidInput",
    "InvalidParameter",
    "InvalidPrompt",
    "InvalidSize",
    "InvalidStateTransition",
    "MeteringError",
    "ModelInfo",
    "ModelNotInPlan",
    "NotFound",
    "Page",
    "PermissionDenied",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderRejected",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "RefundExceedsCapture",
    "ReservationAlreadyResolved",
    "ReservationError",
    "ReservationExpired",
    "Settings",
    "StorageError",
    "TenantNotFound",
    "UnknownModel",
    "UnknownProvider",
    "UnsupportedOperation",
    "__version__",
]
