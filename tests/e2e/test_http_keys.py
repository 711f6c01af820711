"""API keys managed over HTTP, end to end: uvicorn on a loopback port, httpx as the client,
SQLite and PostgreSQL. A tenant's admin creates a key, the key works at once, lists never
show a secret, rotation and revocation take effect on the next request; the other roles get
403 on every /v1/keys endpoint, another tenant's admin gets 404 for this tenant's key ids
(exactly as for an id that does not exist), and Idempotency-Key replays make no second key."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from http_service import TenantKeys, provision, running

from conftest import empty_postgres
from imagegen.bootstrap.settings import Settings
from imagegen.interfaces.http import create_app

PROBLEM = "application/problem+json"
KEY_FORMAT = re.compile(r"ig_live_[0-9A-Z]+_[A-Za-z0-9_-]{43}")
FIELDS = {"id", "prefix", "role", "name", "created_at", "revoked_at", "last_used_at", "replaces"}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings]]:
    data = tmp_path_factory.mktemp(f"keys-{request.param}")
    url = f"sqlite:///{data / 'imagegen.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("shared_postgres_url")
        empty_postgres(url)
    settings = Settings(
        data_dir=data,
        database_url=url,  # type: ignore[arg-type]
        starting_credits=100,
    )
    with running(create_app(settings)) as base:
        yield base, settings


@pytest.fixture
def http(service: tuple[str, Settings]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service[0], timeout=30) as client:
        yield client


_names = itertools.count()


@pytest.fixture
def tenants(service: tuple[str, Settings]) -> tuple[TenantKeys, TenantKeys]:
    n = next(_names)
    return provision(service[1], f"keys-a-{n}"), provision(service[1], f"keys-b-{n}")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:imagegen:problem:{code}"
    assert (body["status"], body["code"]) == (status, code)
    assert "ig_live_" not in response.text  # never a key, not even a prefix
    return body


def create(
    http: httpx.Client, tenant: TenantKeys, role: str, name: str | None = None, **headers: str
) -> httpx.Response:
    body: dict[str, Any] = {"role": role} if name is None else {"role": role, "name": name}
    return http.post("/v1/keys", json=body, headers={**tenant.auth("admin"), **headers})


def all_keys(http: httpx.Client, tenant: TenantKeys, limit: int = 100) -> list[dict[str, Any]]:
    """Every key of the tenant, walking the pages."""
    keys: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = http.get("/v1/keys", params=params, headers=tenant.auth("admin"))
        assert response.status_code == 200, response.text
        page = response.json()
        keys.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return keys


def test_an_admin_creates_a_key_that_works_lists_it_rotates_and_revokes_it(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    response = create(http, alpha, "creator", "ci")
    assert response.status_code == 201, response.text
    created = response.json()
    secret = created["secret"]
    assert KEY_FORMAT.fullmatch(secret)
    assert secret.startswith(created["prefix"] + "_")
    assert created["id"].startswith("key_")
    assert (created["role"], created["name"], created["replayed"]) == ("creator", "ci", False)
    assert created["revoked_at"] is None
    assert response.headers["location"] == f"/v1/keys/{created['id']}"

    # the new key works at once, with its role
    made = http.post(
        "/v1/generations", json={"prompt": "a fox", "size": "64x64"}, headers=bearer(secret)
    )
    assert made.status_code == 201, made.text
    assert_problem(
        http.post("/v1/credits/grants", json={"amount": 1}, headers=bearer(secret)),
        403,
        "permission_denied",
    )

    # lists and reads show it, never its secret or its hash
    listing = http.get("/v1/keys", headers=alpha.auth("admin"))
    assert listing.status_code == 200
    assert secret not in listing.text
    assert secret.rsplit("_", 1)[1] not in listing.text
    assert "hash" not in listing.text
    items = listing.json()["items"]
    assert {k["id"] for k in items} == {created["id"], *alpha.key_ids.values()}
    assert all(set(k) == FIELDS for k in items)
    assert items[0]["id"] == created["id"]  # newest first
    listed = next(k for k in items if k["id"] == created["id"])
    assert listed["last_used_at"] is not None
    fetched = http.get(f"/v1/keys/{created['id']}", headers=alpha.auth("admin"))
    assert fetched.json() == listed
    assert secret not in fetched.text

    # rotation: a new key with the same role and name; the old one stops working
    rotated_response = http.post(f"/v1/keys/{created['id']}/rotate", headers=alpha.auth("admin"))
    assert rotated_response.status_code == 201, rotated_response.text
    rotated = rotated_response.json()
    assert rotated_response.headers["location"] == f"/v1/keys/{rotated['id']}"
    assert (rotated["role"], rotated["name"], rotated["replaces"]) == (
        "creator",
        "ci",
        created["id"],
    )
    assert rotated["secret"] != secret
    assert KEY_FORMAT.fullmatch(rotated["secret"])
    old = http.get("/v1/credits/balance", headers=bearer(secret))
    assert_problem(old, 401, "authentication_required")
    assert http.get("/v1/credits/balance", headers=bearer(rotated["secret"])).status_code == 200
    old_key = http.get(f"/v1/keys/{created['id']}", headers=alpha.auth("admin")).json()
    assert old_key["revoked_at"] is not None
    assert_problem(  # a revoked key is not rotated (as the CLI's keys rotate)
        http.post(f"/v1/keys/{created['id']}/rotate", headers=alpha.auth("admin")),
        404,
        "api_key_not_found",
    )

    # revocation answers the revoked key; the next request with it is a 401
    revoked = http.post(f"/v1/keys/{rotated['id']}/revoke", headers=alpha.auth("admin"))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["id"] == rotated["id"]
    assert revoked.json()["revoked_at"] is not None
    assert "secret" not in revoked.json()
    gone = http.get("/v1/credits/balance", headers=bearer(rotated["secret"]))
    assert_problem(gone, 401, "authentication_required")
    again = http.post(f"/v1/keys/{rotated['id']}/revoke", headers=alpha.auth("admin"))
    assert again.json() == revoked.json()  # revoking a revoked key changes nothing

    everything = all_keys(http, alpha)
    text = repr(everything)
    assert secret not in text
    assert rotated["secret"] not in text


def test_the_key_list_is_cursor_paginated_newest_first(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    made = [create(http, alpha, "viewer", f"k{i}").json()["id"] for i in range(3)]
    pages = [all_keys(http, alpha, limit=limit) for limit in (1, 2, 3, 100)]
    assert all(page == pages[-1] for page in pages)
    ids = [k["id"] for k in pages[-1]]
    assert len(ids) == len(set(ids)) == 4 + 3
    assert ids[:3] == made[::-1]
    assert set(ids[3:]) == set(alpha.key_ids.values())
    stamps = [k["created_at"] for k in pages[-1]]
    assert stamps == sorted(stamps, reverse=True)
    first = http.get("/v1/keys", params={"limit": 2}, headers=alpha.auth("admin")).json()
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    bad = http.get("/v1/keys", params={"cursor": "nonsense"}, headers=alpha.auth("admin"))
    assert_problem(bad, 422, "invalid_parameter")
    too_many = http.get("/v1/keys", params={"limit": 101}, headers=alpha.auth("admin"))
    assert_problem(too_many, 422, "validation_error")


def test_an_idempotency_key_makes_one_key_and_replays_it_without_the_secret(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, beta = tenants
    first = create(http, alpha, "reviewer", "finance", **{"Idempotency-Key": "key-1"})
    replay = create(http, alpha, "reviewer", "finance", **{"Idempotency-Key": "key-1"})
    assert first.status_code == 201, first.text
    assert replay.status_code == 200, replay.text
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert replay.headers["location"] == first.headers["location"]
    assert replay.json() == {**first.json(), "secret": None, "replayed": True}
    assert first.json()["secret"] not in replay.text
    assert len(all_keys(http, alpha)) == 4 + 1
    conflict = create(http, alpha, "viewer", "finance", **{"Idempotency-Key": "key-1"})
    assert_problem(conflict, 422, "idempotency_conflict")
    renamed = create(http, alpha, "reviewer", "other", **{"Idempotency-Key": "key-1"})
    assert_problem(renamed, 422, "idempotency_conflict")
    # idempotency keys are per tenant
    other = create(http, beta, "reviewer", "finance", **{"Idempotency-Key": "key-1"})
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]
    bad = create(http, alpha, "viewer", **{"Idempotency-Key": "x" * 256})
    assert_problem(bad, 422, "invalid_parameter")

    # a rotation too: replayed, it rotates nothing more
    target = first.json()["id"]
    headers = {**alpha.auth("admin"), "Idempotency-Key": "rotate-1"}
    rotated = http.post(f"/v1/keys/{target}/rotate", headers=headers)
    again = http.post(f"/v1/keys/{target}/rotate", headers=headers)
    assert rotated.status_code == 201, rotated.text
    assert again.status_code == 200, again.text
    assert again.json() == {**rotated.json(), "secret": None, "replayed": True}
    assert http.get("/v1/credits/balance", headers=bearer(rotated.json()["secret"])).is_success
    assert len(all_keys(http, alpha)) == 4 + 2
    elsewhere = http.post(f"/v1/keys/{alpha.key_ids['viewer']}/rotate", headers=headers)
    assert_problem(elsewhere, 422, "idempotency_conflict")
    assert http.get("/v1/credits/balance", headers=alpha.auth("viewer")).is_success


@pytest.mark.parametrize("role", ["viewer", "creator", "reviewer"])
def test_every_role_but_admin_gets_403_on_every_key_endpoint(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys], role: str
) -> None:
    alpha, _ = tenants
    target = alpha.key_ids["viewer"]
    auth = alpha.auth(role)
    requests = [
        http.post("/v1/keys", json={"role": "viewer"}, headers=auth),
        http.post("/v1/keys", json={"role": "admin"}, headers={**auth, "Idempotency-Key": "k"}),
        http.get("/v1/keys", headers=auth),
        http.get(f"/v1/keys/{target}", headers=auth),
        http.get("/v1/keys/key_doesnotexist", headers=auth),  # 403 before any lookup
        http.post(f"/v1/keys/{target}/rotate", headers=auth),
        http.post(f"/v1/keys/{target}/revoke", headers=auth),
        http.post(f"/v1/keys/{alpha.key_ids[role]}/revoke", headers=auth),  # not even its own
    ]
    for response in requests:
        body = assert_problem(response, 403, "permission_denied")
        assert body["details"] == {"permission": "keys:manage", "role": role}
    # nothing was made, rotated or revoked
    keys = all_keys(http, alpha)
    assert {k["id"] for k in keys} == set(alpha.key_ids.values())
    assert all(k["revoked_at"] is None for k in keys)


def test_another_tenants_admin_gets_404_for_this_tenants_key_ids(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, beta = tenants
    auth = beta.auth("admin")
    for role, key_id in alpha.key_ids.items():
        ghost = "key_" + "0" * (len(key_id) - 4)
        for method, template in [
            ("GET", "/v1/keys/{}"),
            ("POST", "/v1/keys/{}/rotate"),
            ("POST", "/v1/keys/{}/revoke"),
        ]:
            response = http.request(method, template.format(key_id), headers=auth)
            assert_problem(response, 404, "api_key_not_found")
            unknown = http.request(method, template.format(ghost), headers=auth)
            # exactly the answer to an id that does not exist
            assert response.text.replace(key_id, ghost) == unknown.text
            assert alpha.id not in response.text
        assert http.get("/v1/credits/balance", headers=alpha.auth(role)).is_success
    listed = http.get("/v1/keys", headers=auth).text
    assert all(key_id not in listed for key_id in alpha.key_ids.values())
    assert {k["id"] for k in all_keys(http, beta)} == set(beta.key_ids.values())
    assert all(k["revoked_at"] is None for k in all_keys(http, alpha))


def test_an_admin_may_revoke_its_own_key_and_its_next_request_is_a_401(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    spare = create(http, alpha, "admin", "break-glass").json()
    own = alpha.key_ids["admin"]
    revoked = http.post(f"/v1/keys/{own}/revoke", headers=alpha.auth("admin"))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    after = http.get("/v1/keys", headers=alpha.auth("admin"))
    assert_problem(after, 401, "authentication_required")
    # the admin key made before still manages the tenant's keys
    listed = http.get("/v1/keys", headers=bearer(spare["secret"]))
    assert listed.status_code == 200
    assert next(k for k in listed.json()["items"] if k["id"] == own)["revoked_at"]


def test_bad_key_requests_are_problem_details(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    assert_problem(create(http, alpha, "owner"), 422, "validation_error")
    assert_problem(create(http, alpha, "viewer", "x" * 101), 422, "validation_error")
    assert_problem(create(http, alpha, "viewer", "tab\there"), 422, "invalid_parameter")
    unknown_field = http.post(
        "/v1/keys", json={"role": "viewer", "tenant_id": "x"}, headers=alpha.auth("admin")
    )
    assert_problem(unknown_field, 422, "validation_error")
    assert_problem(http.get("/v1/keys"), 401, "authentication_required")
    assert_problem(
        http.post("/v1/keys", json={"role": "viewer"}, headers=bearer("ig_live_ABC_nope")),
        401,
        "authentication_required",
    )
    assert_problem(
        http.get("/v1/keys/key_nope", headers=alpha.auth("admin")), 404, "api_key_not_found"
    )
    assert {k["id"] for k in all_keys(http, alpha)} == set(alpha.key_ids.values())
