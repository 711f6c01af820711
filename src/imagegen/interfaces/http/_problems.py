"""Errors as RFC 9457 problem details (``application/problem+json``).

``type`` is ``urn:imagegen:problem:<code>``, the library error's stable ``code``; ``code``
repeats it as a plain member. Client errors (4xx) carry the error's message as ``detail``
and its ``details`` (safe to show: they never hold a secret); server errors (5xx from our
side) carry a generic sentence only — the cause is logged, never sent.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegen.domain.errors import (
    AuthenticationRequired,
    BillingError,
    BudgetExceeded,
    ContentPolicyViolation,
    IdempotencyConflict,
    ImageGenError,
    InsufficientCredits,
    InvalidInput,
    InvalidStateTransition,
    MeteringError,
    ModelNotInPlan,
    NotFound,
    PermissionDenied,
    ProviderError,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    ReservationError,
)

log = logging.getLogger("imagegen.http")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:imagegen:problem:"

# The first matching class wins: subclasses before their families.
STATUS_BY_ERROR: tuple[tuple[type[ImageGenError], int], ...] = (
    (IdempotencyConflict, 422),  # as draft-ietf-httpapi-idempotency-key-header says
    (ContentPolicyViolation, 422),  # the request asked for what the provider refuses
    (InvalidInput, 422),
    (InsufficientCredits, 402),
    (QuotaExceeded, 403),  # a plan limit: waiting a minute does not help, unlike a 429
    (BudgetExceeded, 403),
    (ModelNotInPlan, 403),
    (MeteringError, 503),
    (ReservationError, 409),
    (BillingError, 402),
    (RateLimited, 429),  # the provider's limit, after our retries; Retry-After when known
    (ProviderUnavailable, 503),  # down, or no answer in time
    (ProviderError, 502),  # refused, broke its protocol, or rejected our provider key
    (NotFound, 404),  # also another tenant's ids
    (AuthenticationRequired, 401),
    (PermissionDenied, 403),
    (InvalidStateTransition, 409),  # e.g. cancelling a generation that already finished
    (ImageGenError, 500),  # storage, configuration, an illegal state transition
)

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    402: "Payment required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def status_for(error: ImageGenError) -> int:
    return next(status for kind, status in STATUS_BY_ERROR if isinstance(error, kind))


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body = {
        "type": TYPE_PREFIX + code,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extensions,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _safe(value: Any) -> Any:
    """Details as JSON (they are plain values; anything else becomes its text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    return str(value)


def error_response(error: ImageGenError) -> JSONResponse:
    status = status_for(error)
    headers: dict[str, str] = {}
    if isinstance(error, AuthenticationRequired):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, RateLimited) and error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    if status >= 500 and not isinstance(error, ProviderError | MeteringError):
        log.error("%s: %s", error.code, error.message)
        return problem(status, error.code, "The service could not complete the request.")
    details = {k: _safe(v) for k, v in error.details.items() if k != "code"}
    extensions = {"details": details} if details else {}
    return problem(status, error.code, error.message, headers=headers, **extensions)


async def on_library_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ImageGenError)
    return error_response(error)


def _where(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return problem(400, "malformed_request", "The request body is not valid JSON.")
    errors = [
        {"location": _where(tuple(p.get("loc", ()))), "message": str(p.get("msg", ""))}
        for p in problems
    ]  # never the input itself: it may be large, or someone's secret pasted in a field
    first = errors[0] if errors else {"location": "request", "message": "invalid"}
    return problem(
        422,
        "validation_error",
        f"{first['location']}: {first['message']}",
        errors=errors,
    )


async def on_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    codes = {
        404: "not_found",
        405: "method_not_allowed",
        413: "request_too_large",
        415: "unsupported_media_type",
    }
    code = codes.get(error.status_code, f"http_{error.status_code}")
    detail = error.detail if isinstance(error.detail, str) else TITLES.get(error.status_code, "")
    headers = dict(error.headers or {})
    return problem(error.status_code, code, detail, headers=headers)


async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem(500, "internal_error", "The service could not complete the request.")
