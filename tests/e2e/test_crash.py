"""Processes killed at the worst moment: mid-generation, and mid-write into the DAM.

A generation whose process is SIGKILLed keeps its credit reservation until the sweeper
releases it after the TTL; a storage write killed between writing and renaming its temp file
leaves a ``.part`` file that the next process cleans up, and never a partial image.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).parent / "imagegen"
COMMAND = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from imagegen.interfaces.cli import main; main()"]
)
TIMEOUT_S = 60
TTL_S = 1
CREDITS = 10


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args],
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
        pytest.fail(f"{process.args!r} did not finish within {TIMEOUT_S} s")
    return process.returncode, stdout, stderr


def imagegen_json(env: dict[str, str], *args: str) -> Any:
    code, stdout, stderr = finish(start(env, *args, "--json"))
    assert code == 0, f"imagegen {' '.join(args)} exited {code}: {stderr}"
    return json.loads(stdout)


def kill(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=TIMEOUT_S)


def environment(data_dir: Path, database_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGEN_")}
    env["IMAGEGEN_DATA_DIR"] = str(data_dir)
    env["IMAGEGEN_STARTING_CREDITS"] = str(CREDITS)
    env["IMAGEGEN_LOCAL_LATENCY_MS"] = "60000"
    env["IMAGEGEN_RESERVATION_TTL_SECONDS"] = str(TTL_S)
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


# --- a generation killed mid-way ---------------------------------------------------------------


def wait_until_running(env: dict[str, str], process: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"generate ended early: {process.communicate()}"
        running = imagegen_json(env, "history", "--status", "running")["items"]
        if running:
            (generation,) = running
            return dict(generation)
        time.sleep(0.1)
    pytest.fail("the generation never showed up as running")


def test_killed_generation_keeps_its_reservation_until_the_sweeper_releases_it(
    tmp_path: Path, database: str | None
) -> None:
    env = environment(tmp_path / "data", database)
    generate = start(env, "generate", "a slow painting", "--n", "2", "--size", "64x64", "--json")
    try:
        generation = wait_until_running(env, generate)
    finally:
        kill(generate)
    assert generate.returncode == -signal.SIGKILL

    held = imagegen_json(env, "credits", "balance")
    assert held == {"tenant_id": "default", "balance": CREDITS, "reserved": 2, "available": 8}

    expires = datetime.fromisoformat(generation["created_at"]).timestamp() + TTL_S
    time.sleep(max(0.0, expires + 0.2 - time.time()))
    assert imagegen_json(env, "sweep") == {"released": 1}

    checks = [
        start(env, "credits", "balance", "--json"),
        start(env, "show", generation["id"], "--json"),
        start(env, "credits", "verify"),
        start(env, "sweep", "--json"),
    ]
    balance, shown, verify, sweep_again = (finish(p) for p in checks)

    assert json.loads(balance[1]) == {
        "tenant_id": "default",
        "balance": CREDITS,
        "reserved": 0,
        "available": CREDITS,
    }
    failed = json.loads(shown[1])
    assert failed["status"] == "failed"
    assert failed["failure_code"] == "abandoned"
    assert failed["credits_charged"] == 0
    assert verify[0] == 0, verify[2]
    assert json.loads(sweep_again[1]) == {"released": 0}


# --- a DAM write killed mid-way ----------------------------------------------------------------

# Stores one image with FilesystemBlobStorage; os.fsync of the Nth regular file (1: the
# sidecar's temp file, 2: the image's) announces itself in a marker file and hangs there,
# after the temp file is written but before it is renamed into place.
_WRITER = textwrap.dedent(
    """
    import asyncio, io, os, stat, sys, time
    from datetime import UTC, datetime
    from pathlib import Path

    from PIL import Image

    from imagegen.domain.asset import DIGITAL_SOURCE_TYPE_GENERATED, Provenance
    from imagegen.infrastructure.imaging import PillowInspector
    from imagegen.infrastructure.storage.filesystem import FilesystemBlobStorage

    root, marker, stall_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    real_fsync, files = os.fsync, 0

    def fsync(fd):
        global files
        if stat.S_ISREG(os.fstat(fd).st_mode):
            files += 1
            if files == stall_at:
                marker.write_text(str(os.getpid()))
                time.sleep(600)
        real_fsync(fd)

    os.fsync = fsync
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 80).convert("RGB").save(buffer, "PNG")
    data = buffer.getvalue()
    provenance = Provenance(
        digital_source_type=DIGITAL_SOURCE_TYPE_GENERATED, provider="local", model="procedural",
        prompt="killed mid-write", generation_id="gen_crash", seed=stall_at,
        created_at=datetime.now(UTC),
    )
    storage = FilesystemBlobStorage(root)
    asyncio.run(storage.put(data, PillowInspector().inspect(data), provenance))
    """
)


def start_writer(root: Path, marker: Path, stall_at: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), str(marker), str(stall_at)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(marker: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the writer ended early: {process.communicate()[1].decode()}")
        if time.monotonic() > deadline:
            pytest.fail("the writer never reached os.fsync")
        time.sleep(0.02)


def test_write_killed_before_rename_leaves_no_temp_or_partial_file_after_next_run(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    assets = data_dir / "assets"
    # One writer dies while writing the sidecar, the other while writing the image itself.
    writers = [
        (start_writer(assets, tmp_path / f"stalled-{n}", n), tmp_path / f"stalled-{n}")
        for n in (1, 2)
    ]
    try:
        for process, marker in writers:
            wait_for(marker, process)
    finally:
        for process, _ in writers:
            kill(process)
    assert len(list((assets / ".tmp").glob("*.part"))) == 2  # what the crash left behind

    env = environment(data_dir)
    env["IMAGEGEN_LOCAL_LATENCY_MS"] = "0"
    result = imagegen_json(env, "generate", "after the crash", "--size", "64x64")

    assert result["status"] == "succeeded"
    assert list((assets / ".tmp").iterdir()) == []
    files = [
        p for p in assets.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(assets).parts
    ]
    images = [p for p in files if p.suffix in {".png", ".jpg", ".webp"}]
    assert Path(result["images"][0]["path"]) in images
    for path in images:
        with Image.open(path) as image:
            image.load()  # a truncated file raises here
    for path in files:
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict)
    assert {p.suffix for p in files} <= {".png", ".jpg", ".webp", ".json"}
