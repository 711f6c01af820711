"""Webhooks in the core, on SQLite and PostgreSQL, with a recording transport: the fan-out
from the outbox (only committed events, only the tenant's endpoints, the event types they
want), retries on the backoff schedule until dead, redelivery, the delivery log, and the
address policy of the real transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import attrs
import pytest

from imagegen import AsyncImageGen, Settings
from imagegen.application.use_cases.webhooks import DispatchPolicy
from imagegen.application.webhook_ports import SendResult
from imagegen.bootstrap.webhooks import Webhooks, build_webhooks
from imagegen.domain.errors import ImageGenError, InvalidParameter, NotFound
from imagegen.domain.events import DomainEvent
from imagegen.domain.webhooks import DeliveryStatus
from imagegen.infrastructure.webhooks.transport import HttpWebhookTransport
from imagegen.testing import ManualClock

PUBLIC = "https://hooks.example.com/in?token=abc"


class RecordingTransport:
    """Accepts public-looking URLs without DNS; answers from ``answers`` (then 200)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []  # url, webhook-id, body
        self.answers: list[int] = []

    async def check_url(self, url: str) -> None:
        if "127.0.0.1" in url:
            raise InvalidParameter("refused")

    async def send(self, url: str, secret: str, event_id: str, payload: str) -> SendResult:
        assert secret.startswith("whsec_")
        self.sent.append((url, event_id, json.loads(payload)))
        status = self.answers.pop(0) if self.answers else 200
        return SendResult(status, None if status < 300 else f"HTTP {status}")

    async def aclose(self) -> None:
        pass


@attrs.define
class World:
    client: AsyncImageGen
    webhooks: Webhooks
    transport: RecordingTransport
    clock: ManualClock


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    client = AsyncImageGen(settings)
    clock = ManualClock()
    client.container.gateways.clock.override(clock)
    transport = RecordingTransport()
    webhooks = build_webhooks(client.container, transport)
    policy = DispatchPolicy(schedule=(timedelta(seconds=1), timedelta(seconds=2)), jitter=0)
    object.__setattr__(webhooks.dispatcher, "policy", policy)
    async with client:
        yield World(client, webhooks, transport, clock)


async def test_a_committed_generation_is_delivered_once_to_the_tenants_endpoints(
    world: World,
) -> None:
    manage = world.webhooks.manage
    ours = await manage.create("default", PUBLIC, ["generation.succeeded", "asset.created"])
    everything = await manage.create("default", PUBLIC + "2", ["*"])
    failed_only = await manage.create("default", PUBLIC + "3", ["generation.failed"])
    theirs = await manage.create("other", PUBLIC + "4", ["*"])
    assert ours.secret.startswith("whsec_")
    assert ours.secret != everything.secret

    result = await world.client.generate("a red fox")
    await world.client.save_to_dam(result.images[0])
    report = await world.webhooks.dispatcher.run_once()
    assert (report.sent, report.succeeded) == (4, 4)
    urls = sorted((url, body["type"]) for url, _, body in world.transport.sent)
    assert urls == [
        (PUBLIC, "asset.created"),
        (PUBLIC, "generation.succeeded"),
        (PUBLIC + "2", "asset.created"),
        (PUBLIC + "2", "generation.succeeded"),
    ]
    body = next(b for _, _, b in world.transport.sent if b["type"] == "generation.succeeded")
    assert body["data"]["id"] == result.id
    assert body["data"]["tenant_id"] == "default"
    # The same event has one webhook-id at every endpoint: the outbox id.
    ids = {b["type"]: i for _, i, b in world.transport.sent}
    assert ids["generation.succeeded"].startswith("evt_")
    assert (await world.webhooks.dispatcher.run_once()).sent == 0  # published, delivered
    assert not await manage.deliveries("default", failed_only.endpoint.id)
    assert not await manage.deliveries("other", theirs.endpoint.id)
    log = await manage.deliveries("default", ours.endpoint.id)
    assert [d.status for d in log] == [DeliveryStatus.SUCCEEDED] * 2
    assert all(d.attempts == 1 and d.last_status_code == 200 for d in log)


def _event(aggregate_id: str, clock: ManualClock) -> DomainEvent:
    return DomainEvent("generation.succeeded", aggregate_id, clock.now(), {"tenant_id": "default"})


async def _fail_before_commit(uow: Any, clock: ManualClock) -> None:
    async with uow() as tx:
        tx.record([_event("gen_x", clock)])
        raise RuntimeError("the transaction fails before commit")


async def test_a_rolled_back_transaction_never_reaches_an_endpoint(world: World) -> None:
    await world.webhooks.manage.create("default", PUBLIC, ["*"])
    uow: Any = world.client.container.gateways.uow()
    with pytest.raises(RuntimeError):
        await _fail_before_commit(uow, world.clock)
    async with uow() as tx:
        tx.record([_event("gen_y", world.clock)])
        await tx.rollback()
    with pytest.raises(ImageGenError):
        await world.client.generate("a red fox", provider="nope")  # refused before anything
    report = await world.webhooks.dispatcher.run_once()
    assert (report.events, report.created, report.sent) == (0, 0, 0)
    assert world.transport.sent == []


async def test_failures_are_retried_on_the_schedule_then_dead_and_redelivered(
    world: World,
) -> None:
    manage, dispatcher = world.webhooks.manage, world.webhooks.dispatcher
    created = await manage.create("default", PUBLIC, ["generation.succeeded"])
    world.transport.answers = [500, 503, 500]
    await world.client.generate("a red fox")
    assert (await dispatcher.run_once()).failed == 1
    [delivery] = await manage.deliveries("default", created.endpoint.id)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.last_status_code == 500
    assert delivery.next_attempt_at == world.clock.now() + timedelta(seconds=1)
    assert (await dispatcher.run_once()).sent == 0  # not due yet
    world.clock.advance(seconds=1)
    assert (await dispatcher.run_once()).failed == 1
    world.clock.advance(seconds=2)
    assert (await dispatcher.run_once()).failed == 1
    [delivery] = await manage.deliveries("default", created.endpoint.id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DEAD, 3)
    assert delivery.last_error == "HTTP 500"
    world.clock.advance(seconds=3600)
    assert (await dispatcher.run_once()).sent == 0  # dead stays dead
    redelivered = await manage.redeliver("default", delivery.id)
    assert redelivered.status is DeliveryStatus.PENDING
    assert (await dispatcher.run_once()).succeeded == 1
    [delivery] = await manage.deliveries("default", created.endpoint.id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 1)
    assert len({event_id for _, event_id, _ in world.transport.sent}) == 1  # one webhook-id
    assert len(world.transport.sent) == 4


async def test_endpoints_are_the_tenants_own(world: World) -> None:
    manage = world.webhooks.manage
    created = await manage.create("default", PUBLIC, ["*"])
    assert [e.id for e in await manage.list("default")] == [created.endpoint.id]
    assert await manage.list("other") == []
    with pytest.raises(NotFound):
        await manage.deliveries("other", created.endpoint.id)
    with pytest.raises(NotFound):
        await manage.delete("other", created.endpoint.id)
    await manage.delete("default", created.endpoint.id)
    assert await manage.list("default") == []
    with pytest.raises(InvalidParameter):
        await manage.create("default", PUBLIC, ["generation.exploded"])
    with pytest.raises(InvalidParameter):
        await manage.create("default", "ftp://hooks.example.com/", ["*"])
    with pytest.raises(InvalidParameter):
        await manage.create("default", "https://user:pw@hooks.example.com/", ["*"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
    ],
)
async def test_the_transport_refuses_private_addresses_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidParameter):
        await HttpWebhookTransport().check_url(url)
    refused = await HttpWebhookTransport().send(url, "whsec_" + "A" * 32, "evt_1", "{}")
    assert refused.status_code is None
    assert refused.error
    assert refused.error.startswith("refused")
    if "localhost" not in url:
        await HttpWebhookTransport(allow_private=True).check_url(url)


async def test_the_transport_accepts_a_public_address() -> None:
    await HttpWebhookTransport().check_url("https://93.184.215.14/hook")


class Killed(Exception):
    pass


class CrashingTransport(RecordingTransport):
    """Sends, then dies before the answer is recorded (a process killed mid-attempt)."""

    async def send(self, url: str, secret: str, event_id: str, payload: str) -> SendResult:
        await super().send(url, secret, event_id, payload)
        raise Killed("after sending")


async def test_a_crash_between_sending_and_recording_sends_again_with_the_same_id(
    world: World,
) -> None:
    created = await world.webhooks.manage.create("default", PUBLIC, ["generation.succeeded"])
    await world.client.generate("a red fox")
    crashing = build_webhooks(world.client.container, CrashingTransport())
    with pytest.raises(Killed):
        await crashing.dispatcher.run_once()
    # The claim (a lease) keeps others off while the attempt may still be running …
    assert (await world.webhooks.dispatcher.run_once()).sent == 0
    # … and runs out: the delivery is sent again, with the event's id.
    world.clock.advance(world.webhooks.dispatcher.policy.lease + timedelta(seconds=1))
    assert (await world.webhooks.dispatcher.run_once()).succeeded == 1
    [first] = crashing.transport.sent  # type: ignore[attr-defined]
    [second] = world.transport.sent
    assert first[1] == second[1]
    [delivery] = await world.webhooks.manage.deliveries("default", created.endpoint.id)
    assert delivery.status is DeliveryStatus.SUCCEEDED


async def test_dispatchers_running_at_once_send_each_delivery_once(world: World) -> None:
    await world.webhooks.manage.create("default", PUBLIC, ["*"])
    for n in range(6):
        await world.client.generate(f"fox {n}")
    others = [build_webhooks(world.client.container, world.transport) for _ in range(3)]
    await asyncio.gather(*(w.dispatcher.run_once() for w in others))
    ids = [event_id for _, event_id, _ in world.transport.sent]
    assert len(ids) == 6
    assert len(set(ids)) == 6


async def test_the_transport_follows_no_redirect_and_bounds_each_attempt() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route

    from imagegen.testing.emulators import serve

    async def redirect(request: Request) -> Response:
        return RedirectResponse("http://example.com/elsewhere", status_code=307)

    async def hang(request: Request) -> Response:
        await asyncio.sleep(1)
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/redirect", redirect, methods=["POST"]),
            Route("/hang", hang, methods=["POST"]),
        ]
    )
    transport = HttpWebhookTransport(timeout_s=0.3, allow_private=True)
    secret = "whsec_" + "A" * 32
    try:
        with serve(app) as base:
            redirected = await transport.send(f"{base}/redirect", secret, "evt_1", "{}")
            hung = await transport.send(f"{base}/hang", secret, "evt_1", "{}")
    finally:
        await transport.aclose()
    assert (redirected.ok, redirected.status_code, redirected.error) == (False, 307, "HTTP 307")
    assert (hung.status_code, hung.error) == (None, "timeout")
