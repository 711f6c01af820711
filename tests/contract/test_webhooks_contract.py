"""One contract for the webhook ports, run against the in-memory fakes (``imagegen.testing``)
and the SQL repositories on SQLite and PostgreSQL.

``OutboxRepository`` (the outbox's read side) and ``WebhookRepository`` (endpoints and their
delivery log) behave the same: only committed events reach the outbox, in order; marking
them published commits or rolls back with its transaction; endpoints and deliveries are the
tenant's own; ``due`` follows the retry schedule on the clock; dead deliveries stay dead until
redelivered. The webhook use cases (``ManageWebhooks``, ``DeliverWebhooks``) then give the
same results on every backend — in memory with no database at all.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from sqlalchemy.exc import IntegrityError

from contract.test_persistence_contract import empty_every_table
from imagegen.application.use_cases.webhooks import (
    DeliverWebhooks,
    DispatchPolicy,
    ManageWebhooks,
)
from imagegen.application.webhook_ports import WebhookUnitOfWorkFactory
from imagegen.domain.errors import InvalidParameter, NotFound
from imagegen.domain.events import DomainEvent
from imagegen.domain.webhooks import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from imagegen.infrastructure.persistence.engine import create_engine, upgrade_schema
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory
from imagegen.testing import (
    InMemoryUnitOfWorkFactory,
    ManualClock,
    RecordingWebhookTransport,
    SequentialIds,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CET = timezone(timedelta(hours=1))
SCHEDULE = (timedelta(seconds=5), timedelta(minutes=5))
REFUSED = (ValueError, IntegrityError)  # what the schema refuses
URL = "https://hooks.example.com/in"


@attrs.define
class Hooks:
    name: str
    uow: WebhookUnitOfWorkFactory
    clock: ManualClock
    ids: SequentialIds


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def hooks(request: pytest.FixtureRequest) -> AsyncIterator[Hooks]:
    clock = ManualClock(T0)
    if request.param == "memory":
        yield Hooks("memory", InMemoryUnitOfWorkFactory(), clock, SequentialIds())
        return
    url: str = request.getfixturevalue(f"{request.param}_database")
    engine = create_engine(url)
    try:
        await upgrade_schema(engine)
        await empty_every_table(engine)
        factory: Any = SqlUnitOfWorkFactory(engine, SequentialIds())
        yield Hooks(request.param, factory, clock, SequentialIds())
    finally:
        await engine.dispose()


def event(aggregate_id: str, *, tenant_id: str = "t1", name: str = "generation.succeeded") -> Any:
    return DomainEvent(name, aggregate_id, T0, {"tenant_id": tenant_id, "n": 2})


def endpoint(
    endpoint_id: str,
    *,
    tenant_id: str = "t1",
    minutes: int = 0,
    enabled: bool = True,
    event_types: tuple[str, ...] = ("*",),
) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=endpoint_id,
        tenant_id=tenant_id,
        url=f"{URL}/{endpoint_id}",
        event_types=event_types,
        secret="whsec_c2VjcmV0",
        enabled=enabled,
        created_at=T0 + timedelta(minutes=minutes),
    )


def delivery(
    delivery_id: str,
    *,
    endpoint_id: str = "whe_1",
    tenant_id: str = "t1",
    event_id: str | None = None,
    minutes: int = 0,
    status: DeliveryStatus = DeliveryStatus.PENDING,
    due_minutes: int | None = 0,
) -> WebhookDelivery:
    at = T0 + timedelta(minutes=minutes)
    return WebhookDelivery(
        id=delivery_id,
        endpoint_id=endpoint_id,
        tenant_id=tenant_id,
        event_id=event_id or f"evt_{delivery_id}",
        event_type="generation.succeeded",
        payload='{"type":"generation.succeeded"}',
        status=status,
        attempts=0,
        next_attempt_at=T0 + timedelta(minutes=due_minutes) if due_minutes is not None else None,
        created_at=at,
        updated_at=at,
    )


async def commit_events(hooks: Hooks, *events: DomainEvent) -> None:
    async with hooks.uow() as uow:
        uow.record(list(events))
        await uow.commit()


async def store(hooks: Hooks, *rows: WebhookEndpoint | WebhookDelivery) -> None:
    async with hooks.uow() as uow:
        for row in rows:
            if isinstance(row, WebhookEndpoint):
                await uow.webhooks.add_endpoint(row)
            else:
                await uow.webhooks.add_delivery(row)
        await uow.commit()


async def record_then_fail(hooks: Hooks) -> None:
    async with hooks.uow() as uow:
        uow.record([event("gen_raised")])
        await uow.webhooks.add_endpoint(endpoint("whe_raised"))
        raise RuntimeError("boom")


# --- the outbox ------------------------------------------------------------------------------


async def test_only_committed_events_reach_the_outbox_in_commit_order(hooks: Hooks) -> None:
    occurred = datetime(2025, 3, 1, 13, 0, 0, 123456, tzinfo=CET)
    await commit_events(hooks, attrs.evolve(event("gen_1"), occurred_at=occurred), event("gen_2"))
    async with hooks.uow() as uow:
        uow.record([event("gen_rolled_back")])
        await uow.rollback()
    async with hooks.uow() as uow:
        uow.record([event("gen_left")])  # the block ends without commit()
    with pytest.raises(RuntimeError, match="boom"):
        await record_then_fail(hooks)
    await commit_events(hooks, event("gen_3", name="asset.created"))
    async with hooks.uow() as uow:
        assert await uow.outbox.has_unpublished()
        found = await uow.outbox.unpublished(10)
    assert [(e.id, e.name, e.aggregate_id) for e in found] == [
        ("evt_000001", "generation.succeeded", "gen_1"),
        ("evt_000002", "generation.succeeded", "gen_2"),
        ("evt_000003", "asset.created", "gen_3"),
    ]
    assert found[0].data == {"tenant_id": "t1", "n": 2}
    assert found[0].occurred_at == occurred
    assert found[0].occurred_at.utcoffset() == timedelta(0)


async def test_unpublished_returns_the_oldest_events_up_to_its_limit(hooks: Hooks) -> None:
    await commit_events(hooks, *(event(f"gen_{i}") for i in range(4)))
    async with hooks.uow() as uow:
        found = await uow.outbox.unpublished(2)
    assert [e.aggregate_id for e in found] == ["gen_0", "gen_1"]


async def test_marking_events_published_commits_or_rolls_back_with_its_transaction(
    hooks: Hooks,
) -> None:
    await commit_events(hooks, event("gen_1"), event("gen_2"))
    async with hooks.uow() as uow:
        first = (await uow.outbox.unpublished(1))[0]
        await uow.outbox.mark_published([first.id], T0)
        assert [e.aggregate_id for e in await uow.outbox.unpublished(10)] == ["gen_2"]
        await uow.rollback()
    async with hooks.uow() as uow:
        assert [e.aggregate_id for e in await uow.outbox.unpublished(10)] == ["gen_1", "gen_2"]
        await uow.outbox.mark_published([first.id, "evt_unknown"], T0)
        await uow.commit()
    async with hooks.uow() as uow:
        assert [e.aggregate_id for e in await uow.outbox.unpublished(10)] == ["gen_2"]
        rest = await uow.outbox.unpublished(10)
        await uow.outbox.mark_published([e.id for e in rest], T0)
        await uow.outbox.mark_published([], T0)
        await uow.commit()
    async with hooks.uow(read_only=True) as uow:
        assert not await uow.outbox.has_unpublished()
        assert await uow.outbox.unpublished(10) == []


async def test_claimed_rows_are_skipped_by_other_transactions_until_theirs_ends(
    hooks: Hooks,
) -> None:
    if hooks.name == "sqlite":
        pytest.skip("SQLite serializes writers: the second transaction would wait for the first")
    await commit_events(hooks, event("gen_1"), event("gen_2"))
    await store(hooks, endpoint("whe_1"), delivery("whd_1"), delivery("whd_2", minutes=1))
    async with hooks.uow() as first:
        events = await first.outbox.unpublished(1)
        due = await first.webhooks.due(T0, 1)
        async with hooks.uow() as second:
            assert [e.aggregate_id for e in await second.outbox.unpublished(10)] == ["gen_2"]
            assert [d.id for d in await second.webhooks.due(T0, 10)] == ["whd_2"]
            assert await second.outbox.has_unpublished()  # a plain read sees every row
        assert ([e.aggregate_id for e in events], [d.id for d in due]) == (["gen_1"], ["whd_1"])
        await first.rollback()
    async with hooks.uow() as third:
        assert len(await third.outbox.unpublished(10)) == 2
        assert [d.id for d in await third.webhooks.due(T0, 10)] == ["whd_1", "whd_2"]


# --- endpoints --------------------------------------------------------------------------------


async def test_an_endpoint_round_trips_and_belongs_to_its_tenant(hooks: Hooks) -> None:
    created = datetime(2025, 3, 1, 13, 30, tzinfo=CET)
    new = attrs.evolve(
        endpoint("whe_1", event_types=("generation.succeeded", "asset.created")),
        created_at=created,
    )
    await store(hooks, new)
    async with hooks.uow(read_only=True) as uow:
        found = await uow.webhooks.endpoint("t1", "whe_1")
        assert await uow.webhooks.endpoint("t2", "whe_1") is None
        assert await uow.webhooks.endpoint("t1", "whe_none") is None
    assert found == new
    assert found is not None
    assert found.created_at.utcoffset() == timedelta(0)
    assert found.secret == "whsec_c2VjcmV0"


async def test_endpoints_are_listed_per_tenant_and_enabled_ones_per_tenants(
    hooks: Hooks,
) -> None:
    await store(
        hooks,
        endpoint("whe_c", minutes=1),
        endpoint("whe_a", minutes=2),
        endpoint("whe_b", minutes=3, enabled=False),
        endpoint("whe_d", tenant_id="t2"),
        endpoint("whe_e", tenant_id="t3"),
    )
    async with hooks.uow(read_only=True) as uow:
        mine = await uow.webhooks.endpoints("t1")
        enabled = await uow.webhooks.endpoints_of(["t1", "t2"])
        nobody = await uow.webhooks.endpoints("t_none")
    assert [e.id for e in mine] == ["whe_c", "whe_a", "whe_b"]  # by creation
    assert [e.id for e in enabled] == ["whe_a", "whe_c", "whe_d"]  # by id, enabled only
    assert nobody == []


async def test_an_endpoint_is_invisible_to_others_until_committed(hooks: Hooks) -> None:
    async with hooks.uow() as uow:
        await uow.webhooks.add_endpoint(endpoint("whe_1"))
        assert [e.id for e in await uow.webhooks.endpoints("t1")] == ["whe_1"]  # its own
        await uow.rollback()
    with pytest.raises(RuntimeError, match="boom"):
        await record_then_fail(hooks)
    async with hooks.uow(read_only=True) as uow:
        assert await uow.webhooks.endpoints("t1") == []


async def test_an_endpoint_id_is_stored_once(hooks: Hooks) -> None:
    await store(hooks, endpoint("whe_1"))
    with pytest.raises(REFUSED):
        await store(hooks, endpoint("whe_1", tenant_id="t2"))
    async with hooks.uow(read_only=True) as uow:
        assert await uow.webhooks.endpoints("t2") == []


async def test_removing_an_endpoint_removes_its_deliveries(hooks: Hooks) -> None:
    await store(hooks, endpoint("whe_1"), endpoint("whe_2"))
    await store(hooks, delivery("whd_1"), delivery("whd_2", endpoint_id="whe_2"))
    async with hooks.uow() as uow:
        gone = await uow.webhooks.endpoint("t1", "whe_1")
        assert gone is not None
        await uow.webhooks.remove_endpoint(gone)
        assert await uow.webhooks.delivery("t1", "whd_1") is None  # within the transaction too
        assert await uow.webhooks.deliveries("t1", "whe_1", 10) == []
        await uow.commit()
    async with hooks.uow(read_only=True) as uow:
        assert [e.id for e in await uow.webhooks.endpoints("t1")] == ["whe_2"]
        assert await uow.webhooks.delivery("t1", "whd_1") is None
        assert await uow.webhooks.delivery("t1", "whd_2") is not None
        assert [d.id for d in await uow.webhooks.due(T0, 10)] == ["whd_2"]


# --- deliveries -------------------------------------------------------------------------------


async def test_a_delivery_round_trips_and_belongs_to_its_tenant(hooks: Hooks) -> None:
    new = attrs.evolve(
        delivery("whd_1"),
        next_attempt_at=datetime(2025, 3, 1, 13, 0, 5, 250000, tzinfo=CET),
        last_status_code=502,
        last_error="HTTP 502",
        attempts=1,
        status=DeliveryStatus.FAILED,
    )
    await store(hooks, endpoint("whe_1"), new)
    async with hooks.uow(read_only=True) as uow:
        found = await uow.webhooks.delivery("t1", "whd_1")
        assert await uow.webhooks.delivery("t2", "whd_1") is None
        assert await uow.webhooks.delivery("t1", "whd_none") is None
    assert found == new
    assert found is not None
    assert found.next_attempt_at is not None
    assert found.next_attempt_at.utcoffset() == timedelta(0)


async def test_the_delivery_log_is_newest_first_per_endpoint_and_limited(hooks: Hooks) -> None:
    await store(hooks, endpoint("whe_1"), endpoint("whe_2"))
    await store(
        hooks,
        delivery("whd_1", minutes=1),
        delivery("whd_3", minutes=3),
        delivery("whd_2", minutes=2),
        delivery("whd_x", endpoint_id="whe_2"),
    )
    async with hooks.uow(read_only=True) as uow:
        log = await uow.webhooks.deliveries("t1", "whe_1", 10)
        short = await uow.webhooks.deliveries("t1", "whe_1", 2)
        other_tenant = await uow.webhooks.deliveries("t2", "whe_1", 10)
    assert [d.id for d in log] == ["whd_3", "whd_2", "whd_1"]
    assert [d.id for d in short] == ["whd_3", "whd_2"]
    assert other_tenant == []


async def test_an_endpoint_gets_one_delivery_per_event_and_only_if_it_is_stored(
    hooks: Hooks,
) -> None:
    await store(hooks, endpoint("whe_1"), endpoint("whe_2"), delivery("whd_1", event_id="evt_1"))
    with pytest.raises(REFUSED):
        await store(hooks, delivery("whd_2", event_id="evt_1"))
    with pytest.raises(REFUSED):
        await store(hooks, delivery("whd_3", endpoint_id="whe_none"))
    with pytest.raises(REFUSED):
        await store(hooks, delivery("whd_1", endpoint_id="whe_2"))  # the same id
    await store(hooks, delivery("whd_4", endpoint_id="whe_2", event_id="evt_1"))  # another one
    async with hooks.uow(read_only=True) as uow:
        assert [d.id for d in await uow.webhooks.deliveries("t1", "whe_1", 10)] == ["whd_1"]
        assert [d.id for d in await uow.webhooks.deliveries("t1", "whe_2", 10)] == ["whd_4"]


async def test_due_deliveries_are_pending_or_failed_ones_whose_time_came(hooks: Hooks) -> None:
    await store(hooks, endpoint("whe_1"))
    await store(
        hooks,
        delivery("whd_late", due_minutes=5),
        delivery("whd_b", due_minutes=1),
        delivery("whd_a", due_minutes=1),
        delivery("whd_first", due_minutes=0, status=DeliveryStatus.FAILED),
        delivery("whd_done", status=DeliveryStatus.SUCCEEDED, due_minutes=None),
        delivery("whd_dead", status=DeliveryStatus.DEAD, due_minutes=None),
        delivery("whd_done_timed", status=DeliveryStatus.SUCCEEDED, due_minutes=0),
        delivery("whd_dead_timed", status=DeliveryStatus.DEAD, due_minutes=0),
    )
    async with hooks.uow() as uow:
        now = await uow.webhooks.due(T0 + timedelta(minutes=1), 10)
        limited = await uow.webhooks.due(T0 + timedelta(minutes=1), 2)
    assert [d.id for d in now] == ["whd_first", "whd_a", "whd_b"]  # by time, then id
    assert [d.id for d in limited] == ["whd_first", "whd_a"]
    async with hooks.uow(read_only=True) as uow:
        assert await uow.webhooks.has_due(T0)
        assert await uow.webhooks.has_due(T0 + timedelta(minutes=5))
        assert not await uow.webhooks.has_due(T0 - timedelta(seconds=1))


async def test_retries_follow_the_schedule_on_the_clock_until_dead_then_redelivery(
    hooks: Hooks,
) -> None:
    await store(hooks, endpoint("whe_1"), delivery("whd_1"))
    clock = hooks.clock

    async def attempt(ok: bool) -> WebhookDelivery:
        async with hooks.uow() as uow:
            (claimed,) = await uow.webhooks.due(clock.now(), 10)
            if ok:
                claimed.succeeded(200, clock.now())
            else:
                claimed.failed(503, "HTTP 503", clock.now(), SCHEDULE)
            await uow.webhooks.save_delivery(claimed)
            await uow.commit()
        return claimed

    async def due_ids() -> list[str]:
        async with hooks.uow(read_only=True) as uow:
            return [d.id for d in await uow.webhooks.due(clock.now(), 10)]

    first = await attempt(ok=False)
    assert (first.status, first.attempts) == (DeliveryStatus.FAILED, 1)
    clock.advance(seconds=4)
    assert await due_ids() == []
    clock.advance(seconds=1)  # the schedule's 5 s
    assert await due_ids() == ["whd_1"]
    await attempt(ok=False)
    clock.advance(timedelta(minutes=5))
    dead = await attempt(ok=False)  # the last of len(SCHEDULE) + 1 attempts
    assert (dead.status, dead.attempts, dead.next_attempt_at) == (DeliveryStatus.DEAD, 3, None)
    clock.advance(timedelta(days=1))
    assert await due_ids() == []
    async with hooks.uow() as uow:
        stored = await uow.webhooks.delivery("t1", "whd_1")
        assert stored is not None
        assert (stored.status, stored.last_status_code, stored.last_error) == (
            DeliveryStatus.DEAD,
            503,
            "HTTP 503",
        )
        stored.redeliver(clock.now())
        await uow.webhooks.save_delivery(stored)
        await uow.commit()
    assert await due_ids() == ["whd_1"]
    done = await attempt(ok=True)
    assert (done.status, done.attempts, done.last_status_code) == (DeliveryStatus.SUCCEEDED, 1, 200)
    async with hooks.uow(read_only=True) as uow:
        assert await uow.webhooks.delivery("t1", "whd_1") == done


async def test_saving_a_delivery_changes_only_its_state_and_only_when_committed(
    hooks: Hooks,
) -> None:
    await store(hooks, endpoint("whe_1"), delivery("whd_1"))
    async with hooks.uow() as uow:
        changed = attrs.evolve(
            delivery("whd_1", due_minutes=None), status=DeliveryStatus.SUCCEEDED, attempts=1
        )
        changed.payload, changed.event_type = "changed", "asset.created"  # not updatable
        await uow.webhooks.save_delivery(changed)
        await uow.webhooks.save_delivery(delivery("whd_never_stored"))  # changes nothing
        seen = await uow.webhooks.delivery("t1", "whd_1")
        assert seen is not None
        assert seen.status is DeliveryStatus.SUCCEEDED  # its own write
        await uow.rollback()
    async with hooks.uow() as uow:
        stored = await uow.webhooks.delivery("t1", "whd_1")
        assert stored is not None
        assert stored.status is DeliveryStatus.PENDING
        await uow.webhooks.save_delivery(changed)
        await uow.commit()
    async with hooks.uow(read_only=True) as uow:
        stored = await uow.webhooks.delivery("t1", "whd_1")
        assert await uow.webhooks.delivery("t1", "whd_never_stored") is None
    assert stored is not None
    assert (stored.status, stored.attempts, stored.next_attempt_at) == (
        DeliveryStatus.SUCCEEDED,
        1,
        None,
    )
    assert (stored.payload, stored.event_type) == (
        '{"type":"generation.succeeded"}',
        "generation.succeeded",
    )


# --- the use cases, on every backend ------------------------------------------------------------


async def test_the_webhook_use_cases_give_the_same_results_on_every_backend(
    hooks: Hooks,
) -> None:
    clock, transport = hooks.clock, RecordingWebhookTransport()
    transport.refuse("internal.example")
    manage = ManageWebhooks(
        uow=hooks.uow, transport=transport, clock=clock, ids=hooks.ids, randomness=secrets
    )
    policy = DispatchPolicy(schedule=SCHEDULE, jitter=0, lease=timedelta(seconds=60))
    dispatcher = DeliverWebhooks(
        uow=hooks.uow, transport=transport, clock=clock, ids=hooks.ids, policy=policy
    )
    ours = await manage.create("t1", URL, ["generation.succeeded"])
    everything = await manage.create("t1", URL + "/all", ["*"])
    theirs = await manage.create("t2", URL + "/theirs", ["*"])
    with pytest.raises(InvalidParameter):
        await manage.create("t1", "https://internal.example/hook", ["*"])
    assert ours.secret.startswith("whsec_")
    assert [e.id for e in await manage.list("t1")] == [ours.endpoint.id, everything.endpoint.id]

    await commit_events(hooks, event("gen_1"), event("gen_1", name="asset.created"))
    async with hooks.uow() as uow:
        uow.record([event("gen_never")])  # rolled back: never delivered
    transport.answer_next(500)  # the first attempt (to `ours`) fails
    report = await dispatcher.run_once()
    assert (report.events, report.created, report.sent, report.succeeded) == (2, 3, 3, 2)
    assert [(s.url, s.status_code) for s in transport.sent] == [
        (URL, 500),
        (URL + "/all", 200),
        (URL + "/all", 200),
    ]
    body = json.loads(transport.sent[0].payload)
    assert (body["type"], body["data"]["id"]) == ("generation.succeeded", "gen_1")
    assert transport.sent[0].event_id == transport.sent[1].event_id  # one webhook-id per event

    assert (await dispatcher.run_once()).sent == 0  # the retry is not due yet
    clock.advance(seconds=5)
    transport.answer_next(None, None)  # no answer twice: dead after 3 attempts
    assert (await dispatcher.run_once()).sent == 1
    clock.advance(timedelta(minutes=5))
    assert (await dispatcher.run_once()).sent == 1
    clock.advance(timedelta(hours=1))
    assert (await dispatcher.run_once()).sent == 0
    (dead,) = await manage.deliveries("t1", ours.endpoint.id)
    assert (dead.status, dead.attempts, dead.last_error) == (DeliveryStatus.DEAD, 3, "no answer")

    with pytest.raises(NotFound):
        await manage.redeliver("t2", dead.id)  # another tenant's delivery is not found
    with pytest.raises(NotFound):
        await manage.deliveries("t2", ours.endpoint.id)
    await manage.redeliver("t1", dead.id)
    assert (await dispatcher.run_once()).succeeded == 1
    (redelivered,) = await manage.deliveries("t1", ours.endpoint.id)
    assert (redelivered.status, redelivered.attempts) == (DeliveryStatus.SUCCEEDED, 1)
    assert await manage.deliveries("t2", theirs.endpoint.id) == []

    await manage.delete("t1", everything.endpoint.id)
    with pytest.raises(NotFound):
        await manage.delete("t1", everything.endpoint.id)
    assert [e.id for e in await manage.list("t1")] == [ours.endpoint.id]
    assert len(transport.sent) == 6  # 3, then 2 retries, then the redelivery
