"""billing: plans, budgets, per-period counters, usage events, alerts

Adds the subscription / budget flags to credit accounts, the quota holds to reservations and
the project to generations; creates subscriptions, budgets, billing_counters, usage_events
(the metering outbox: ``metered_at``) and alerts_fired (fired once: a unique key). Captures
made before this revision get their usage event here, so ``imagegen billing verify`` holds
on an upgraded database.

Revision ID: 0004_billing
Revises: 0003_provider_job_ids
Create Date: 2026-11-22
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_billing"
down_revision = "0003_provider_job_ids"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN (no batch mode): on SQLite a batch would copy and drop the tables,
    # which foreign keys to rows that exist refuse.
    op.add_column("credit_accounts", sa.Column("plan_id", sa.String(length=64), nullable=True))
    op.add_column(
        "credit_accounts",
        sa.Column("has_budgets", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "credit_reservations",
        sa.Column("included_images", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "credit_reservations",
        sa.Column("overage_images", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("credit_reservations", sa.Column("period_start", _TIME, nullable=True))
    op.add_column("credit_reservations", sa.Column("holds", sa.JSON(), nullable=True))
    op.add_column("generations", sa.Column("project_id", sa.String(length=64), nullable=True))

    op.create_table(
        "subscriptions",
        sa.Column("tenant_id", sa.String(length=64), primary_key=True),
        sa.Column("plan_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("meter_customer_id", sa.String(length=255), nullable=True),
        sa.Column("started_at", _TIME, nullable=False),
        sa.Column("changed_at", _TIME, nullable=False),
    )
    op.create_table(
        "budgets",
        sa.Column("tenant_id", sa.String(length=64), primary_key=True),
        sa.Column("subject", sa.String(length=200), primary_key=True),
        sa.Column("limit_credits", sa.BigInteger(), nullable=True),
        sa.Column("limit_images", sa.BigInteger(), nullable=True),
        sa.Column("since", _TIME, nullable=False),
    )
    op.create_table(
        "billing_counters",
        sa.Column("tenant_id", sa.String(length=64), primary_key=True),
        sa.Column("subject", sa.String(length=200), primary_key=True),
        sa.Column("period_start", _TIME, primary_key=True),
        *(
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "used_images",
                "held_images",
                "overage_images",
                "used_credits",
                "held_credits",
            )
        ),
    )
    usage = op.create_table(
        "usage_events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(length=80), nullable=False, unique=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("principal_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=True),
        sa.Column("generation_id", sa.String(length=64), nullable=False),
        sa.Column("reservation_id", sa.String(length=64), nullable=True),
        sa.Column("ledger_entry_id", sa.String(length=64), nullable=True),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("included_images", sa.Integer(), nullable=False),
        sa.Column("overage_images", sa.Integer(), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("provider_cost_usd", sa.String(length=32), nullable=True),
        sa.Column("period_start", _TIME, nullable=False),
        sa.Column("occurred_at", _TIME, nullable=False),
        sa.Column("refunds_event_id", sa.String(length=80), nullable=True),
        sa.Column("metered_at", _TIME, nullable=True),
    )
    op.create_index("ix_usage_events_tenant", "usage_events", ["tenant_id", "occurred_at"])
    op.create_index("ix_usage_events_unmetered", "usage_events", ["metered_at", "occurred_at"])
    op.create_index("ix_usage_events_refunds", "usage_events", ["refunds_event_id"])
    op.create_table(
        "alerts_fired",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("period_start", _TIME, nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("fired_at", _TIME, nullable=False),
        sa.UniqueConstraint(
            "tenant_id", "subject", "period_start", "threshold", name="uq_alerts_fired_once"
        ),
    )
    _backfill_usage(usage)


def _utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _backfill_usage(usage: sa.Table) -> None:
    """One capture usage event per reservation captured before billing existed."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT r.id, r.captured_amount, r.resolved_at, g.id, g.tenant_id, g.principal_id,"
            " g.provider, g.model, g.operation, g.provider_cost_usd, e.id,"
            " (SELECT count(*) FROM images i WHERE i.generation_id = g.id)"
            " FROM credit_reservations r JOIN generations g ON g.reservation_id = r.id"
            " LEFT JOIN ledger_entries e ON e.reservation_id = r.id"
            " WHERE r.status = 'captured'"
        )
    ).all()
    events = []
    for row in rows:
        (res_id, captured, resolved, gen_id, tenant, principal, provider, model, operation) = row[
            :9
        ]
        cost, entry_id, images = row[9:]
        at = _utc(resolved)
        events.append(
            {
                "id": f"use_{res_id}",
                "kind": "capture",
                "tenant_id": tenant,
                "principal_id": principal,
                "project_id": None,
                "generation_id": gen_id,
                "reservation_id": res_id,
                "ledger_entry_id": entry_id,
                "provider": provider,
                "model": model,
                "operation": operation,
                "images": int(images),
                "included_images": 0,
                "overage_images": int(images),  # without a plan every image is charged
                "credits": int(captured),
                "provider_cost_usd": cost,
                "period_start": datetime(at.year, at.month, 1, tzinfo=UTC),
                "occurred_at": at,
                "refunds_event_id": None,
                "metered_at": None,
            }
        )
    if events:
        if bind.dialect.name == "sqlite":  # stored naive, in UTC, as UTCDateTime does
            for event in events:
                for key in ("period_start", "occurred_at"):
                    event[key] = event[key].replace(tzinfo=None)
        op.bulk_insert(usage, events)


def downgrade() -> None:
    op.drop_table("alerts_fired")
    op.drop_index("ix_usage_events_refunds", table_name="usage_events")
    op.drop_index("ix_usage_events_unmetered", table_name="usage_events")
    op.drop_index("ix_usage_events_tenant", table_name="usage_events")
    op.drop_table("usage_events")
    op.drop_table("billing_counters")
    op.drop_table("budgets")
    op.drop_table("subscriptions")
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("project_id")
    with op.batch_alter_table("credit_reservations", schema=None) as batch_op:
        batch_op.drop_column("holds")
        batch_op.drop_column("period_start")
        batch_op.drop_column("overage_images")
        batch_op.drop_column("included_images")
    with op.batch_alter_table("credit_accounts", schema=None) as batch_op:
        batch_op.drop_column("has_budgets")
        batch_op.drop_column("plan_id")
