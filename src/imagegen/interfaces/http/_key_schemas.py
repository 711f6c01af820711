"""Bodies of the v1 API-key endpoints. A key's secret (the whole ``ig_live_…`` key) is in the
answer to its creation or rotation only; nothing else ever carries it or its hash."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from imagegen.application.use_cases.access import KeyOutcome
from imagegen.domain.access import ApiKey, Role


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(
        description="What the key may do (see the permission table); any role of the tenant."
    )
    name: str | None = Field(
        default=None, max_length=100, description="A label, e.g. where the key is used."
    )


class KeyOut(BaseModel):
    id: str = Field(description="key_…: public, the middle of the key.")
    prefix: str = Field(description="ig_live_…: the key up to its secret part.")
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = Field(description="Set once revoked (or rotated).")
    last_used_at: datetime | None = Field(description="Written at most once a minute.")
    replaces: str | None = Field(description="The key this one rotated.")

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            prefix=key.public_prefix,
            role=key.role.value,
            name=key.name,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
            replaces=key.replaces,
        )


class CreatedKeyOut(KeyOut):
    secret: str | None = Field(
        description="The whole key (Authorization: Bearer …), shown only here. Null when an "
        "Idempotency-Key was replayed: it is never stored (rotate the key for a new one)."
    )
    replayed: bool = Field(default=False, description="An Idempotency-Key was replayed.")

    @classmethod
    def made(cls, outcome: KeyOutcome) -> CreatedKeyOut:
        return cls(
            **KeyOut.of(outcome.key).model_dump(),
            secret=outcome.secret,
            replayed=outcome.replayed,
        )


class KeyPage(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None
