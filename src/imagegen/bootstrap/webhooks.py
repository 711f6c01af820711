"""Wiring of webhooks (the service's endpoints and dispatcher, ``imagegen webhooks …``), from
the same container as the rest of the library: an override of ``gateways.uow``, ``clock`` or
``ids`` applies here too. The transport (httpx, standardwebhooks) is imported only here."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs

from imagegen.application.use_cases.webhooks import (
    DeliverWebhooks,
    DispatchPolicy,
    ManageWebhooks,
    WebhookGuard,
)
from imagegen.application.webhook_ports import WebhookTransport, WebhookUnitOfWorkFactory
from imagegen.bootstrap.access import declares
from imagegen.bootstrap.container import Container
from imagegen.bootstrap.settings import Settings
from imagegen.domain.errors import ConfigurationError
from imagegen.infrastructure.secrets import TokenSecrets


@attrs.frozen
class Webhooks:
    manage: ManageWebhooks
    guard: WebhookGuard
    dispatcher: DeliverWebhooks
    transport: WebhookTransport

    async def aclose(self) -> None:
        await self.transport.aclose()


def supports_webhooks(container: Container) -> bool:
    """Whether the unit of work has the outbox and webhook repositories (the SQL one and the
    in-memory fakes of ``imagegen.testing`` both have; a unit of work without them runs the
    service without webhooks)."""
    return declares(container, "outbox", "webhooks")


def _webhook_uow(container: Container) -> WebhookUnitOfWorkFactory:
    uow: Any = container.gateways.uow()
    if not supports_webhooks(container):
        raise ConfigurationError(
            f"The unit of work {type(uow).__name__} has no outbox or webhook repositories; "
            "webhooks need them (the SQL unit of work has them)."
        )
    factory: WebhookUnitOfWorkFactory = uow
    return factory


def dispatch_policy(settings: Settings) -> DispatchPolicy:
    return DispatchPolicy(
        schedule=tuple(timedelta(seconds=s) for s in settings.webhooks_retry_schedule),
        jitter=settings.webhooks_jitter,
        lease=timedelta(seconds=settings.webhooks_timeout_seconds * 2 + 5),
        poll_interval=timedelta(seconds=settings.webhooks_poll_seconds),
    )


def build_webhooks(container: Container, transport: WebhookTransport | None = None) -> Webhooks:
    """``transport``: the HTTP one by default (a fake in tests)."""
    settings: Settings = container.settings()
    if transport is None:
        from imagegen.infrastructure.webhooks.transport import HttpWebhookTransport

        transport = HttpWebhookTransport(
            timeout_s=settings.webhooks_timeout_seconds,
            allow_private=settings.webhooks_allow_private,
        )
    uow = _webhook_uow(container)
    clock, ids = container.gateways.clock(), container.gateways.ids()
    manage = ManageWebhooks(
        uow=uow, transport=transport, clock=clock, ids=ids, randomness=TokenSecrets()
    )
    dispatcher = DeliverWebhooks(
        uow=uow, transport=transport, clock=clock, ids=ids, policy=dispatch_policy(settings)
    )
    return Webhooks(manage, WebhookGuard(manage), dispatcher, transport)
