"""What the background-job e2e tests share: the queue/database matrix, ``imagegen worker``
processes (all stopped when the test ends), and polling instead of sleeping. A module uses
the fixtures ``backend`` and ``workers`` by importing ``backend_fixture`` / ``workers_fixture``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_runner import COMMAND


@pytest.fixture(
    name="backend",
    params=[
        "inprocess-sqlite",
        pytest.param("inprocess-postgres", marks=pytest.mark.postgres),
        pytest.param("procrastinate-postgres", marks=pytest.mark.postgres),
    ],
)
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(job queue, database URL)."""
    queue, database = request.param.split("-")
    if database == "sqlite":
        return queue, f"sqlite:///{tmp_path / 'imagegen.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return queue, url


@pytest.fixture(name="workers")
def workers_fixture() -> Iterator[list[subprocess.Popen[str]]]:
    """``imagegen worker`` processes started by a test; all stopped at its end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


def start_worker(
    started: list[subprocess.Popen[str]], env: dict[str, str], *args: str
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*COMMAND, "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    started.append(process)
    return process


def until(check: Callable[[], Any], what: str, deadline_s: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (never a bare sleep as a barrier)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {deadline_s} s")
