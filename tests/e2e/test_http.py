"""The HTTP service end to end: uvicorn on a loopback port, httpx as the client, SQLite and
PostgreSQL. Covers the v1 endpoints, problem+json errors, idempotency replays, the role
table, tenant isolation (a property test), API keys revoked and rotated from the CLI, and
edits uploaded as multipart (against the Stability emulator)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_service import ROLES, TenantKeys, call_access, provision, running
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import empty_postgres
from imagegen.bootstrap.settings import Settings
from imagegen.domain.access import PERMISSIONS, Permission, Role
from imagegen.interfaces.http import ServiceSettings, create_app
from imagegen.testing.emulators import serve
from imagegen.testing.emulators import stability as stability_emulator

PROBLEM = "application/problem+json"
MAX_BODY = 256 * 1024
MAX_UPLOAD = 128 * 1024
STABILITY_KEY = "sk-http-tests-Stability0123456789"
REMOVE_BG = "stable-image-remove-background"


@pytest.fixture(scope="module")
def stability() -> Iterator[tuple[str, Any]]:
    emulator = stability_emulator.create_app(api_key=STABILITY_KEY)
    with serve(emulator) as url:
        yield url, emulator


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def service(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    stability: tuple[str, Any],
) -> Iterator[tuple[str, Settings]]:
    """One server per backend for the module; each test makes its own tenants."""
    data = tmp_path_factory.mktemp(f"http-{request.param}")
    url = f"sqlite:///{data / 'imagegen.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("shared_postgres_url")
        empty_postgres(url)
    settings = Settings(
        data_dir=data,
        database_url=url,  # type: ignore[arg-type]
        starting_credits=100,
        stability_api_key=STABILITY_KEY,  # type: ignore[arg-type]
        stability_base_url=stability[0],
        provider_max_attempts=1,
    )
    limits = ServiceSettings(max_body_bytes=MAX_BODY, max_upload_bytes=MAX_UPLOAD)
    with running(create_app(settings, service=limits)) as base:
        yield base, settings


_names = itertools.count()


@pytest.fixture
def tenants(service: tuple[str, Settings]) -> tuple[TenantKeys, TenantKeys]:
    _, settings = service
    n = next(_names)
    return provision(settings, f"alpha-{n}"), provision(settings, f"beta-{n}")


@pytest.fixture
def http(service: tuple[str, Settings]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service[0], timeout=30) as client:
        yield client


def generate(http: httpx.Client, tenant: TenantKeys, **body: Any) -> dict[str, Any]:
    response = http.post(
        "/v1/generations",
        json={"prompt": "a red fox", "size": "64x64", **body},
        headers=tenant.auth("creator"),
    )
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:imagegen:problem:{code}"
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert "Traceback" not in response.text
    assert "ig_live_" not in response.text
    return body


# --- the endpoints -------------------------------------------------------------------------


def test_a_creator_generates_finds_saves_and_downloads(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    first = generate(http, alpha, prompt="a red fox in the snow", n=2, seed=7)
    second = generate(http, alpha, prompt="a lighthouse at dusk")
    assert first["status"] == "succeeded"
    assert first["credits_charged"] == 2
    assert [(i["width"], i["height"], i["format"]) for i in first["images"]] == [
        (64, 64, "png")
    ] * 2
    assert "path" not in json.dumps(first)  # no server paths

    viewer = alpha.auth("viewer")
    assert http.get(f"/v1/generations/{first['id']}", headers=viewer).json()["id"] == first["id"]
    page = http.get("/v1/generations", params={"limit": 1}, headers=viewer).json()
    assert [g["id"] for g in page["items"]] == [second["id"]]
    rest = http.get(
        "/v1/generations", params={"limit": 1, "cursor": page["next_cursor"]}, headers=viewer
    ).json()
    assert [g["id"] for g in rest["items"]] == [first["id"]]
    found = http.get("/v1/generations", params={"text": "fox"}, headers=viewer).json()
    assert [g["id"] for g in found["items"]] == [first["id"]]

    image = first["images"][0]
    content = http.get(image["content_url"], headers=viewer)
    assert content.status_code == 200
    assert content.headers["content-type"] == "image/png"
    assert content.content.startswith(b"\x89PNG")
    assert len(content.content) == image["byte_size"]

    saved = http.post(
        "/v1/assets",
        json={"image_id": image["id"], "tags": ["Winter"], "title": "Fox"},
        headers={**alpha.auth("reviewer"), "Idempotency-Key": "save-1"},
    )
    assert saved.status_code == 201
    assert saved.headers["location"] == f"/v1/assets/{saved.json()['id']}"
    again = http.post("/v1/assets", json={"image_id": image["id"]}, headers=alpha.auth("creator"))
    assert again.status_code == 200
    assert again.json()["id"] == saved.json()["id"]
    asset = http.get(f"/v1/assets/{saved.json()['id']}", headers=viewer).json()
    assert asset["tags"] == ["winter"]
    assert asset["provenance"]["generation_id"] == first["id"]
    listed = http.get("/v1/assets", params={"tag": "winter"}, headers=viewer).json()
    assert [a["id"] for a in listed["items"]] == [asset["id"]]
    file = http.get(asset["content_url"], headers=viewer)
    assert file.headers["content-type"] == "image/png"
    assert file.content.startswith(b"\x89PNG")

    models = http.get("/v1/models", headers=viewer).json()["models"]
    local = next(m for m in models if m["provider"] == "local")
    assert local["credits_per_image"] == 1
    assert local["price"]
    estimate = http.post("/v1/estimate", json={"n": 3, "size": "64x64"}, headers=viewer).json()
    assert estimate["credits"] == 3
    assert estimate["provider"] == "local"
    balance = http.get("/v1/credits/balance", headers=viewer).json()
    assert balance == {
        "tenant_id": alpha.id,
        "balance": 97,
        "reserved": 0,
        "available": 97,
        "replayed": False,
    }


def test_replaying_an_idempotency_key_returns_the_first_generation_and_charges_once(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, beta = tenants
    body = {"prompt": "a red fox", "size": "64x64", "n": 2}
    headers = {**alpha.auth("creator"), "Idempotency-Key": "order-42"}
    first = http.post("/v1/generations", json=body, headers=headers)
    replay = http.post("/v1/generations", json=body, headers=headers)
    assert first.status_code == 201
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["replayed"]
    assert replay.json()["id"] == first.json()["id"]
    assert http.get("/v1/credits/balance", headers=headers).json()["available"] == 98
    conflict = http.post("/v1/generations", json={**body, "n": 1}, headers=headers)
    assert_problem(conflict, 422, "idempotency_conflict")
    # keys are per tenant: the same key in another tenant is a new generation
    other = http.post(
        "/v1/generations", json=body, headers={**beta.auth("admin"), "Idempotency-Key": "order-42"}
    )
    assert other.status_code == 201
    assert other.json()["id"] != first.json()["id"]


def test_grants_are_for_admins_and_an_idempotency_key_adds_credits_once(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    body = {"amount": 50, "memo": "top-up"}
    denied = http.post("/v1/credits/grants", json=body, headers=alpha.auth("creator"))
    assert_problem(denied, 403, "permission_denied")
    headers = {**alpha.auth("admin"), "Idempotency-Key": "grant-1"}
    first = http.post("/v1/credits/grants", json=body, headers=headers)
    replay = http.post("/v1/credits/grants", json=body, headers=headers)
    assert first.status_code == 201
    assert first.json()["balance"] == 150
    assert replay.status_code == 200
    assert replay.json() == {**first.json(), "replayed": True}
    assert http.get("/v1/credits/balance", headers=headers).json()["balance"] == 150
    assert_problem(
        http.post("/v1/credits/grants", json={"amount": 5}, headers=headers),
        422,
        "idempotency_conflict",
    )
    unkeyed = http.post("/v1/credits/grants", json={"amount": 5}, headers=alpha.auth("admin"))
    assert unkeyed.status_code == 201
    assert unkeyed.json()["balance"] == 155
    assert_problem(
        http.post("/v1/credits/grants", json={"amount": 0}, headers=alpha.auth("admin")),
        422,
        "invalid_parameter",
    )


def test_errors_are_problem_details_with_a_stable_type(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys], service: tuple[str, Settings]
) -> None:
    alpha, _ = tenants
    auth = alpha.auth("creator")
    missing = assert_problem(http.get("/v1/credits/balance"), 401, "authentication_required")
    assert "Bearer" in missing["detail"]
    assert http.get("/v1/credits/balance").headers["www-authenticate"] == "Bearer"
    forged = alpha.keys["admin"][:-4] + "AAAA"
    for key in (forged, "ig_live_nonsense", "sk-something-else", "ig_live_" + "x" * 300):
        response = http.get("/v1/credits/balance", headers={"Authorization": f"Bearer {key}"})
        assert_problem(response, 401, "authentication_required")
    assert_problem(
        http.get("/v1/credits/balance", headers={"Authorization": "Basic abc"}),
        401,
        "authentication_required",
    )
    assert_problem(
        http.get("/v1/generations/gen_missing", headers=auth), 404, "generation_not_found"
    )
    assert_problem(http.get("/v1/nowhere", headers=auth), 404, "not_found")
    assert_problem(http.delete("/v1/generations", headers=auth), 405, "method_not_allowed")
    invalid = assert_problem(
        http.post("/v1/generations", json={"prompt": "x", "n": "many"}, headers=auth),
        422,
        "validation_error",
    )
    assert invalid["errors"][0]["location"] == "body.n"
    assert "many" not in json.dumps(invalid)
    assert_problem(
        http.post("/v1/generations", json={"prompt": "x", "colour": "red"}, headers=auth),
        422,
        "validation_error",
    )
    assert_problem(
        http.post(
            "/v1/generations",
            content=b'{"prompt": ',
            headers={**auth, "content-type": "application/json"},
        ),
        400,
        "malformed_request",
    )
    assert_problem(
        http.post("/v1/generations", json={"prompt": "x", "size": "banana"}, headers=auth),
        422,
        "invalid_size",
    )
    assert_problem(
        http.post("/v1/generations", json={"prompt": "x", "provider": "nope"}, headers=auth),
        422,
        "unknown_provider",
    )
    assert_problem(
        http.post("/v1/generations", json={"prompt": "x", "n": 200}, headers=auth),
        422,
        "invalid_parameter",
    )
    blank_tag = http.get(
        "/v1/assets", params={"tag": "\x85"}, headers=auth
    )  # found by schemathesis
    assert_problem(blank_tag, 422, "invalid_parameter")
    big = {"prompt": "x" * (MAX_BODY + 1)}
    assert_problem(http.post("/v1/generations", json=big, headers=auth), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"prompt": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    streamed = http.post(
        "/v1/generations", content=chunks(), headers={**auth, "content-type": "application/json"}
    )
    assert_problem(streamed, 413, "request_too_large")

    for _ in range(10):  # spend the 100 starting credits
        generate(http, alpha, n=10)
    poor = assert_problem(
        http.post("/v1/generations", json={"prompt": "x", "size": "64x64"}, headers=auth),
        402,
        "insufficient_credits",
    )
    assert poor["details"]["available"] == 0

    _, settings = service
    call_access(settings, "revoke_key", alpha.key_ids["viewer"])
    revoked = http.get("/v1/credits/balance", headers=alpha.auth("viewer"))
    assert_problem(revoked, 401, "authentication_required")


# --- roles ---------------------------------------------------------------------------------

# One request per permission; each role must get exactly what PERMISSIONS gives it.
PROBES: dict[Permission, tuple[str, str, dict[str, Any] | None]] = {
    Permission.MODELS_READ: ("GET", "/v1/models", None),
    Permission.GENERATIONS_READ: ("GET", "/v1/generations", None),
    Permission.GENERATIONS_CREATE: ("POST", "/v1/generations", {"prompt": "a", "size": "64x64"}),
    Permission.ASSETS_READ: ("GET", "/v1/assets", None),
    Permission.ASSETS_CREATE: ("POST", "/v1/assets", {"image_id": "{image}"}),
    Permission.CREDITS_READ: ("GET", "/v1/credits/balance", None),
    Permission.CREDITS_GRANT: ("POST", "/v1/credits/grants", {"amount": 1}),
    Permission.WEBHOOKS_MANAGE: ("GET", "/v1/webhooks", None),
    Permission.USAGE_READ: ("GET", "/v1/usage", None),
    Permission.KEYS_MANAGE: ("GET", "/v1/keys", None),
}


def test_each_role_can_do_exactly_what_the_permission_table_says(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    image = generate(http, alpha)["images"][0]["id"]
    assert set(PROBES) == set(Permission)
    for role, permission in itertools.product(Role, Permission):
        method, path, body = PROBES[permission]
        if body is not None:
            body = {
                k: v.replace("{image}", image) if isinstance(v, str) else v for k, v in body.items()
            }
        response = http.request(method, path, json=body, headers=alpha.auth(role.value))
        if permission in PERMISSIONS[role]:
            assert response.status_code in (200, 201), (role, permission, response.text)
        else:
            assert_problem(response, 403, "permission_denied")


# --- usage -------------------------------------------------------------------------------


def test_the_usage_report_adds_up_the_tenants_charges_and_only_its_own(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, beta = tenants
    charged = [
        generate(http, alpha, n=2)["credits_charged"],
        generate(http, alpha)["credits_charged"],
    ]
    generate(http, beta, n=3)
    balance = http.get("/v1/credits/balance", headers=alpha.auth("admin")).json()

    response = http.get("/v1/usage", params={"by": "user,model"}, headers=alpha.auth("admin"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    report = response.json()
    assert report["tenant_id"] == alpha.id
    assert report["by"] == ["user", "model"]
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert datetime.fromisoformat(report["start"]) == this_month  # the default: this month
    total = report["total"]
    assert total["credits"] == sum(charged) == 100 - balance["available"]
    assert (total["generations"], total["images"], total["refunds"]) == (2, 3, 0)
    assert Decimal(total["revenue_usd"]) == sum(charged) * Decimal("0.01")
    usd = Decimal(total["revenue_usd"]) - Decimal(total["provider_cost_usd"])
    assert Decimal(total["margin_usd"]) == usd
    assert "user" not in total  # the total has no dimensions
    assert [(r["user"], r["model"], r["credits"]) for r in report["rows"]] == [
        (alpha.key_ids["creator"], "local/procedural", sum(charged))
    ]
    assert set(report["rows"][0]) == set(total) | {"user", "model"}

    # The reviewer (finance) reads it too; whatever the request says, it is the caller's tenant.
    as_reviewer = http.get(
        "/v1/usage", params={"by": "user", "tenant_id": beta.id}, headers=alpha.auth("reviewer")
    ).json()
    assert as_reviewer["tenant_id"] == alpha.id
    assert as_reviewer["total"]["credits"] == sum(charged)
    beta_report = http.get("/v1/usage", params={"by": "user"}, headers=beta.auth("admin")).json()
    assert beta_report["tenant_id"] == beta.id
    assert beta_report["total"]["images"] == 3
    assert {r["user"] for r in beta_report["rows"]} == {beta.key_ids["creator"]}
    text = json.dumps(beta_report)
    assert all(secret not in text for secret in (alpha.id, *alpha.key_ids.values()))

    # A range instead of a month; an earlier month is empty.
    now = datetime.now(UTC)
    ranged = http.get(
        "/v1/usage",
        params={
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": (now + timedelta(hours=1)).isoformat(),
        },
        headers=alpha.auth("admin"),
    ).json()
    assert ranged["total"]["credits"] == sum(charged)
    assert ranged["rows"] == [total]
    empty = http.get("/v1/usage", params={"period": "2020-01"}, headers=alpha.auth("admin")).json()
    assert empty["rows"] == []
    assert empty["total"]["credits"] == 0


def test_creators_and_viewers_may_not_read_the_usage_report(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    generate(http, alpha)
    for role, params in itertools.product(("creator", "viewer"), [{}, *BAD_USAGE_REQUESTS]):
        # The role is checked before the request's parameters.
        response = http.get("/v1/usage", params=params, headers=alpha.auth(role))
        body = assert_problem(response, 403, "permission_denied")
        assert "usage:read" in body["detail"]
        assert "credits" not in body


def test_the_usage_report_as_csv(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    charged = generate(http, alpha, n=2)["credits_charged"]
    auth = alpha.auth("admin")
    by_accept = http.get(
        "/v1/usage", params={"by": "day,provider"}, headers={**auth, "Accept": "text/csv"}
    )
    by_format = http.get("/v1/usage", params={"by": "day,provider", "format": "csv"}, headers=auth)
    for response in (by_accept, by_format):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert list(rows[0])[:3] == ["day", "provider", "generations"]
        today = datetime.now(UTC).date().isoformat()
        assert [(r["day"], r["provider"], r["credits"]) for r in rows] == [
            (today, "local", str(charged)),
            ("TOTAL", "", str(charged)),
        ]
    assert by_accept.text == by_format.text
    # format=json wins over the Accept header.
    as_json = http.get(
        "/v1/usage", params={"format": "json"}, headers={**auth, "Accept": "text/csv"}
    )
    assert as_json.json()["total"]["credits"] == charged


BAD_USAGE_REQUESTS = [
    {"by": "user,colour"},
    {"period": "2026-13"},
    {"period": "november"},
    {"period": "9999-12"},  # its end is past year 9999
    {"period": "2026-11", "from": "2026-11-01T00:00:00Z"},
    {"from": "2026-11-01T00:00:00Z"},
    {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
]


def test_a_bad_usage_report_request_is_a_422_problem(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, _ = tenants
    for params in BAD_USAGE_REQUESTS:
        response = http.get("/v1/usage", params=params, headers=alpha.auth("admin"))
        assert_problem(response, 422, "invalid_parameter")
    colour = http.get("/v1/usage", params={"by": "colour"}, headers=alpha.auth("admin")).json()
    assert "user, project, provider, model, operation, day" in colour["detail"]
    invalid = http.get("/v1/usage", params={"format": "xml"}, headers=alpha.auth("admin"))
    assert_problem(invalid, 422, "validation_error")


# --- isolation -----------------------------------------------------------------------------

WRITES = {
    ("POST", "/v1/generations"): Permission.GENERATIONS_CREATE,
    ("POST", "/v1/credits/grants"): Permission.CREDITS_GRANT,
    ("POST", "/v1/estimate"): Permission.MODELS_READ,
    ("POST", "/v1/keys"): Permission.KEYS_MANAGE,
    ("GET", "/v1/keys"): Permission.KEYS_MANAGE,  # not a write, but admin only as well
}
READS = [
    "/v1/generations/{generation}",
    "/v1/images/{image}/content",
    "/v1/assets/{asset}",
    "/v1/assets/{asset}/content",
    "/v1/keys/{key}",
]


def test_no_request_of_one_tenant_ever_reads_or_changes_anothers_data(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    alpha, beta = tenants
    made = generate(http, alpha, prompt="alpha's secret fox", tags=["alpha"])
    ids = {
        "generation": made["id"],
        "image": made["images"][0]["id"],
        "asset": made["assets"][0]["id"],
        "key": alpha.key_ids["viewer"],  # the key the snapshot reads with
    }
    headers = alpha.auth("viewer")

    def snapshot() -> list[Any]:
        return [
            http.get(f"/v1/generations/{ids['generation']}", headers=headers).json(),
            http.get(f"/v1/assets/{ids['asset']}", headers=headers).json(),
            http.get("/v1/credits/balance", headers=headers).json(),
            http.get("/v1/generations", headers=headers).json(),
            [  # last_used_at moves with the snapshot's own requests
                {k: v for k, v in key.items() if k != "last_used_at"}
                for key in http.get("/v1/keys", headers=alpha.auth("admin")).json()["items"]
            ],
        ]

    before = snapshot()
    leaks = [*ids.values(), "alpha's secret fox"]

    @hypothesis_settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(
        role=st.sampled_from(ROLES),
        request=st.one_of(
            st.tuples(st.just("GET"), st.sampled_from(READS), st.none()),
            st.tuples(
                st.just("POST"),
                st.just("/v1/assets"),
                st.fixed_dictionaries({"image_id": st.just("{image}")}),
            ),
            st.tuples(
                st.just("POST"),
                st.just("/v1/edits"),
                st.fixed_dictionaries({"source_asset_id": st.just("{asset}")}),
            ),
            st.tuples(
                st.just("GET"),
                st.sampled_from(["/v1/generations", "/v1/assets", "/v1/credits/balance"]),
                st.none(),
            ),
            st.sampled_from(
                [
                    ("POST", "/v1/generations", {"prompt": "beta's fox", "size": "64x64"}),
                    ("POST", "/v1/credits/grants", {"amount": 7}),
                    ("POST", "/v1/estimate", {"n": 2}),
                    ("POST", "/v1/keys", {"role": "admin"}),
                    ("GET", "/v1/keys", None),
                    ("POST", "/v1/keys/{key}/rotate", None),
                    ("POST", "/v1/keys/{key}/revoke", None),
                ]
            ),
        ),
    )
    def beta_tries(role: str, request: tuple[str, str, dict[str, Any] | None]) -> None:
        method, template, body = request
        path = template.format(**ids)
        filled = {k: v.format(**ids) if isinstance(v, str) else v for k, v in (body or {}).items()}
        auth = beta.auth(role)

        def send(path: str, filled: dict[str, Any]) -> httpx.Response:
            if path == "/v1/edits":
                form = {**filled, "provider": "stability", "model": REMOVE_BG}
                return http.post(path, data=form, headers=auth)
            return http.request(method, path, json=filled or None, headers=auth)

        response = send(path, filled)
        named = [v for k, v in ids.items() if f"{{{k}}}" in f"{template}{body}"]
        for leak in leaks:
            if leak not in named:  # echoing the id the caller sent is not a leak
                assert leak not in response.text
        if named:  # alpha's id answers exactly as an id that does not exist
            ghosts = {k: v[:4] + "0" * (len(v) - 4) for k, v in ids.items()}
            ghost = send(
                template.format(**ghosts), {k: v.format(**ghosts) for k, v in (body or {}).items()}
            )
            masked = response.text
            for key, value in ids.items():
                masked = masked.replace(value, ghosts[key])
            assert (ghost.status_code, ghost.text) == (response.status_code, masked)
        if (method, template) in WRITES:  # beta's own writes: allowed by the role, or 403
            if WRITES[method, template] in PERMISSIONS[Role(role)]:
                assert response.status_code in (200, 201), response.text
            else:
                assert_problem(response, 403, "permission_denied")
        elif named:
            permitted = {
                "/v1/assets": Permission.ASSETS_CREATE,
                "/v1/edits": Permission.GENERATIONS_CREATE,
            }.get(path, Permission.GENERATIONS_READ)
            if template.startswith("/v1/keys/"):
                permitted = Permission.KEYS_MANAGE
            if permitted in PERMISSIONS[Role(role)]:
                assert response.status_code == 404, response.text
                assert response.headers["content-type"] == PROBLEM
            else:
                assert_problem(response, 403, "permission_denied")
        else:
            assert response.status_code == 200

    beta_tries()
    assert snapshot() == before


# --- keys from the CLI ---------------------------------------------------------------------


def test_keys_created_rotated_and_revoked_from_the_cli_take_effect_at_once(
    http: httpx.Client,
    service: tuple[str, Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from imagegen.interfaces.cli import app

    _, settings = service
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("IMAGEGEN_DATABASE_URL", settings.database_url_value())
    runner = CliRunner()

    def cli(*args: str) -> dict[str, Any]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    name = f"gamma-{next(_names)}"
    tenant = cli("tenants", "create", name)
    assert tenant["name"] == name
    assert tenant["id"].startswith("ten_")
    created = cli("keys", "create", "--tenant", name, "--role", "creator", "--name", "ci")
    key = created["key"]
    assert re.fullmatch(r"ig_live_[0-9A-Z]+_[A-Za-z0-9_-]{43}", key)
    assert created["prefix"] == key.rsplit("_", 1)[0] or key.startswith(created["prefix"] + "_")
    assert (
        http.get("/v1/credits/balance", headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )

    listed = cli("keys", "list", "--tenant", tenant["id"])["keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert listed[0]["last_used_at"] is not None
    assert "key" not in listed[0]
    assert key not in json.dumps(listed)

    rotated = cli("keys", "rotate", created["id"])
    assert rotated["replaces"] == created["id"]
    assert rotated["role"] == "creator"
    new = {"Authorization": f"Bearer {rotated['key']}"}
    old = {"Authorization": f"Bearer {key}"}
    assert_problem(http.get("/v1/credits/balance", headers=old), 401, "authentication_required")
    assert http.get("/v1/credits/balance", headers=new).status_code == 200

    cli("keys", "revoke", rotated["id"])
    assert_problem(http.get("/v1/credits/balance", headers=new), 401, "authentication_required")
    bad = runner.invoke(app, ["keys", "create", "--tenant", name, "--role", "owner"])
    assert bad.exit_code == 2
    assert "not one of admin, creator, reviewer, viewer" in bad.output
    unknown = runner.invoke(app, ["keys", "create", "--tenant", "nobody", "--role", "viewer"])
    assert unknown.exit_code == 2


# --- edits ---------------------------------------------------------------------------------


def test_an_uploaded_image_is_edited_into_a_new_generation(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path
) -> None:
    alpha, _ = tenants
    made = generate(http, alpha, size="256x256")
    png = http.get(made["images"][0]["content_url"], headers=alpha.auth("viewer")).content
    form = {"operation": "remove_background", "provider": "stability", "model": REMOVE_BG}
    auth = {**alpha.auth("creator"), "Idempotency-Key": "edit-1"}
    edited = http.post(
        "/v1/edits", data=form, files={"image": ("photo.png", png, "image/png")}, headers=auth
    )
    assert edited.status_code == 201, edited.text
    result = edited.json()
    assert result["operation"] == "remove_background"
    assert result["status"] == "succeeded"
    assert result["model"] == REMOVE_BG
    assert len(result["images"]) == 1
    replay = http.post(
        "/v1/edits", data=form, files={"image": ("photo.png", png, "image/png")}, headers=auth
    )
    assert replay.status_code == 200
    assert replay.json()["id"] == result["id"]

    creator = alpha.auth("creator")
    not_an_image = {"image": ("photo.png", b"GIF89a not really", "image/png")}
    assert_problem(
        http.post("/v1/edits", data=form, files=not_an_image, headers=creator),
        415,
        "unsupported_media_type",
    )
    too_big = {"image": ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * MAX_UPLOAD, "image/png")}
    assert_problem(
        http.post("/v1/edits", data=form, files=too_big, headers=creator), 413, "request_too_large"
    )
    assert_problem(
        http.post("/v1/edits", data={**form, "source_asset_id": "ast_nope"}, headers=creator),
        404,
        "asset_not_found",
    )
    assert_problem(
        http.post(
            "/v1/edits", data=form, files={"image": ("p.png", png)}, headers=alpha.auth("viewer")
        ),
        403,
        "permission_denied",
    )


# --- provider failures and the wait limit ----------------------------------------------------


def test_provider_failures_are_429_or_503_and_charge_nothing(
    http: httpx.Client, tenants: tuple[TenantKeys, TenantKeys], stability: tuple[str, Any]
) -> None:
    alpha, _ = tenants
    faults = stability[1].state.faults
    body = {"prompt": "a fox", "provider": "stability", "model": "stable-image-core"}
    auth = alpha.auth("creator")
    faults.add("rate_limit", retry_after=7)
    limited = http.post("/v1/generations", json=body, headers=auth)
    assert_problem(limited, 429, "rate_limited")
    assert limited.headers["retry-after"] == "7"
    faults.add("server_error", status=503)
    assert_problem(
        http.post("/v1/generations", json=body, headers=auth), 503, "provider_unavailable"
    )
    faults.add("content_refusal")
    assert_problem(
        http.post("/v1/generations", json=body, headers=auth), 422, "content_policy_violation"
    )
    assert http.get("/v1/credits/balance", headers=auth).json()["available"] == 100
    failed = http.get("/v1/generations", params={"status": "failed"}, headers=auth).json()
    assert len(failed["items"]) == 3


def test_a_generation_longer_than_the_wait_limit_goes_on_and_is_found_later(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path, local_latency_ms=1500)
    alpha = provision(settings, "slow")
    app = create_app(settings, service=ServiceSettings(generation_wait_seconds=0.2))
    body = {"prompt": "a slow fox", "size": "64x64"}
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        keyed = {**alpha.auth("creator"), "Idempotency-Key": "slow-1"}
        accepted = http.post("/v1/generations", json=body, headers=keyed)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "running"
        location = accepted.headers["location"]
        pending = assert_problem(
            http.post("/v1/generations", json=body, headers=alpha.auth("creator")),
            504,
            "generation_pending",
        )
        assert "Idempotency-Key" in pending["detail"]
        for _ in range(100):
            done = http.get(location, headers=keyed).json()
            if done["status"] == "succeeded":
                break
            time.sleep(0.05)
        assert done["status"] == "succeeded"
        assert done["credits_charged"] == 1
    # the server stopped only after the unkeyed generation finished too: nothing is left held
    with running(create_app(settings)) as url, httpx.Client(base_url=url) as http:
        history = http.get("/v1/generations", headers=alpha.auth("viewer")).json()["items"]
        assert [g["status"] for g in history] == ["succeeded", "succeeded"]
        assert http.get("/v1/credits/balance", headers=alpha.auth("viewer")).json() == {
            "tenant_id": alpha.id,
            "balance": 98,
            "reserved": 0,
            "available": 98,
            "replayed": False,
        }


# --- imagegen serve ----------------------------------------------------------------------------


def test_imagegen_serve_runs_the_service(cli_env: dict[str, str], tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    imagegen = str(Path(sys.executable).parent / "imagegen")
    bad = subprocess.run(
        [imagegen, "serve"],
        env={**cli_env, "IMAGEGEN_HTTP_MAX_BODY_BYTES": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: IMAGEGEN_HTTP_MAX_BODY_BYTES:")
    assert "Traceback" not in bad.stderr

    settings = Settings(data_dir=Path(cli_env["IMAGEGEN_DATA_DIR"]))
    tenant = provision(settings, "served")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [imagegen, "serve", "--port", str(port)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        made = httpx.post(
            f"{url}/v1/generations",
            json={"prompt": "a fox", "size": "64x64"},
            headers=tenant.auth("creator"),
        )
        assert made.status_code == 201, made.text
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
    assert f"imagegen service on http://127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr
