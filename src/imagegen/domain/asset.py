"""Assets: generated images saved to the DAM with metadata, tags and provenance."""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Any

import attrs

from imagegen.domain.errors import InvalidParameter
from imagegen.domain.values import ImageFormat

DIGITAL_SOURCE_TYPE_GENERATED = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
)
DIGITAL_SOURCE_TYPE_COMPOSITE = (
    "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
)

_TAG_RE = re.compile(r"^[\w][\w .:/+-]{0,63}$", re.UNICODE)


def normalize_tags(tags: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Trim, lower-case and de-duplicate tags (keeping order); refuse odd characters."""
    seen: dict[str, None] = {}
    for raw in tags:
        tag = raw.strip().lower()
        if not tag:
            continue
        if not _TAG_RE.match(tag):
            raise InvalidParameter(
                f"Tag {raw!r} must be 1-64 letters, digits, spaces or . : / + - _", tag=raw
            )
        seen.setdefault(tag, None)
    return tuple(seen)


class ApprovalState(enum.StrEnum):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    FINAL = "final"


@attrs.frozen
class Provenance:
    """Where an image came from: written into the XMP packet and the JSON sidecar."""

    digital_source_type: str
    provider: str
    model: str
    prompt: str
    generation_id: str
    seed: int | None = None
    negative_prompt: str | None = None
    created_at: datetime | None = None
    parent_asset_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "digital_source_type": self.digital_source_type,
            "provider": self.provider,
            "model": self.model,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "generation_id": self.generation_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "parent_asset_id": self.parent_asset_id,
        }


@attrs.define(eq=False)
class Asset:
    id: str
    tenant_id: str
    image_id: str
    generation_id: str
    storage_key: str
    sha256: str
    format: ImageFormat
    width: int
    height: int
    byte_size: int
    title: str
    tags: tuple[str, ...]
    provenance: Provenance
    created_at: datetime
    updated_at: datetime
    approval_state: ApprovalState = ApprovalState.DRAFT
    metadata: dict[str, str] = attrs.field(factory=dict)
    version: int = 1
