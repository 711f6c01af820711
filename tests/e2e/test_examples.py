"""Every file in examples/ runs, as a user would run it, and does what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, env: dict[str, str]) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def balance(env: dict[str, str]) -> dict[str, int]:
    script = "import json; from imagegen import ImageGen\n"
    script += "with ImageGen() as g: print(json.dumps(g.balance().to_dict()))"
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return dict(json.loads(out))


def test_every_example_has_a_test() -> None:
    tested = {
        "quickstart.py",
        "campaign_async.py",
        "testing_with_fakes.py",
        "provider_plugin.py",
        "billing.py",
    }
    present = {p.name for p in EXAMPLES.glob("*.py")}
    assert present <= tested, f"examples without a test: {present - tested}"


def test_quickstart_generates_saves_and_charges_two_credits(cli_env: dict[str, str]) -> None:
    out = run_example("quickstart.py", cli_env)
    assert "available before: 100 credits" in out
    assert "charged 2 credits" in out
    assert out.count(" 512x512 png -> ") == 2
    assert "trainedAlgorithmicMedia" in out
    assert "refused:" in out
    assert "available after: 98 credits" in out
    paths = [line.split(" -> ")[1] for line in out.splitlines() if " -> " in line]
    assert all(Path(p).is_file() for p in paths)


def test_campaign_example_makes_every_format_and_replays_for_free(
    cli_env: dict[str, str],
) -> None:
    first = run_example("campaign_async.py", cli_env)
    for name, size in {"square": "1024x1024", "story": "768x1368", "banner": "1368x768"}.items():
        assert f"{name}: {size}" in first
    assert "4 assets tagged campaign:autumn-sale" in first
    assert "(replayed)" not in first
    second = run_example("campaign_async.py", cli_env)
    assert second.count("(replayed)") == 4
    assert "4 assets tagged campaign:autumn-sale" in second
    assert balance(cli_env)["available"] == 100 - 4


@pytest.mark.skipif(not (EXAMPLES / "testing_with_fakes.py").exists(), reason="not written yet")
def test_testing_with_fakes_example_runs_without_touching_disk(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    out = run_example("testing_with_fakes.py", cli_env)
    assert "ok" in out
    assert not (tmp_path / "cli-data").exists()


def test_provider_plugin_example_is_discovered_through_its_entry_point_and_billed(
    cli_env: dict[str, str],
) -> None:
    out = run_example("provider_plugin.py", cli_env)
    assert "plugin models: ['swatch/flat-v1']" in out
    assert "succeeded, 6 images in 2 calls" in out
    assert "charged 6 credits for $0.012" in out  # $0.002 an image, 1 credit ($0.01) rounded up
    assert balance(cli_env)["available"] == 100 - 6


def test_billing_example_stops_at_the_quota_and_the_budget_and_reconciles(
    cli_env: dict[str, str],
) -> None:
    out = run_example("billing.py", cli_env)
    assert "plans: free (10/month), pro (200/month), team (1000/month)" in out
    assert "4 images on the free plan cost 0 credits" in out
    assert "refused: The Free plan includes 10 images per month; 2 are left" in out
    assert "refused: The budget of project:brochure allows 10 images per month" in out
    assert "refund gave back 4 images of quota" in out
    assert "project brochure: 4 images, 0 credits" in out
    assert "billing verify: consistent" in out
    assert balance(cli_env)["available"] == 100
