"""Background edits end to end, over real sockets: ``POST /v1/edits`` (multipart: an image and
a mask) answers 202 with the edit ``queued``, and ``imagegen worker`` processes — on the
in-process queue with SQLite and PostgreSQL, and on procrastinate — run it against the
Stability emulator. The worker reads the uploads the service stored with the job; one worker
is SIGKILLed while its provider call is in flight, and the worker that claims the job next
still finds them. Canceling a queued edit charges nothing; every edit is charged once
(``imagegen billing verify`` passes)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cli_runner import COMMAND
from http_service import provision, running
from job_workers import backend_fixture, start_worker, until, workers_fixture  # noqa: F401
from PIL import Image

from imagegen.bootstrap.settings import Settings
from imagegen.interfaces.http import ServiceSettings, create_app
from imagegen.testing.emulators import serve
from imagegen.testing.emulators import stability as stability_emulator

pytestmark = pytest.mark.slow

STABILITY_KEY = "sk-e2e-background-edits-Stability0123456789"
INPAINT = "stable-image-inpaint"
LEASE_S = 1.0
MAX_UPLOAD = 256 * 1024
COMPOSITE = b"compositeWithTrainedAlgorithmicMedia"
FORM = {"provider": "stability", "model": INPAINT, "prompt": "a red door", "background": "true"}


@pytest.fixture(scope="module")
def stability() -> Iterator[tuple[Any, str]]:
    app = stability_emulator.create_app(api_key=STABILITY_KEY)
    with serve(app) as url:
        yield app, url


def png(mode: str = "RGB", size: tuple[int, int] = (128, 128)) -> bytes:
    buffer = io.BytesIO()
    if mode == "RGBA":  # a mask: the centre transparent (what to change), the rest opaque
        image = Image.new("RGBA", size, (0, 0, 0, 255))
        image.paste((0, 0, 0, 0), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    else:
        image = Image.effect_noise(size, 60).convert("RGB")
    image.save(buffer, "PNG")
    return buffer.getvalue()


def files(image: bytes | None, mask: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    parts = [("mask", ("mask.png", mask, "image/png"))]
    if image is not None:
        parts.insert(0, ("image", ("photo.png", image, "image/png")))
    return parts


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def test_background_edits_run_on_workers_cancel_and_survive_a_sigkill(
    tmp_path: Path,
    backend: tuple[str, str],
    workers: list[subprocess.Popen[str]],
    stability: tuple[Any, str],
) -> None:
    queue, database = backend
    emulator, stability_url = stability
    emulator.state.faults.clear()
    emulator.state.requests.clear()
    data = tmp_path / "data"
    settings = Settings(
        data_dir=data,
        database_url=database,  # type: ignore[arg-type]
        job_queue=queue,  # type: ignore[arg-type]
        serve_runs_jobs=False,  # the workers below do the work
        stability_api_key=STABILITY_KEY,  # type: ignore[arg-type]
        stability_base_url=stability_url,
        provider_max_attempts=1,
    )
    alpha = provision(settings, "alpha")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env.update(
        IMAGEGEN_DATA_DIR=str(data),
        IMAGEGEN_DATABASE_URL=database,
        IMAGEGEN_JOB_QUEUE=queue,
        IMAGEGEN_JOB_LEASE_SECONDS=str(LEASE_S),
        IMAGEGEN_WORKER_POLL_SECONDS="0.1",
        IMAGEGEN_WORKER_MAINTENANCE_SECONDS="0.3",
        IMAGEGEN_STABILITY_API_KEY=STABILITY_KEY,
        IMAGEGEN_STABILITY_BASE_URL=stability_url,
        IMAGEGEN_PROVIDER_MAX_ATTEMPTS="1",
    )
    creator = alpha.auth("creator")
    image, mask = png(), png("RGBA")
    limits = ServiceSettings(max_upload_bytes=MAX_UPLOAD)

    def inpaint_calls() -> list[dict[str, Any]]:
        return [r for r in emulator.state.requests if r["path"].endswith("/edit/inpaint")]

    with (
        running(create_app(settings, service=limits)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):

        def status(location: str) -> str:
            response = http.get(location, headers=alpha.auth("viewer"))
            assert response.status_code == 200, response.text
            value: str = response.json()["status"]
            return value

        def balance() -> tuple[int, int]:
            body = http.get("/v1/credits/balance", headers=alpha.auth("viewer")).json()
            return body["balance"], body["reserved"]

        # 0. The same checks as the synchronous edit, before anything is reserved.
        not_an_image = [("image", ("photo.png", b"GIF89a not really", "image/png"))]
        problem(
            http.post("/v1/edits", data=FORM, files=not_an_image, headers=creator),
            415,
            "unsupported_media_type",
        )
        too_big = [("image", ("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * MAX_UPLOAD, "image/png"))]
        problem(
            http.post("/v1/edits", data=FORM, files=too_big, headers=creator),
            413,
            "request_too_large",
        )
        small_mask = png("RGBA", (64, 64))
        problem(
            http.post("/v1/edits", data=FORM, files=files(image, small_mask), headers=creator),
            422,
            "invalid_parameter",
        )
        viewer = alpha.auth("viewer")
        problem(
            http.post("/v1/edits", data=FORM, files=files(image, mask), headers=viewer),
            403,
            "permission_denied",
        )
        assert balance() == (100, 0)

        # 1. Cancel a queued edit (no worker runs yet): canceled, never charged.
        queued = http.post("/v1/edits", data=FORM, files=files(image, mask), headers=creator)
        assert queued.status_code == 202, queued.text
        assert queued.headers["preference-applied"] == "respond-async"
        body = queued.json()
        assert (body["status"], body["operation"]) == ("queued", "inpaint")
        estimate = body["estimated_credits"]
        assert estimate > 0
        assert balance() == (100, estimate)
        canceled = http.post(f"{queued.headers['location']}/cancel", headers=creator)
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] == "canceled"
        assert balance() == (100, 0)

        # 2. SIGKILL the worker while its call to Stability is in flight: the next worker
        #    claims the job once the lease (or heartbeat) ran out and edits the same uploads.
        emulator.state.faults.add("latency", delay=5.0, route="/edit/inpaint")
        keyed = {**creator, "Idempotency-Key": "bg-edit-1"}
        doomed = http.post("/v1/edits", data=FORM, files=files(image, mask), headers=keyed)
        assert doomed.status_code == 202, doomed.text
        replay = http.post("/v1/edits", data=FORM, files=files(image, mask), headers=keyed)
        assert replay.status_code == 200, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.json()["id"] == doomed.json()["id"]
        location = doomed.headers["location"]
        worker = start_worker(workers, env)
        until(inpaint_calls, "the worker called Stability")
        assert status(location) == "running"
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
        assert balance() == (100, estimate)
        survivor = start_worker(workers, env)
        until(lambda: status(location) == "succeeded", "the job was retried", 60.0)
        done = http.get(location, headers=creator).json()
        assert done["credits_charged"] == estimate
        assert balance() == (100 - estimate, 0)  # charged once
        calls = inpaint_calls()
        assert len(calls) == 2  # the dead worker's call and the survivor's
        for call in calls:
            assert call["files"]["image"]["size"] == len(image)
            assert call["files"]["mask"]["size"] == len(mask)
        content = http.get(done["images"][0]["content_url"], headers=creator).content
        assert COMPOSITE in content
        assert done["id"].encode() in content

        # 3. An edit of a DAM asset (and an uploaded mask): the result links to its parent.
        made = http.post(
            "/v1/generations", json={"prompt": "a blue door", "size": "128x128"}, headers=creator
        )
        assert made.status_code == 201, made.text
        saved = http.post(
            "/v1/assets", json={"image_id": made.json()["images"][0]["id"]}, headers=creator
        )
        asset_id = saved.json()["id"]
        prefer = {**creator, "Prefer": "respond-async"}
        form = {k: v for k, v in FORM.items() if k != "background"}
        of_asset = http.post(
            "/v1/edits",
            data={**form, "source_asset_id": asset_id},
            files=files(None, mask),
            headers=prefer,
        )
        assert of_asset.status_code == 202, of_asset.text
        assert of_asset.json()["parent_id"] == asset_id
        until(lambda: status(of_asset.headers["location"]) == "succeeded", "the worker ran it")
        edited = http.get(of_asset.headers["location"], headers=creator).json()
        assert edited["parent_id"] == asset_id
        content = http.get(edited["images"][0]["content_url"], headers=creator).content
        assert asset_id.encode() in content  # the XMP's parentAssetId
        spent = 100 - estimate - 1 - edited["credits_charged"]
        assert balance() == (spent, 0)

        assert status(queued.headers["location"]) == "canceled"
        survivor.send_signal(signal.SIGTERM)
        _, stderr = survivor.communicate(timeout=30)
        assert survivor.returncode == 0, stderr
    # Every job is over (canceled or done): the uploads stored with them are gone.
    engine = sa.create_engine(database)
    try:
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT count(*) FROM job_inputs")) == 0
    finally:
        engine.dispose()
    verified = subprocess.run(
        [*COMMAND, "billing", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
