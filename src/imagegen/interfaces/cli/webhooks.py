"""``imagegen webhooks …``: endpoints, their delivery log, redelivery, and the dispatcher.

Importing this module registers the commands on the ``imagegen`` app. These are operator
commands (whoever runs them has the database): ``--tenant`` is a tenant's id or name.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from imagegen.domain.errors import ImageGenError
from imagegen.interfaces.cli.app import (
    JsonFlag,
    _add_row,
    _emit_json,
    _settings,
    _table,
    app,
    err,
    exit_code_for,
    out,
)

T = TypeVar("T")

webhooks_app = typer.Typer(help="Webhook endpoints and deliveries.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")

TenantOption = Annotated[
    str | None, typer.Option(help="Tenant id or name (default: IMAGEGEN_TENANT).")
]


def _run(work: Callable[[Any, str], Awaitable[T]], tenant: str | None = None) -> T:
    """Run ``work(webhooks, tenant_id)`` against the configured database."""
    from imagegen.bootstrap.container import build_container
    from imagegen.bootstrap.webhooks import build_webhooks
    from imagegen.client import AsyncImageGen

    settings = _settings()

    async def main() -> T:
        container = build_container(settings)
        async with AsyncImageGen(container=container):  # migrates, and closes the engine
            webhooks = build_webhooks(container)
            try:
                reference = tenant or settings.tenant
                uow: Any = container.gateways.uow()
                async with uow(read_only=True) as tx:
                    found = await tx.tenants.get(reference) or await tx.tenants.get_by_name(
                        reference
                    )
                return await work(webhooks, found.id if found is not None else reference)
            finally:
                await webhooks.aclose()

    try:
        return asyncio.run(main())
    except ImageGenError as error:
        err.print(f"error: {error.message}", markup=False)
        raise typer.Exit(exit_code_for(error)) from None


def _endpoint_dict(endpoint: Any) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "tenant_id": endpoint.tenant_id,
        "url": endpoint.url,
        "events": list(endpoint.event_types),
        "enabled": endpoint.enabled,
        "created_at": endpoint.created_at.isoformat(),
    }


def _delivery_dict(d: Any) -> dict[str, Any]:
    return {
        "id": d.id,
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status.value,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "created_at": d.created_at.isoformat(),
        "updated_at": d.updated_at.isoformat(),
    }


@webhooks_app.command("create")
def webhooks_create(
    url: Annotated[str, typer.Option(help="An http(s) URL at a public address.")],
    events: Annotated[str, typer.Option(help="Comma-separated event types, or '*'.")] = "*",
    tenant: TenantOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Register an endpoint; its signing secret is printed once."""
    types = [e for e in events.split(",") if e.strip()]
    created = _run(lambda w, t: w.manage.create(t, url, types), tenant)
    if as_json:
        _emit_json({**_endpoint_dict(created.endpoint), "secret": created.secret})
        return
    out.print(
        f"webhook {created.endpoint.id} -> {created.endpoint.url}; signing secret "
        "(copy it now, it is not shown again):",
        markup=False,
    )
    out.print(created.secret, markup=False)


@webhooks_app.command("list")
def webhooks_list(tenant: TenantOption = None, as_json: JsonFlag = False) -> None:
    """The tenant's endpoints (never their secrets)."""
    endpoints = _run(lambda w, t: w.manage.list(t), tenant)
    if as_json:
        _emit_json({"webhooks": [_endpoint_dict(e) for e in endpoints]})
        return
    table = _table("id", "url", "events", "enabled", "created")
    for e in endpoints:
        _add_row(
            table,
            e.id,
            e.url,
            ",".join(e.event_types),
            "yes" if e.enabled else "no",
            f"{e.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@webhooks_app.command("delete")
def webhooks_delete(
    endpoint_id: Annotated[str, typer.Argument(help="An endpoint id (whe_…).")],
    tenant: TenantOption = None,
) -> None:
    """Delete an endpoint and its delivery log."""
    _run(lambda w, t: w.manage.delete(t, endpoint_id), tenant)
    out.print(f"deleted {endpoint_id}", markup=False)


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    endpoint_id: Annotated[str, typer.Argument(help="An endpoint id (whe_…).")],
    tenant: TenantOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """An endpoint's delivery log, newest first."""
    deliveries = _run(lambda w, t: w.manage.deliveries(t, endpoint_id, limit), tenant)
    if as_json:
        _emit_json({"deliveries": [_delivery_dict(d) for d in deliveries]})
        return
    table = _table("id", "event", "type", "status", "attempts", "last", "next")
    for d in deliveries:
        _add_row(
            table,
            d.id,
            d.event_id,
            d.event_type,
            d.status.value,
            d.attempts,
            d.last_status_code or d.last_error or "-",
            f"{d.next_attempt_at:%Y-%m-%d %H:%M:%S}" if d.next_attempt_at else "-",
        )
    out.print(table)


@webhooks_app.command("redeliver")
def webhooks_redeliver(
    delivery_id: Annotated[str, typer.Argument(help="A delivery id (whd_…).")],
    tenant: TenantOption = None,
) -> None:
    """Send a delivery again at the next dispatch (same webhook-id)."""
    delivery = _run(lambda w, t: w.manage.redeliver(t, delivery_id), tenant)
    out.print(f"{delivery.id} will be delivered again", markup=False)


@webhooks_app.command("deliver")
def webhooks_deliver(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Deliver webhooks: fan committed events out to endpoints and send what is due; without
    --once, keep polling until interrupted."""

    async def deliver(webhooks: Any, _: str) -> Any:
        if once:
            return await webhooks.dispatcher.run_once()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print("delivering webhooks (Ctrl-C stops)", markup=False)
        await webhooks.dispatcher.run_forever(stop)
        return None

    report = _run(deliver)
    if report is None:
        return
    fields = ("events", "created", "sent", "succeeded", "failed")
    if as_json:
        _emit_json({name: getattr(report, name) for name in fields})
    else:
        out.print(", ".join(f"{getattr(report, n)} {n}" for n in fields), markup=False)
