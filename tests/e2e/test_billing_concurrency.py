"""Reservations racing for a plan's quota from several processes at once.

Each worker process waits behind a gate file, then starts its reservations concurrently
(a few at a time on its own connection pool); all of them together ask for far more images
than the quota holds. Exactly the quota's worth may succeed — on PostgreSQL 200 reservations
from 4 processes against 50 images, on SQLite 100 from 2 — and afterwards the quota counter,
the budget counter, the balance and the billing check must be exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagegen import AsyncImageGen, Settings
from imagegen.domain.plans import QUOTA, period_start

pytestmark = pytest.mark.slow

QUOTA_IMAGES = 50
TIMEOUT_S = 240
PLANS_FILE = f"""schema_version = 1
[[plans]]
id = "race"
name = "Race"
included_images = {QUOTA_IMAGES}
overage = "refuse"
"""

# One worker: wait for the gate, start ``count`` generations of one image each (``parallel``
# at a time), print how many succeeded and how many the quota refused.
_WORKER = """\
import asyncio, json, os, sys, time
from imagegen import AsyncImageGen, QuotaExceeded
gate, count, parallel, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

async def main():
    won = refused = 0
    async with AsyncImageGen() as gen:
        await gen.balance()  # connect and migrate before the race starts
        deadline = time.monotonic() + 60
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                sys.exit(99)
            await asyncio.sleep(0.005)
        slots = asyncio.Semaphore(parallel)

        async def one(i):
            nonlocal won, refused
            async with slots:
                try:
                    await gen.generate(f"{name} {i}", size="64x64", project="race")
                    won += 1
                except QuotaExceeded:
                    refused += 1

        await asyncio.gather(*(one(i) for i in range(count)))
    print(json.dumps({"won": won, "refused": refused}))

asyncio.run(main())
"""


def environment(tmp_path: Path, database_url: str) -> dict[str, str]:
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS_FILE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(
        IMAGEGEN_DATA_DIR=str(tmp_path / "data"),
        IMAGEGEN_DATABASE_URL=database_url,
        IMAGEGEN_PLANS_FILE=str(plans),
        IMAGEGEN_STARTING_CREDITS="100",
    )
    return env


def settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        data_dir=Path(env["IMAGEGEN_DATA_DIR"]),
        database_url=env["IMAGEGEN_DATABASE_URL"],  # type: ignore[arg-type]
        plans_file=Path(env["IMAGEGEN_PLANS_FILE"]),
    )


async def prepare(env: dict[str, str]) -> None:
    async with AsyncImageGen(settings_of(env)) as gen:
        await gen.subscribe("race")
        await gen.set_budget(project="race", images=1000)  # tracked, never binding


async def counters(env: dict[str, str]) -> dict[str, Any]:
    async with AsyncImageGen(settings_of(env)) as gen:
        now = gen.container.gateways.clock().now()
        async with gen.container.gateways.uow()(read_only=True) as uow:
            found = await uow.billing.counters(
                "default", period_start(now), [QUOTA, "project:race"]
            )
        return {
            "counters": {s: c.values() for s, c in found.items()},
            "balance": (await gen.balance()).to_dict(),
            "check": await gen.verify_billing(),
            "history": len((await gen.history(limit=100)).items),
        }


def race(env: dict[str, str], gate: Path, processes: int, per_process: int) -> list[dict[str, int]]:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(gate), str(per_process), "5", f"w{i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    gate.touch()
    results = []
    for worker in workers:
        try:
            stdout, stderr = worker.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.communicate()
            pytest.fail(f"a worker did not finish within {TIMEOUT_S} s")
        assert worker.returncode == 0, stderr
        results.append(json.loads(stdout))
    return results


def check(env: dict[str, str], results: list[dict[str, int]], asked: int) -> None:
    assert sum(r["won"] for r in results) == QUOTA_IMAGES
    assert sum(r["refused"] for r in results) == asked - QUOTA_IMAGES
    after = asyncio.run(counters(env))
    # used, held, overage images; used, held credits
    assert after["counters"][QUOTA] == (QUOTA_IMAGES, 0, 0, 0, 0)
    assert after["counters"]["project:race"] == (QUOTA_IMAGES, 0, 0, 0, 0)
    assert after["balance"] == {
        "tenant_id": "default",
        "balance": 100,
        "reserved": 0,
        "available": 100,
    }
    assert after["check"].violations == ()
    assert after["history"] == QUOTA_IMAGES


@pytest.mark.postgres
def test_200_reservations_from_4_processes_against_a_quota_of_50_on_postgres(
    tmp_path: Path, postgres_url: str
) -> None:
    env = environment(tmp_path, postgres_url)
    asyncio.run(prepare(env))
    check(env, race(env, tmp_path / "go", processes=4, per_process=50), asked=200)


def test_100_reservations_from_2_processes_against_a_quota_of_50_on_sqlite(
    tmp_path: Path,
) -> None:
    env = environment(tmp_path, f"sqlite:///{tmp_path / 'race.db'}")
    asyncio.run(prepare(env))
    check(env, race(env, tmp_path / "go", processes=2, per_process=50), asked=100)
