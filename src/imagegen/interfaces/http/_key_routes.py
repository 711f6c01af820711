"""The v1 API-key endpoints: a tenant's admin (``keys:manage``) creates, lists, rotates and
revokes the tenant's keys. The ``AccessGuard`` checks the permission and scopes every call
to the caller's tenant: another tenant's key id is a 404, as an unknown one.

Revoking is ``POST /v1/keys/{id}/revoke`` (a state change that keeps the key listed, as
``/v1/generations/{id}/cancel``), answering the revoked key. An admin may revoke the key it
calls with: that request succeeds, the next one with the key is a 401."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from imagegen.application.use_cases.access import MAX_KEYS_PAGE, KeyOutcome
from imagegen.interfaces.http._key_schemas import CreatedKeyOut, KeyOut, KeyPage, KeyRequest
from imagegen.interfaces.http._routes import COMMON, Caller, Guard, _problem_responses

router = APIRouter(responses=_problem_responses(*COMMON), tags=["keys"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Replaying a key answers the key it made (200, without its secret) and "
        "makes no other; the same key with another request is a 422.",
    ),
]

_CREATED: dict[int | str, dict[str, Any]] = {
    200: {"model": CreatedKeyOut, "description": "A replayed Idempotency-Key (secret: null)."},
}


def _created(response: Response, outcome: KeyOutcome) -> CreatedKeyOut:
    response.headers["Location"] = f"/v1/keys/{outcome.key.id}"
    if outcome.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return CreatedKeyOut.made(outcome)


@router.post(
    "/keys",
    status_code=201,
    response_model=CreatedKeyOut,
    responses=_CREATED,
    summary="Create an API key of the tenant (the secret is shown once)",
)
async def create_key(
    body: KeyRequest,
    response: Response,
    caller: Caller,
    guard: Guard,
    idempotency_key: IdempotencyKey = None,
) -> CreatedKeyOut:
    outcome = await guard.create_key(caller, body.role.value, body.name, idempotency_key)
    return _created(response, outcome)


@router.get(
    "/keys",
    response_model=KeyPage,
    summary="The tenant's API keys, revoked ones too, newest first (never a secret)",
)
async def list_keys(
    caller: Caller,
    guard: Guard,
    limit: Annotated[int, Query(ge=1, le=MAX_KEYS_PAGE)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page.")] = None,
) -> KeyPage:
    page = await guard.keys(caller, limit, cursor)
    return KeyPage(items=[KeyOut.of(k) for k in page.items], next_cursor=page.next_cursor)


@router.get("/keys/{key_id}", response_model=KeyOut, summary="An API key of the tenant")
async def get_key(key_id: str, caller: Caller, guard: Guard) -> KeyOut:
    return KeyOut.of(await guard.key(caller, key_id))


@router.post(
    "/keys/{key_id}/rotate",
    status_code=201,
    response_model=CreatedKeyOut,
    responses=_CREATED,
    summary="Replace an active key by a new one (same role and name); the old one is revoked",
)
async def rotate_key(
    key_id: str,
    response: Response,
    caller: Caller,
    guard: Guard,
    idempotency_key: IdempotencyKey = None,
) -> CreatedKeyOut:
    return _created(response, await guard.rotate_key(caller, key_id, idempotency_key))


@router.post(
    "/keys/{key_id}/revoke",
    response_model=KeyOut,
    summary="Revoke a key (at once; revoking a revoked key changes nothing)",
)
async def revoke_key(key_id: str, caller: Caller, guard: Guard) -> KeyOut:
    return KeyOut.of(await guard.revoke_key(caller, key_id))
