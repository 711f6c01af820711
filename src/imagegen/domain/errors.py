"""Every error imagegen raises, as one tree.

Catch ``ImageGenError`` for all of them, or a branch for one family. Each carries a stable
``code`` (used by the HTTP shell as the problem type and by the CLI to pick an exit code) and
``details`` (a dict safe to show a user: it never holds a secret).

::

    ImageGenError
    ├── InvalidInput                      bad request: nothing was recorded or charged
    │   ├── InvalidPrompt
    │   ├── InvalidSize
    │   ├── InvalidParameter
    │   ├── UnknownProvider
    │   ├── UnknownModel
    │   ├── UnsupportedOperation
    │   └── IdempotencyConflict           same key, different request
    ├── BillingError
    │   ├── InsufficientCredits
    │   ├── QuotaExceeded                 the plan's included images for the period are used up
    │   ├── BudgetExceeded                a user / project budget or a per-request cap
    │   ├── ModelNotInPlan                the plan does not allow this model or operation
    │   ├── MeteringError                 the usage meter (Stripe) refused or was unreachable
    │   │                                 (``retryable``, ``event_rejected``)
    │   ├── RefundExceedsCapture          refunds of a capture would exceed what it charged
    │   └── ReservationError
    │       ├── ReservationAlreadyResolved
    │       └── ReservationExpired
    ├── ProviderError                     the provider failed: the reservation was released
    │   ├── ProviderUnavailable           5xx, timeout, connection refused
    │   ├── RateLimited                   429, with ``retry_after`` seconds when known
    │   ├── AuthenticationFailed
    │   ├── ProviderRejected              4xx the provider refused
    │   ├── ContentPolicyViolation        with ``stage``: "input" or "output"
    │   └── ProviderProtocolError         what came back is not what the protocol promises
    ├── NotFound                          (or another tenant's: never told apart)
    │   ├── GenerationNotFound
    │   ├── AssetNotFound
    │   ├── TenantNotFound
    │   └── ApiKeyNotFound
    ├── AccessError                       the HTTP service's callers
    │   ├── AuthenticationRequired        no API key, or not a valid, active one
    │   └── PermissionDenied              the key's role does not allow this
    ├── InvalidStateTransition            a programming error: an aggregate refused a transition
    ├── StorageError                      the DAM could not store or read bytes
    └── ConfigurationError                settings that cannot work (bad URL, missing extra)
"""

from __future__ import annotations

from typing import Any, ClassVar


class ImageGenError(Exception):
    """Base of every imagegen error."""

    code: ClassVar[str] = "imagegen_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidInput(ImageGenError):
    code = "invalid_input"


class InvalidPrompt(InvalidInput):
    code = "invalid_prompt"


class InvalidSize(InvalidInput):
    code = "invalid_size"


class InvalidParameter(InvalidInput):
    code = "invalid_parameter"


class UnknownProvider(InvalidInput):
    code = "unknown_provider"


class UnknownModel(InvalidInput):
    code = "unknown_model"


class UnsupportedOperation(InvalidInput):
    code = "unsupported_operation"


class IdempotencyConflict(InvalidInput):
    code = "idempotency_conflict"


class BillingError(ImageGenError):
    code = "billing_error"


class InsufficientCredits(BillingError):
    code = "insufficient_credits"


class QuotaExceeded(BillingError):
    code = "quota_exceeded"


class BudgetExceeded(BillingError):
    code = "budget_exceeded"


class ModelNotInPlan(BillingError):
    code = "model_not_in_plan"


class MeteringError(BillingError):
    """The usage meter did not take a report. Three cases, told apart by two flags:

    - ``retryable``: a transient failure (rate limit, conflict, 5xx, timeout, connection):
      the same report may well be taken later.
    - ``event_rejected``: the meter refused *this event* for what it holds (say, a timestamp
      outside its window); sending it again gets the same answer, other events are unaffected.
    - neither: the meter refuses *us* (credentials, configuration, a missing extra): no event
      gets through until someone fixes it.
    """

    code = "metering_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        event_rejected: bool = False,
        **details: Any,
    ) -> None:
        if retryable and event_rejected:
            raise ValueError("a metering error is retryable or rejects the event, not both")
        super().__init__(message, retryable=retryable, event_rejected=event_rejected, **details)
        self.retryable = retryable
        self.event_rejected = event_rejected


class RefundExceedsCapture(BillingError):
    code = "refund_exceeds_capture"


class ReservationError(BillingError):
    code = "reservation_error"


class ReservationAlreadyResolved(ReservationError):
    code = "reservation_already_resolved"


class ReservationExpired(ReservationError):
    code = "reservation_expired"


class ProviderError(ImageGenError):
    code = "provider_error"


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"


class RateLimited(ProviderError):
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class AuthenticationFailed(ProviderError):
    code = "authentication_failed"


class ProviderRejected(ProviderError):
    code = "provider_rejected"


class ContentPolicyViolation(ProviderError):
    code = "content_policy_violation"

    def __init__(self, message: str, *, stage: str = "input", **details: Any) -> None:
        super().__init__(message, stage=stage, **details)
        self.stage = stage


class ProviderProtocolError(ProviderError):
    code = "provider_protocol_error"


class NotFound(ImageGenError):
    code = "not_found"


class GenerationNotFound(NotFound):
    code = "generation_not_found"


class AssetNotFound(NotFound):
    code = "asset_not_found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


class AccessError(ImageGenError):
    code = "access_error"


class AuthenticationRequired(AccessError):
    code = "authentication_required"


class PermissionDenied(AccessError):
    code = "permission_denied"


class InvalidStateTransition(ImageGenError):
    code = "invalid_state_transition"


class StorageError(ImageGenError):
    code = "storage_error"


class ConfigurationError(ImageGenError):
    code = "configuration_error"
