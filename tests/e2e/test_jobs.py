"""Background jobs end to end, over real sockets: the HTTP service under uvicorn, the job
queue (in-process on SQLite and PostgreSQL, procrastinate on PostgreSQL), and ``imagegen
worker`` in separate processes, one of them SIGKILLed mid-job: its job is claimed again by
another worker once its lease (in-process) or its heartbeat (procrastinate) ran out, and the
generation is charged exactly once (``imagegen billing verify`` passes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from cli_runner import COMMAND
from http_service import TenantKeys, provision, running
from job_workers import backend_fixture, start_worker, until, workers_fixture  # noqa: F401

from imagegen.bootstrap.settings import Settings
from imagegen.interfaces.http import create_app

pytestmark = pytest.mark.slow

BODY = {"prompt": "a fox in the snow", "size": "64x64", "background": True}
LEASE_S = 1.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'imagegen.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def environment(data_dir: Path, database: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(
        IMAGEGEN_DATA_DIR=str(data_dir),
        IMAGEGEN_DATABASE_URL=database,
        IMAGEGEN_JOB_LEASE_SECONDS=str(LEASE_S),
        IMAGEGEN_WORKER_POLL_SECONDS="0.1",
        **extra,
    )
    return env


def status_of(http: httpx.Client, location: str, keys: TenantKeys) -> str:
    response = http.get(location, headers=keys.auth("viewer"))
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def balance(http: httpx.Client, keys: TenantKeys) -> tuple[int, int]:
    body = http.get("/v1/credits/balance", headers=keys.auth("viewer")).json()
    return body["balance"], body["reserved"]


def billing_verified(env: dict[str, str]) -> None:
    done = subprocess.run(
        [*COMMAND, "billing", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_the_service_runs_background_generations_and_cancels_them(
    tmp_path: Path, database: str
) -> None:
    """The in-process runner inside the server: 202 + Location, then poll to the result."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database,  # type: ignore[arg-type]
        job_lease_seconds=LEASE_S,
        worker_poll_seconds=0.1,
    )
    alpha = provision(settings, "alpha")
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        accepted = http.post("/v1/generations", json=BODY, headers=alpha.auth("creator"))
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["status"] == "queued"
        location = accepted.headers["location"]
        until(lambda: status_of(http, location, alpha) == "succeeded", "the job ran")
        prefer = {**alpha.auth("creator"), "Prefer": "respond-async"}
        body = {k: v for k, v in BODY.items() if k != "background"}
        second = http.post("/v1/generations", json=body, headers=prefer)
        assert second.status_code == 202, second.text
        assert second.headers["preference-applied"] == "respond-async"
        until(lambda: status_of(http, second.headers["location"], alpha) == "succeeded", "ran")
        assert balance(http, alpha) == (98, 0)
        # A finished generation cannot be canceled; a viewer cannot cancel at all.
        refused = http.post(f"{location}/cancel", headers=alpha.auth("creator"))
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "invalid_state_transition"
        assert http.post(f"{location}/cancel", headers=alpha.auth("viewer")).status_code == 403


def test_workers_in_separate_processes_cancel_and_survive_a_sigkill(
    tmp_path: Path, backend: tuple[str, str], workers: list[subprocess.Popen[str]]
) -> None:
    queue, database = backend
    data = tmp_path / "data"
    settings = Settings(
        data_dir=data,
        database_url=database,  # type: ignore[arg-type]
        job_queue=queue,  # type: ignore[arg-type]
        serve_runs_jobs=False,  # the workers below do the work
    )
    alpha = provision(settings, "alpha")
    common = {"IMAGEGEN_JOB_QUEUE": queue, "IMAGEGEN_WORKER_MAINTENANCE_SECONDS": "0.3"}
    slow = environment(data, database, IMAGEGEN_LOCAL_LATENCY_MS="60000", **common)
    fast = environment(data, database, **common)
    creator = alpha.auth("creator")
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as http:
        # 1. Cancel a queued generation: no worker runs yet.
        queued = http.post("/v1/generations", json=BODY, headers=creator)
        assert queued.status_code == 202, queued.text
        assert balance(http, alpha) == (100, 1)
        canceled = http.post(f"{queued.headers['location']}/cancel", headers=creator)
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert balance(http, alpha) == (100, 0)

        # 2. Cancel a running one: the worker's job stops at its next heartbeat.
        worker = start_worker(workers, slow)
        running_one = http.post("/v1/generations", json=BODY, headers=creator).headers["location"]
        until(lambda: status_of(http, running_one, alpha) == "running", "the worker started it")
        canceled = http.post(f"{running_one}/cancel", headers=creator)
        assert canceled.json()["status"] == "canceled"
        assert balance(http, alpha) == (100, 0)

        # 3. SIGKILL the worker mid-job: another worker claims the job once its lease ran out.
        doomed = http.post("/v1/generations", json=BODY, headers=creator).headers["location"]
        until(lambda: status_of(http, doomed, alpha) == "running", "the worker started it")
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
        assert status_of(http, doomed, alpha) == "running"
        assert balance(http, alpha) == (100, 1)
        survivor = start_worker(workers, fast)
        until(lambda: status_of(http, doomed, alpha) == "succeeded", "the job was retried")
        assert balance(http, alpha) == (99, 0)  # charged once
        # The canceled ones stayed canceled; the survivor stops cleanly on SIGTERM.
        assert status_of(http, running_one, alpha) == "canceled"
        survivor.send_signal(signal.SIGTERM)
        _, stderr = survivor.communicate(timeout=30)
        assert survivor.returncode == 0, stderr
    billing_verified(fast)
