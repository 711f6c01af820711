"""The v1 webhook endpoints: endpoints of the caller's tenant, their delivery log, and
redelivery (``webhooks:manage``). The signing secret is in the answer to the creation only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from imagegen.application.use_cases.webhooks import WebhookGuard
from imagegen.domain.webhooks import WebhookDelivery, WebhookEndpoint
from imagegen.interfaces.http._routes import COMMON, Caller, _problem_responses, runtime_of

router = APIRouter(responses=_problem_responses(*COMMON), tags=["webhooks"])


async def webhook_guard(request: Request) -> WebhookGuard:
    return (await runtime_of(request).webhooks()).guard


Webhooks = Annotated[WebhookGuard, Depends(webhook_guard)]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="An http(s) URL at a public address.", max_length=2000)
    events: list[str] = Field(
        description="Event types (generation.succeeded, generation.failed, generation.canceled, "
        "asset.created, credits.threshold_reached) or ['*'] for all.",
        max_length=20,
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    created_at: datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookOut:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            events=list(endpoint.event_types),
            enabled=endpoint.enabled,
            created_at=endpoint.created_at,
        )


class CreatedWebhookOut(WebhookOut):
    secret: str = Field(
        description="whsec_…: verify signatures with it (Standard Webhooks). Shown only here."
    )


class WebhookList(BaseModel):
    data: list[WebhookOut]


class DeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str = Field(description="The webhook-id header: the same on every attempt.")
    event_type: str
    status: str = Field(description="pending, failed (a retry is scheduled), succeeded or dead.")
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=delivery.status.value,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            updated_at=delivery.updated_at,
        )


class DeliveryList(BaseModel):
    data: list[DeliveryOut]


@router.post(
    "/webhooks",
    status_code=201,
    response_model=CreatedWebhookOut,
    summary="Register a webhook endpoint (the secret is shown once)",
)
async def create_webhook(
    body: WebhookRequest, response: Response, caller: Caller, webhooks: Webhooks
) -> CreatedWebhookOut:
    created = await webhooks.create(caller, body.url, body.events)
    response.headers["Location"] = f"/v1/webhooks/{created.endpoint.id}"
    return CreatedWebhookOut(**WebhookOut.of(created.endpoint).model_dump(), secret=created.secret)


@router.get("/webhooks", response_model=WebhookList, summary="The tenant's webhook endpoints")
async def list_webhooks(caller: Caller, webhooks: Webhooks) -> WebhookList:
    return WebhookList(data=[WebhookOut.of(e) for e in await webhooks.list(caller)])


@router.delete(
    "/webhooks/{endpoint_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a webhook endpoint and its delivery log",
)
async def delete_webhook(endpoint_id: str, caller: Caller, webhooks: Webhooks) -> Response:
    await webhooks.delete(caller, endpoint_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{endpoint_id}/deliveries",
    response_model=DeliveryList,
    summary="An endpoint's delivery log, newest first",
)
async def list_deliveries(
    endpoint_id: str,
    caller: Caller,
    webhooks: Webhooks,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryList:
    deliveries = await webhooks.deliveries(caller, endpoint_id, limit)
    return DeliveryList(data=[DeliveryOut.of(d) for d in deliveries])


@router.post(
    "/webhooks/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=DeliveryOut,
    summary="Send a delivery again (same webhook-id), at the next dispatch",
)
async def redeliver(delivery_id: str, caller: Caller, webhooks: Webhooks) -> DeliveryOut:
    return DeliveryOut.of(await webhooks.redeliver(caller, delivery_id))
