"""The billing commands through the real ``imagegen`` process, and a month of activity whose
usage report reconciles exactly with the ledger — until a ledger row is tampered with."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from cli_runner import imagegen

from imagegen import AsyncImageGen, Settings
from imagegen.application.commands import GenerateCommand
from imagegen.domain.billing import EntryKind
from imagegen.domain.values import Money
from imagegen.testing import ManualClock, ScriptedProvider

pytestmark = pytest.mark.slow

USERS = ("ann", "bob", "cy")
PROJECTS = ("apollo", None)


def test_plans_subscription_quota_budgets_refund_and_adjust_through_the_cli(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    plans = json.loads(imagegen(cli_env, "plans", "list", "--json").stdout)
    assert [p["id"] for p in plans] == ["free", "pro", "team"]
    sub = imagegen(cli_env, "billing", "subscribe", "free", "--customer", "cus_123", "--json")
    assert (sub.json()["plan_id"], sub.json()["meter_customer_id"]) == ("free", "cus_123")

    first = imagegen(cli_env, "generate", "a fox", "-n", "4", "--size", "64x64", "--json").json()
    assert first["credits_charged"] == 0  # included in the plan
    refused = imagegen(cli_env, "generate", "a fox", "--provider", "openai")
    assert refused.code == 3
    assert refused.stderr == "error: The Free plan does not include openai/gpt-image-2.\n"
    imagegen(cli_env, "generate", "a fox", "-n", "4", "--size", "64x64", "--json").json()
    over = imagegen(cli_env, "generate", "a fox", "-n", "3", "--size", "64x64")
    assert over.code == 3
    assert "2 are left and 3 were asked for" in over.stderr

    set_budget = imagegen(cli_env, "budgets", "set", "--project", "apollo", "--images", "1")
    assert set_budget.code == 0, set_budget.stderr
    capped = imagegen(cli_env, "generate", "x", "-n", "2", "--size", "64x64", "--project", "apollo")
    assert capped.code == 3
    assert "project:apollo allows 1 images" in capped.stderr
    listed = imagegen(cli_env, "budgets", "list", "--json")
    assert json.loads(listed.stdout)[0]["subject"] == "project:apollo"
    assert imagegen(cli_env, "budgets", "remove", "--project", "apollo").code == 0

    refund = imagegen(
        cli_env,
        "billing",
        "refund",
        first["id"],
        "--reason",
        "blurry",
        "--restore-quota",
        "--json",
    ).json()
    assert (refund["credits"], refund["images_restored"]) == (0, 4)
    adjusted = imagegen(
        cli_env, "billing", "adjust", "--credits", "-30", "--memo", "fix", "--json"
    ).json()
    assert adjusted["available"] == 70
    too_much = imagegen(cli_env, "billing", "adjust", "--credits", "-71", "--memo", "no")
    assert too_much.code == 3
    assert imagegen(cli_env, "billing", "adjust", "--credits", "5", "--memo", " ").code == 2

    out = tmp_path / "usage.csv"
    month = datetime.now(UTC).strftime("%Y-%m")
    report = imagegen(
        cli_env,
        "usage",
        "report",
        "--period",
        month,
        "--by",
        "user",
        "--format",
        "csv",
        "--output",
        str(out),
    )
    assert report.code == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [(r["user"], r["images"], r["included_images"]) for r in rows] == [
        ("local", "4", "4"),  # 8 delivered, 4 given back to the quota by the refund
        ("TOTAL", "4", "4"),
    ]
    verify = imagegen(cli_env, "billing", "verify")
    assert (verify.code, verify.stdout) == (0, "billing consistent (1 tenant, 3 usage events)\n")
    assert imagegen(cli_env, "credits", "verify").code == 0


# --- a month of activity -------------------------------------------------------------------------


async def a_month_of_activity(settings: Settings) -> dict[str, object]:
    """Four weeks of generations by three users in two projects, a plan change,
    partial refunds and an adjustment; returns what the ledger says."""
    clock = ManualClock(datetime(2026, 11, 1, 8, tzinfo=UTC))
    provider = ScriptedProvider("replicate")  # priced in USD: its bill is the provider cost
    async with AsyncImageGen(settings) as gen:
        gen.container.gateways.clock.override(clock)
        gen.container.gateways.replicate_provider.override(provider)
        use_case = gen.container.generate_images()
        await gen.grant_credits(1000)
        generated = []
        for day in range(28):  # everything, refunds too, happens in November
            if day == 10:
                await gen.subscribe("pro")
            for i, user in enumerate(USERS):
                n = 1 + (day + i) % 3
                provider.return_next(None, cost_usd=Money(Decimal("0.0035") * n))
                outcome = await use_case.execute(
                    GenerateCommand(
                        prompt=f"day {day}",
                        n=n,
                        provider="replicate",
                        principal_id=user,
                        project_id=PROJECTS[(day + i) % 2],
                    )
                )
                generated.append(outcome.generation.id)
                clock.advance(timedelta(minutes=7))
            clock.advance(timedelta(days=1))
        for generation_id in generated[:5]:
            await gen.refund(generation_id, reason="customer complaint", credits=1)
        await gen.adjust(-3, memo="rounding correction")
        ledger = await gen.container.ledger_report().execute("default")
    captured = -sum(e.amount for e in ledger.entries if e.kind is EntryKind.CAPTURE)
    refunded = sum(e.amount for e in ledger.entries if e.kind is EntryKind.REFUND)
    return {"captured": captured, "refunded": refunded, "generations": len(generated)}


def test_a_months_usage_report_reconciles_with_the_ledger_until_an_entry_is_tampered_with(
    cli_env: dict[str, str],
) -> None:
    cli_env["IMAGEGEN_LOCAL_CREDITS_PER_IMAGE"] = "2"
    settings = Settings(data_dir=Path(cli_env["IMAGEGEN_DATA_DIR"]), local_credits_per_image=2)
    ledger = asyncio.run(a_month_of_activity(settings))
    assert ledger["captured"] > 0

    run = imagegen(
        cli_env,
        "usage",
        "report",
        "--period",
        "2026-11",
        "--by",
        "user,project",
        "--format",
        "json",
    )
    assert run.code == 0, run.stderr
    report = json.loads(run.stdout)
    total = report["total"]
    assert total["credits"] == ledger["captured"] - ledger["refunded"]
    assert total["generations"] == ledger["generations"]
    assert total["refunds"] == 5
    for column in ("images", "credits", "generations", "included_images", "overage_images"):
        assert sum(row[column] for row in report["rows"]) == total[column]
    assert Decimal(total["revenue_usd"]) == total["credits"] * Decimal("0.01")
    assert Decimal(total["provider_cost_usd"]) == Decimal("0.0035") * total["images"]
    assert Decimal(total["margin_usd"]) == Decimal(total["revenue_usd"]) - Decimal(
        total["provider_cost_usd"]
    )
    assert {row["user"] for row in report["rows"]} == set(USERS)
    assert imagegen(cli_env, "billing", "verify").code == 0

    database = Path(cli_env["IMAGEGEN_DATA_DIR"]) / "imagegen.db"
    with sqlite3.connect(database) as connection:
        (entry_id,) = connection.execute(
            "SELECT id FROM ledger_entries WHERE kind = 'capture' ORDER BY seq LIMIT 1"
        ).fetchone()
        connection.execute(
            "UPDATE ledger_entries SET amount = amount - 1 WHERE id = ?", (entry_id,)
        )
    broken = imagegen(cli_env, "billing", "verify", "--json")
    assert broken.code == 1
    violations = json.loads(broken.stdout)["violations"]
    assert any(entry_id in v and "moved" in v for v in violations), violations
    assert any("capture usage events charge" in v for v in violations), violations
    assert imagegen(cli_env, "credits", "verify").code == 1
