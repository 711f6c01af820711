"""Domain events: facts aggregates record; the unit of work stores them in an outbox on commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs


@attrs.frozen
class DomainEvent:
    name: str
    aggregate_id: str
    occurred_at: datetime
    data: dict[str, Any] = attrs.field(factory=dict)
