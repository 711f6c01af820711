"""Webhooks end to end over real sockets: the HTTP service (uvicorn, its lifespan running the
dispatcher) and webhook receivers on loopback that verify every Standard Webhooks signature
(``imagegen.testing.webhooks.WebhookReceiver``). A generation made through the API reaches
the tenant's receiver, signed; failures are retried with the same webhook-id; a transaction
that does not commit sends nothing; redelivery; tenant isolation; the role; and the address
policy (the ``imagegen webhooks`` command without IMAGEGEN_WEBHOOKS_ALLOW_PRIVATE)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cli_runner import imagegen
from http_service import TenantKeys, provision, running

from conftest import empty_postgres
from imagegen.bootstrap.settings import Settings
from imagegen.interfaces.http import create_app
from imagegen.testing.webhooks import WebhookReceiver


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings]]:
    data = tmp_path_factory.mktemp(f"webhooks-{request.param}")
    url = f"sqlite:///{data / 'imagegen.db'}"
    if request.param == "postgres":
        url = request.getfixturevalue("shared_postgres_url")
        empty_postgres(url)
    settings = Settings(
        data_dir=data,
        database_url=url,  # type: ignore[arg-type]
        starting_credits=100,
        webhooks_allow_private=True,  # the receivers are on loopback
        webhooks_retry_schedule=[0.2, 0.2, 0.2],
        webhooks_jitter=0,
        webhooks_poll_seconds=0.05,
        webhooks_timeout_seconds=5,
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
    return provision(service[1], f"hooks-a-{n}"), provision(service[1], f"hooks-b-{n}")


@pytest.fixture
def receivers() -> Iterator[tuple[tuple[WebhookReceiver, str], tuple[WebhookReceiver, str]]]:
    ours, theirs = WebhookReceiver(), WebhookReceiver()
    with ours.serve() as our_url, theirs.serve() as their_url:
        yield (ours, our_url), (theirs, their_url)


def register(
    http: httpx.Client, tenant: TenantKeys, receiver: WebhookReceiver, url: str, *events: str
) -> dict[str, Any]:
    response = http.post(
        "/v1/webhooks", json={"url": url, "events": list(events)}, headers=tenant.auth()
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["secret"].startswith("whsec_")
    receiver.secret = body["secret"]
    return body


def generate(http: httpx.Client, tenant: TenantKeys, **extra: Any) -> httpx.Response:
    return http.post(
        "/v1/generations",
        json={"prompt": "a red fox", "size": "64x64", **extra},
        headers=tenant.auth("creator"),
    )


def deliveries(http: httpx.Client, tenant: TenantKeys, endpoint_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=tenant.auth())
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_a_generation_reaches_the_tenants_receiver_signed_and_retried_with_one_webhook_id(
    http: httpx.Client,
    tenants: tuple[TenantKeys, TenantKeys],
    receivers: tuple[tuple[WebhookReceiver, str], tuple[WebhookReceiver, str]],
) -> None:
    alpha, beta = tenants
    (ours, our_url), (theirs, their_url) = receivers
    endpoint = register(http, alpha, ours, our_url, "generation.succeeded", "asset.created")
    register(http, beta, theirs, their_url, "*")
    listed = http.get("/v1/webhooks", headers=alpha.auth()).json()["data"]
    assert [e["id"] for e in listed] == [endpoint["id"]]
    assert "secret" not in listed[0]

    first = generate(http, alpha)
    assert first.status_code == 201, first.text
    [received] = ours.wait_for("generation.succeeded")
    assert received.payload["data"]["id"] == first.json()["id"]
    assert received.payload["data"]["tenant_id"] == alpha.id
    assert received.webhook_id.startswith("evt_")
    assert ours.rejected == []

    # The receiver fails twice: the third attempt delivers it, with the same webhook-id.
    ours.fail_next(2, 500)
    second = generate(http, alpha)
    assert second.status_code == 201
    received = ours.wait_for("generation.succeeded", count=2)[1]
    assert received.payload["data"]["id"] == second.json()["id"]
    assert ours.attempts.count(received.webhook_id) == 3
    # The receiver has answered; the dispatcher records the attempt just after: poll for it.
    deadline = time.monotonic() + 10
    while True:
        log = deliveries(http, alpha, endpoint["id"])
        newest = next(d for d in log if d["event_id"] == received.webhook_id)
        if newest["status"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (newest["status"], newest["attempts"], newest["last_status_code"]) == (
        "succeeded",
        3,
        204,
    )

    # A request that does not commit (refused before anything is made) sends nothing.
    refused = generate(http, alpha, provider="no-such-provider")
    assert refused.status_code == 422
    time.sleep(0.5)
    assert len(ours.received) == 2
    assert len(deliveries(http, alpha, endpoint["id"])) == 2

    # Redeliver: the same event again, with its webhook-id.
    redelivered = http.post(
        f"/v1/webhooks/deliveries/{newest['id']}/redeliver", headers=alpha.auth()
    )
    assert redelivered.status_code == 202, redelivered.text
    again = ours.wait_for("generation.succeeded", count=3)[2]
    assert again.webhook_id == received.webhook_id
    assert again.payload == received.payload

    # The other tenant's receiver never got our events; its own generation reaches it only.
    assert theirs.received == []
    assert generate(http, beta).status_code == 201
    [theirs_received] = theirs.wait_for("generation.succeeded")
    assert theirs_received.payload["data"]["tenant_id"] == beta.id
    assert len(ours.of("generation.succeeded")) == 3
    assert ours.rejected == []
    assert theirs.rejected == []


def test_webhooks_are_the_tenants_own_and_the_admins(
    http: httpx.Client,
    tenants: tuple[TenantKeys, TenantKeys],
    receivers: tuple[tuple[WebhookReceiver, str], tuple[WebhookReceiver, str]],
) -> None:
    alpha, beta = tenants
    (ours, our_url), _ = receivers
    endpoint = register(http, alpha, ours, our_url, "*")
    assert generate(http, alpha).status_code == 201
    ours.wait_for("generation.succeeded")
    [delivery] = deliveries(http, alpha, endpoint["id"])
    for method, path in [
        ("GET", f"/v1/webhooks/{endpoint['id']}/deliveries"),
        ("DELETE", f"/v1/webhooks/{endpoint['id']}"),
        ("POST", f"/v1/webhooks/deliveries/{delivery['id']}/redeliver"),
    ]:
        assert http.request(method, path, headers=beta.auth()).status_code == 404
    assert http.get("/v1/webhooks", headers=beta.auth()).json()["data"] == []
    creator = http.get("/v1/webhooks", headers=alpha.auth("creator"))
    assert creator.status_code == 403
    bad = http.post("/v1/webhooks", json={"url": our_url, "events": ["nope"]}, headers=alpha.auth())
    assert bad.status_code == 422
    assert http.delete(f"/v1/webhooks/{endpoint['id']}", headers=alpha.auth()).status_code == 204
    assert http.get("/v1/webhooks", headers=alpha.auth()).json()["data"] == []


def test_the_command_refuses_a_private_address_unless_allowed(cli_env: dict[str, str]) -> None:
    refused = imagegen(
        cli_env, "webhooks", "create", "--url", "http://127.0.0.1:9/hook", "--events", "*"
    )
    assert refused.code != 0
    assert "public addresses" in refused.stderr
    allowed = imagegen(
        {**cli_env, "IMAGEGEN_WEBHOOKS_ALLOW_PRIVATE": "true"},
        "webhooks",
        "create",
        "--url",
        "http://127.0.0.1:9/hook?token=x",
        "--events",
        "generation.succeeded",
        "--json",
    ).json()
    assert allowed["secret"].startswith("whsec_")
    listed = imagegen(cli_env, "webhooks", "list", "--json").json()
    assert [w["id"] for w in listed["webhooks"]] == [allowed["id"]]
    delivered = imagegen(cli_env, "webhooks", "deliver", "--once", "--json").json()
    assert delivered == {"events": 0, "created": 0, "sent": 0, "succeeded": 0, "failed": 0}
