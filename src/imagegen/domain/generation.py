"""The Generation aggregate: one request to turn a prompt into images, and its lifecycle.

``queued → running → succeeded | failed | canceled`` (``queued`` may also fail or be canceled
directly). Any other transition raises ``InvalidStateTransition``.
"""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

from imagegen.domain.errors import InvalidStateTransition
from imagegen.domain.events import DomainEvent
from imagegen.domain.models import Operation
from imagegen.domain.values import ImageFormat, ImageSize, Seed


class GenerationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {GenerationStatus.SUCCEEDED, GenerationStatus.FAILED, GenerationStatus.CANCELED}
)

ALLOWED_TRANSITIONS: dict[GenerationStatus, frozenset[GenerationStatus]] = {
    GenerationStatus.QUEUED: frozenset(
        {GenerationStatus.RUNNING, GenerationStatus.FAILED, GenerationStatus.CANCELED}
    ),
    GenerationStatus.RUNNING: frozenset(
        {GenerationStatus.SUCCEEDED, GenerationStatus.FAILED, GenerationStatus.CANCELED}
    ),
    GenerationStatus.SUCCEEDED: frozenset(),
    GenerationStatus.FAILED: frozenset(),
    GenerationStatus.CANCELED: frozenset(),
}


@attrs.frozen
class GeneratedImage:
    """One stored result. ``storage_key`` names the bytes in the DAM's blob storage."""

    id: str
    generation_id: str
    index: int
    storage_key: str
    sha256: str
    format: ImageFormat
    width: int
    height: int
    byte_size: int
    seed: Seed | None
    created_at: datetime


@attrs.frozen
class GenerationParameters:
    """The negotiated parameters the provider was asked for."""

    n: int
    size: ImageSize
    format: ImageFormat
    seed: Seed | None
    negative_prompt: str | None = None
    operation: Operation = Operation.GENERATE
    quality: str | None = None
    input_sizes: tuple[ImageSize, ...] = ()  # the images an edit sent (they price some models)


@attrs.define(eq=False)
class Generation:
    id: str
    tenant_id: str
    principal_id: str
    provider: str
    model: str
    prompt: str
    parameters: GenerationParameters
    created_at: datetime
    updated_at: datetime
    status: GenerationStatus = GenerationStatus.QUEUED
    estimated_credits: int = 0
    credits_charged: int = 0
    provider_cost_usd: str | None = None
    reservation_id: str | None = None
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    provider_job_id: str | None = None  # the first provider job (for display)
    provider_job_ids: tuple[str, ...] = ()  # every job, when a request was split into calls
    parent_id: str | None = None
    project_id: str | None = None  # the project it is billed to (budgets, usage reports)
    warnings: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    failure_code: str | None = None
    failure_message: str | None = None
    images: list[GeneratedImage] = attrs.field(factory=list)
    events: list[DomainEvent] = attrs.field(factory=list, repr=False)
    # Images added since the aggregate was loaded; the repository writes and clears them.
    new_images: list[GeneratedImage] = attrs.field(factory=list, repr=False)

    def _move(self, target: GenerationStatus, now: datetime) -> None:
        if target not in ALLOWED_TRANSITIONS[self.status]:
            raise InvalidStateTransition(
                f"Generation {self.id} cannot go from {self.status.value} to {target.value}.",
                generation_id=self.id,
                current=self.status.value,
                target=target.value,
            )
        self.status = target
        self.updated_at = now

    def start(self, now: datetime) -> None:
        self._move(GenerationStatus.RUNNING, now)

    def record_provider_job(self, job_id: str, now: datetime) -> None:
        if self.status.is_terminal:
            raise InvalidStateTransition(
                f"Generation {self.id} is {self.status.value}; it has no provider job to track."
            )
        if job_id in self.provider_job_ids:
            return
        self.provider_job_id = self.provider_job_id or job_id
        self.provider_job_ids = (*self.provider_job_ids, job_id)
        self.updated_at = now

    def fall_back_to(
        self,
        provider: str,
        model: str,
        parameters: GenerationParameters,
        reason: str,
        now: datetime,
    ) -> None:
        """Switch a running generation to another model after its provider failed."""
        if self.status is not GenerationStatus.RUNNING:
            raise InvalidStateTransition(
                f"Generation {self.id} is {self.status.value}; only a running one falls back."
            )
        self.warnings = (
            *self.warnings,
            f"{self.provider}/{self.model} failed ({reason}); used {provider}/{model} instead.",
        )
        self.provider, self.model, self.parameters = provider, model, parameters
        self.updated_at = now

    def succeed(
        self,
        images: list[GeneratedImage],
        credits_charged: int,
        now: datetime,
        provider_cost_usd: str | None = None,
    ) -> None:
        if not images:
            raise InvalidStateTransition(
                f"Generation {self.id} cannot succeed without images.", generation_id=self.id
            )
        if credits_charged < 0:
            raise InvalidStateTransition(f"Generation {self.id} cannot charge negative credits.")
        self._move(GenerationStatus.SUCCEEDED, now)
        self.images = list(images)
        self.new_images = list(images)
        self.credits_charged = credits_charged
        self.provider_cost_usd = provider_cost_usd
        self.events.append(
            DomainEvent(
                "generation.succeeded",
                self.id,
                now,
                {
                    "tenant_id": self.tenant_id,
                    "images": [image.id for image in images],
                    "credits_charged": credits_charged,
                },
            )
        )

    def fail(self, code: str, message: str, now: datetime) -> None:
        self._move(GenerationStatus.FAILED, now)
        self.failure_code = code
        self.failure_message = message
        self.events.append(
            DomainEvent(
                "generation.failed",
                self.id,
                now,
                {"tenant_id": self.tenant_id, "code": code, "message": message},
            )
        )

    def cancel(self, now: datetime) -> None:
        self._move(GenerationStatus.CANCELED, now)
        self.events.append(
            DomainEvent("generation.canceled", self.id, now, {"tenant_id": self.tenant_id})
        )
