"""Billing commands: ``imagegen plans …``, ``imagegen billing …`` (subscription, refunds,
adjustments, verification), ``imagegen budgets …`` and ``imagegen usage report``.

Like every command they act on the tenant of ``IMAGEGEN_TENANT`` (default "default");
``billing verify`` checks every tenant unless ``--tenant-only`` is given.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from imagegen.interfaces.cli.app import (
    EXIT_ERROR,
    JsonFlag,
    _add_row,
    _emit_json,
    _parse_when,
    _run,
    _table,
    app,
    err,
    out,
)

plans_app = typer.Typer(help="The plans a tenant can subscribe to.", no_args_is_help=True)
billing_app = typer.Typer(
    help="Subscription, refunds, adjustments and the billing check.", no_args_is_help=True
)
budgets_app = typer.Typer(help="Monthly spending caps per user or project.", no_args_is_help=True)
usage_app = typer.Typer(help="Usage reports.", no_args_is_help=True)
app.add_typer(plans_app, name="plans")
app.add_typer(billing_app, name="billing")
app.add_typer(budgets_app, name="budgets")
app.add_typer(usage_app, name="usage")


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


@plans_app.command("list")
def plans_list(as_json: JsonFlag = False) -> None:
    """List the plans (shipped, and IMAGEGEN_PLANS_FILE's)."""
    plans = _run(lambda client: _async(client.plans()))
    if as_json:
        _emit_json([_plan_dict(p) for p in plans])
        return
    table = _table("id", "name", "included/month", "overage", "max/request", "models")
    for plan in plans:
        price = plan.overage_credits_per_image
        overage = plan.overage.value
        if plan.overage.value == "charge":
            overage += f" ({price} cr/image)" if price is not None else " (model price)"
        _add_row(
            table,
            plan.id,
            plan.name,
            plan.included_images,
            overage,
            _limit(plan.max_images_per_request),
            ", ".join(plan.allowed_models) or "all",
        )
    out.print(table)


async def _async(value: Any) -> Any:
    return value


def _plan_dict(plan: Any) -> dict[str, Any]:
    return {
        "id": plan.id,
        "name": plan.name,
        "description": plan.description,
        "included_images": plan.included_images,
        "overage": plan.overage.value,
        "overage_credits_per_image": plan.overage_credits_per_image,
        "max_images_per_request": plan.max_images_per_request,
        "allowed_models": list(plan.allowed_models),
        "allowed_operations": list(plan.allowed_operations),
        "shared": plan.shared,
    }


def _subscription_dict(subscription: Any) -> dict[str, Any]:
    return {
        "tenant_id": subscription.tenant_id,
        "plan_id": subscription.plan_id,
        "status": subscription.status.value,
        "meter_customer_id": subscription.meter_customer_id,
        "started_at": subscription.started_at.isoformat(),
        "changed_at": subscription.changed_at.isoformat(),
    }


@billing_app.command("subscribe")
def billing_subscribe(
    plan: Annotated[str, typer.Argument(help="A plan id (see 'plans list'); 'none' cancels.")],
    customer: Annotated[
        str | None, typer.Option("--customer", help="The usage meter's customer id (cus_…).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Put the tenant on a plan, at once (the month's usage so far counts against it)."""
    subscription = _run(lambda client: client.subscribe(plan, customer_id=customer))
    if as_json:
        _emit_json(_subscription_dict(subscription))
    else:
        out.print(f"{subscription.tenant_id}: plan {subscription.plan_id} ({subscription.status})")


@billing_app.command("subscription")
def billing_subscription(as_json: JsonFlag = False) -> None:
    """Show the tenant's subscription."""
    subscription = _run(lambda client: client.subscription())
    if as_json:
        _emit_json(_subscription_dict(subscription) if subscription else None)
    elif subscription is None:
        out.print("no subscription (pay as you go)")
    else:
        since = f"{subscription.started_at:%Y-%m-%d}"
        out.print(f"plan {subscription.plan_id} ({subscription.status}) since {since}")


@billing_app.command("refund")
def billing_refund(
    generation_id: Annotated[str, typer.Argument(help="The generation to refund.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the ledger).")],
    credits: Annotated[
        int | None, typer.Option("--credits", help="How many (default: all that is left).")
    ] = None,
    restore_quota: Annotated[
        bool, typer.Option("--restore-quota", help="Give the plan's included images back too.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Refund a generation's credits: a new ledger entry linked to its capture."""
    outcome = _run(
        lambda client: client.refund(
            generation_id, reason=reason, credits=credits, restore_quota=restore_quota
        )
    )
    refunded = -outcome.event.credits
    if as_json:
        _emit_json(
            {
                "usage_event_id": outcome.event.id,
                "ledger_entry_id": outcome.entry.id if outcome.entry else None,
                "credits": refunded,
                "images_restored": -outcome.event.included_images,
                "available": outcome.balance.available,
            }
        )
    else:
        out.print(f"refunded {refunded} credits; {outcome.balance.available} credits available")


@billing_app.command("adjust")
def billing_adjust(
    credits: Annotated[int, typer.Option("--credits", help="Signed: +N adds, -N removes.")],
    memo: Annotated[str, typer.Option("--memo", help="Why (mandatory, kept in the ledger).")],
    as_json: JsonFlag = False,
) -> None:
    """Correct the tenant's credits with a signed ledger entry."""
    balance = _run(lambda client: client.adjust(credits, memo=memo))
    if as_json:
        _emit_json(balance.to_dict())
    else:
        out.print(f"adjusted {credits:+d}; {balance.available} credits available")


@billing_app.command("verify")
def billing_verify(
    tenant_only: Annotated[
        bool, typer.Option("--tenant-only", help="Check only IMAGEGEN_TENANT's records.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check every billing invariant (ledger, usage events, counters, alerts); exit 1 if any
    is broken."""
    check = _run(lambda client: client.verify_billing(all_tenants=not tenant_only))
    if as_json:
        _emit_json(
            {
                "ok": check.ok,
                "tenants": check.tenants,
                "usage_events": check.usage_events,
                "violations": list(check.violations),
            }
        )
    elif check.violations:
        for problem in check.violations:
            err.print(f"violation: {problem}", markup=False)
    else:
        out.print(
            f"billing consistent ({check.tenants} tenant{'s' if check.tenants != 1 else ''}, "
            f"{check.usage_events} usage events)"
        )
    if check.violations:
        raise typer.Exit(EXIT_ERROR)


@billing_app.command("meter-sync")
def billing_meter_sync(as_json: JsonFlag = False) -> None:
    """Report usage events not yet metered to the Stripe meter (IMAGEGEN_STRIPE_API_KEY);
    exit 1 if any was refused or the run was interrupted. Safe to re-run at any time: each
    event is sent with its id as Stripe's identifier, so a re-send is counted once."""
    summary = _run(lambda client: client.report_usage())
    failures = [*summary.failed, *([summary.interrupted] if summary.interrupted else [])]
    if as_json:
        _emit_json(
            {
                "ok": summary.ok,
                "sent": summary.sent,
                "duplicates": summary.duplicates,
                "failed": [
                    {"event_id": f.event_id, "code": f.code, "message": f.message}
                    for f in summary.failed
                ],
                "interrupted": (
                    {
                        "event_id": summary.interrupted.event_id,
                        "code": summary.interrupted.code,
                        "message": summary.interrupted.message,
                    }
                    if summary.interrupted
                    else None
                ),
            }
        )
    else:
        for failure in failures:
            err.print(f"not metered: {failure.event_id}: {failure.message}", markup=False)
        out.print(
            f"metered {summary.sent} usage events ({summary.duplicates} already known to Stripe)"
        )
    if not summary.ok:
        raise typer.Exit(EXIT_ERROR)


UserOption = Annotated[str | None, typer.Option("--user", help="A user (principal) id.")]
ProjectOption = Annotated[str | None, typer.Option("--project", help="A project id.")]


@budgets_app.command("set")
def budgets_set(
    user: UserOption = None,
    project: ProjectOption = None,
    credits: Annotated[int | None, typer.Option("--credits", help="Credits per month.")] = None,
    images: Annotated[int | None, typer.Option("--images", help="Images per month.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a monthly cap for one user or one project."""
    budget = _run(
        lambda client: client.set_budget(user=user, project=project, credits=credits, images=images)
    )
    if as_json:
        _emit_json(
            {
                "subject": budget.subject,
                "limit_credits": budget.limit_credits,
                "limit_images": budget.limit_images,
            }
        )
    else:
        out.print(
            f"budget of {budget.subject}: {_limit(budget.limit_credits)} credits, "
            f"{_limit(budget.limit_images)} images per month"
        )


@budgets_app.command("list")
def budgets_list(as_json: JsonFlag = False) -> None:
    """List the budgets with this month's use."""
    rows = _run(lambda client: client.budgets())
    if as_json:
        _emit_json(
            [
                {
                    "subject": b.subject,
                    "limit_credits": b.limit_credits,
                    "limit_images": b.limit_images,
                    "used_credits": c.used_credits,
                    "held_credits": c.held_credits,
                    "used_images": c.used_images,
                    "held_images": c.held_images,
                }
                for b, c in rows
            ]
        )
        return
    table = _table("subject", "credits used/limit", "images used/limit", "held")
    for budget, counter in rows:
        _add_row(
            table,
            budget.subject,
            f"{counter.used_credits}/{_limit(budget.limit_credits)}",
            f"{counter.used_images}/{_limit(budget.limit_images)}",
            f"{counter.held_credits} cr, {counter.held_images} img",
        )
    out.print(table)


@budgets_app.command("remove")
def budgets_remove(user: UserOption = None, project: ProjectOption = None) -> None:
    """Remove a user's or project's budget."""
    removed = _run(lambda client: client.remove_budget(user=user, project=project))
    out.print("removed" if removed else "no such budget")


class ReportFormat(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


@usage_app.command("report")
def usage_report(
    period: Annotated[
        str | None, typer.Option("--period", help="A month: 2026-11 (default: this month).")
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start (inclusive).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="End (exclusive).")] = None,
    by: Annotated[
        str, typer.Option("--by", help="Group by: user,project,provider,model,operation,day.")
    ] = "",
    format: Annotated[ReportFormat, typer.Option("--format")] = ReportFormat.TABLE,
    output: Annotated[Path | None, typer.Option("--output", help="Write to this file.")] = None,
) -> None:
    """Usage with credits charged, revenue, provider cost and margin."""
    since, until = _parse_when(start, "--from"), _parse_when(end, "--to")
    groups = [d for d in by.split(",") if d.strip()]
    report = _run(lambda client: client.usage_report(period, start=since, end=until, by=groups))
    if format is ReportFormat.CSV:
        text = report.to_csv()
    elif format is ReportFormat.JSON:
        text = report.to_json() + "\n"
    else:
        if output is not None:
            err.print("error: --output needs --format csv or json.", markup=False)
            raise typer.Exit(2)
        table = _table(
            *report.by,
            "gens",
            "images",
            "incl",
            "over",
            "credits",
            "revenue $",
            "cost $",
            "margin $",
        )
        for row in (*report.rows, report.total):
            cells = row.as_dict(report.by if row.key else (), cents=True)
            key = list(row.key) if row.key else ["TOTAL", *[""] * (len(report.by) - 1)]
            _add_row(
                table,
                *key[: len(report.by)],
                cells["generations"],
                cells["images"],
                cells["included_images"],
                cells["overage_images"],
                cells["credits"],
                cells["revenue_usd"],
                cells["provider_cost_usd"],
                cells["margin_usd"],
            )
        out.print(table)
        return
    if output is not None:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}", markup=False)
    else:
        sys.stdout.write(text)
