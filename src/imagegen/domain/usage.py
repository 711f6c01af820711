"""Usage events: the billable facts, one per capture (and one per refund), never changed.

A usage event's id is derived from what it records (``use_<reservation id>`` for a capture,
``use_<ledger entry id>`` for a refund), so writing it twice is impossible and a meter that
receives it twice (Stripe's meter events, keyed by ``identifier``) counts it once.

Reports are sums over usage events; ``imagegen billing verify`` checks that those sums match
the ledger exactly.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal

import attrs


class UsageKind(enum.StrEnum):
    CAPTURE = "capture"  # a generation was charged (credits >= 0, images > 0)
    REFUND = "refund"  # credits given back for an earlier capture (credits < 0, images <= 0)


def usage_id_for_capture(reservation_id: str) -> str:
    return f"use_{reservation_id}"


def usage_id_for_refund(entry_id: str) -> str:
    return f"use_{entry_id}"


@attrs.frozen(kw_only=True)
class UsageEvent:
    id: str
    kind: UsageKind
    tenant_id: str
    principal_id: str
    project_id: str | None
    generation_id: str
    reservation_id: str | None
    ledger_entry_id: str | None  # the capture's or refund's ledger entry (None if 0 credits)
    provider: str
    model: str
    operation: str
    images: int  # images delivered (negative on a refund that takes images back from quota)
    included_images: int  # of those, covered by the plan's quota
    overage_images: int  # of those, beyond the quota (charged as overage)
    credits: int  # credits charged (negative for a refund)
    provider_cost_usd: Decimal | None  # what the provider charged us, when known
    period_start: datetime  # the billing period the usage counts in
    occurred_at: datetime
    refunds_event_id: str | None = None  # a refund: the capture event it corrects
