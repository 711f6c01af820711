"""Ten ``imagegen generate`` processes racing for a balance of four credits.

Each process is started behind a barrier (a tiny wrapper that waits for a file, then execs
the real command), so all ten really overlap. Exactly four may win; the other six must fail
cleanly with exit 3, nothing may be over-spent or left reserved, and the ledger must verify,
on SQLite and on PostgreSQL, both with the account already open and on a brand-new data dir
or database where migrations and account creation race as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).parent / "imagegen"
COMMAND = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from imagegen.interfaces.cli import main; main()"]
)
TIMEOUT_S = 90
PROCESSES = 10
CREDITS = 4

# Waits (at most 30 s) for the gate file, then becomes the real command.
_BARRIER = """\
import os, sys, time
gate, command = sys.argv[1], sys.argv[2:]
deadline = time.monotonic() + 30
while not os.path.exists(gate):
    if time.monotonic() > deadline:
        sys.exit(99)
    time.sleep(0.005)
os.execv(command[0], command)
"""


def start(env: dict[str, str], *args: str, gate: Path | None = None) -> subprocess.Popen[str]:
    barrier = [sys.executable, "-c", _BARRIER, str(gate)] if gate is not None else []
    return subprocess.Popen(
        [*barrier, *COMMAND, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"imagegen {process.args!r} did not finish within {TIMEOUT_S} s")
    return process.returncode, stdout, stderr


def imagegen_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    code, stdout, stderr = finish(start(env, *args, "--json"))
    assert code == 0, f"imagegen {' '.join(args)} exited {code}: {stderr}"
    data: dict[str, Any] = json.loads(stdout)
    return data


def environment(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["IMAGEGEN_DATA_DIR"] = str(data_dir)
    env["IMAGEGEN_STARTING_CREDITS"] = str(CREDITS)
    env["COLUMNS"] = "200"
    if database_url is not None:
        env["IMAGEGEN_DATABASE_URL"] = database_url
    return env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str | None:
    """None: the default SQLite file in the data dir; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


def race(env: dict[str, str], gate: Path) -> list[tuple[int, str, str]]:
    args = ("--n", "1", "--size", "64x64", "--json")
    processes = [
        start(env, "generate", f"a race, runner {i}", *args, gate=gate) for i in range(PROCESSES)
    ]
    gate.touch()
    return [finish(process) for process in processes]


def check_outcome(env: dict[str, str], outcomes: list[tuple[int, str, str]]) -> None:
    codes = sorted(code for code, _, _ in outcomes)
    stderrs = [stderr for code, _, stderr in outcomes if code not in (0, 3)]
    assert codes == [0] * CREDITS + [3] * (PROCESSES - CREDITS), stderrs

    winners = []
    for code, stdout, stderr in outcomes:
        if code == 0:
            result = json.loads(stdout)
            assert (result["status"], result["credits_charged"]) == ("succeeded", 1)
            winners.append(result["id"])
        else:
            lines = stderr.splitlines()
            assert len(lines) == 1, stderr
            assert lines[0].startswith("error: ")
            assert "Traceback" not in stderr
            assert stdout == ""

    checks = [
        start(env, "credits", "balance", "--json"),
        start(env, "credits", "verify"),
        start(env, "history", "--limit", "100", "--json"),
    ]
    balance_run, verify_run, history_run = (finish(p) for p in checks)
    balance, history = balance_run[1], history_run[1]

    assert (balance_run[0], history_run[0]) == (0, 0), (balance_run[2], history_run[2])
    assert json.loads(balance) == {
        "tenant_id": "default",
        "balance": 0,
        "reserved": 0,
        "available": 0,
    }
    assert verify_run[0] == 0, verify_run[2]
    items = json.loads(history)["items"]
    assert sorted(g["id"] for g in items) == sorted(winners)
    assert [g["status"] for g in items] == ["succeeded"] * CREDITS


def test_ten_generations_against_four_credits_exactly_four_succeed(
    tmp_path: Path, database: str | None
) -> None:
    env = environment(tmp_path / "data", database)
    opened = imagegen_json(env, "credits", "balance")
    assert opened["balance"] == CREDITS

    check_outcome(env, race(env, tmp_path / "go"))


def test_ten_generations_on_a_brand_new_data_dir_race_migrations_and_account_creation(
    tmp_path: Path, database: str | None
) -> None:
    env = environment(tmp_path / "data", database)
    assert not (tmp_path / "data").exists()

    check_outcome(env, race(env, tmp_path / "go"))
