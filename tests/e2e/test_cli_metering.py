"""``imagegen billing meter-sync`` through the real process: real generations on SQLite and
PostgreSQL, their usage events sent to the Stripe meter-events emulator over a loopback
socket, each counted once however often the relay runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import imagegen

pytest.importorskip("stripe", reason="Stripe metering needs the stripe extra: imagegen[stripe]")
pytest.importorskip("uvicorn", reason="the emulators need the emulators extra")

from starlette.applications import Starlette

from imagegen.testing.emulators import FaultKind, serve
from imagegen.testing.emulators.stripe import create_app, usage_totals

pytestmark = pytest.mark.slow

KEY = "sk_test_51MeterSyncKey0123456789abcdefghijQRST"
CUSTOMER = "cus_MeterSync01"


PLANS = """
schema_version = 1

[[plans]]
id = "metered"
name = "Metered"
description = "One image a month included; then 3 credits an image, invoiced through Stripe."
included_images = 1
overage = "charge"
overage_credits_per_image = 3
"""


@pytest.fixture
def stripe_emulator() -> Iterator[tuple[Starlette, str]]:
    app = create_app(api_key=KEY)
    with serve(app) as base_url:
        yield app, base_url


def test_meter_sync_reports_each_capture_and_refund_once(
    cli_env: dict[str, str],
    database_url: str,
    stripe_emulator: tuple[Starlette, str],
    tmp_path: Path,
) -> None:
    app, base_url = stripe_emulator
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    env = {
        **cli_env,
        "IMAGEGEN_PLANS_FILE": str(plans),
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_STRIPE_API_KEY": KEY,
        "IMAGEGEN_STRIPE_API_BASE": base_url,
    }
    assert imagegen(env, "billing", "subscribe", "metered", "--customer", CUSTOMER).code == 0
    nothing = imagegen(env, "billing", "meter-sync", "--json").json()
    assert (nothing["sent"], nothing["ok"]) == (0, True)

    first = imagegen(env, "generate", "a fox", "-n", "2", "--size", "64x64", "--json").json()
    second = imagegen(env, "generate", "an owl", "--size", "64x64", "--json").json()
    synced = imagegen(env, "billing", "meter-sync", "--json").json()
    assert (synced["sent"], synced["duplicates"], synced["failed"]) == (2, 0, [])
    # One image included, then 3 credits each: the meter receives what was charged.
    assert (first["credits_charged"], second["credits_charged"]) == (3, 3)
    identifiers = sorted(event["identifier"] for event in app.state.meter_events)
    assert len(identifiers) == 2
    assert all(i.startswith("use_res_") for i in identifiers)
    report = json.loads(imagegen(env, "usage", "report", "--format", "json").stdout)
    assert (report["total"]["images"], report["total"]["credits"]) == (3, 6)
    assert usage_totals(app)["imagegen_credits"][CUSTOMER] == 6

    again = imagegen(env, "billing", "meter-sync", "--json").json()
    assert again["sent"] == 0  # marked metered: nothing is sent twice
    assert len(app.state.meter_events) == 2

    refund = imagegen(env, "billing", "refund", first["id"], "--reason", "blurry")
    assert refund.code == 0, refund.stderr
    after_refund = imagegen(env, "billing", "meter-sync", "--json").json()
    assert after_refund["sent"] == 1
    # The refund goes to the meter as a negative value: the customer's sum is what is owed.
    assert usage_totals(app)["imagegen_credits"][CUSTOMER] == 3
    assert imagegen(env, "billing", "verify").code == 0


def test_meter_sync_keeps_events_when_stripe_is_down_and_sends_them_later(
    cli_env: dict[str, str], sqlite_url: str, stripe_emulator: tuple[Starlette, str]
) -> None:
    app, base_url = stripe_emulator
    env = {
        **cli_env,
        "IMAGEGEN_DATABASE_URL": sqlite_url,
        "IMAGEGEN_STRIPE_API_KEY": KEY,
        "IMAGEGEN_STRIPE_API_BASE": base_url,
        "IMAGEGEN_STRIPE_MAX_ATTEMPTS": "1",
    }
    assert imagegen(env, "billing", "subscribe", "team", "--customer", CUSTOMER).code == 0
    generated = imagegen(env, "generate", "a fox", "--size", "64x64")
    assert generated.code == 0, generated.stderr
    app.state.faults.add(FaultKind.SERVER_ERROR, times=5)
    down = imagegen(env, "billing", "meter-sync")
    assert down.code == 1
    assert "not metered" in down.stderr
    assert KEY not in down.stderr + down.stdout
    assert app.state.meter_events == []

    app.state.faults.clear()
    up = imagegen(env, "billing", "meter-sync", "--json").json()
    assert (up["sent"], up["ok"]) == (1, True)
    assert len(app.state.meter_events) == 1


def test_meter_sync_without_a_key_names_the_setting(cli_env: dict[str, str]) -> None:
    run = imagegen(cli_env, "billing", "meter-sync")
    assert run.code != 0
    assert "IMAGEGEN_STRIPE_API_KEY" in run.stderr
