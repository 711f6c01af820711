"""FilesystemBlobStorage against a real directory: addressing, sidecars, safety, crashes."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagegen.application.ports import ImageInfo
from imagegen.domain.asset import DIGITAL_SOURCE_TYPE_GENERATED, Provenance
from imagegen.domain.errors import StorageError
from imagegen.domain.values import ImageFormat
from imagegen.infrastructure.imaging import PillowInspector
from imagegen.infrastructure.storage.filesystem import FilesystemBlobStorage

PROVENANCE = Provenance(
    digital_source_type=DIGITAL_SOURCE_TYPE_GENERATED,
    provider="local",
    model="abstract-v1",
    prompt='a <fox> & "hound"',
    generation_id="gen_01",
    seed=7,
    created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
)


def image_bytes(fmt: str = "PNG", colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, fmt)
    return buffer.getvalue()


def inspect(data: bytes) -> ImageInfo:
    return PillowInspector().inspect(data)


def part_files(root: Path) -> list[Path]:
    return sorted((root / ".tmp").glob("*.part"))


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def storage(root: Path) -> FilesystemBlobStorage:
    return FilesystemBlobStorage(root)


# --- content addressing ------------------------------------------------------------------------


async def test_put_stores_the_embedded_bytes_under_their_sha256(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    data = image_bytes()
    blob = await storage.put(data, inspect(data), PROVENANCE)

    stored = (root / blob.key).read_bytes()
    assert blob.sha256 == hashlib.sha256(stored).hexdigest()
    assert blob.key == f"{blob.sha256[:2]}/{blob.sha256}.png"
    assert blob.byte_size == len(stored)
    assert stored != data  # provenance was embedded...
    assert DIGITAL_SOURCE_TYPE_GENERATED.encode() in stored
    assert Image.open(io.BytesIO(stored)).tobytes() == Image.open(io.BytesIO(data)).tobytes()
    assert await storage.get(blob.key) == stored
    assert storage.local_path(blob.key) == str((root / blob.key).resolve())
    assert Path(storage.local_path(blob.key) or "").is_absolute()


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
async def test_each_format_is_stored_with_its_extension_and_decodes(
    storage: FilesystemBlobStorage, fmt: str, ext: str
) -> None:
    data = image_bytes(fmt)
    blob = await storage.put(data, inspect(data), PROVENANCE)
    assert blob.key.endswith(f".{ext}")
    stored = await storage.get(blob.key)
    assert inspect(stored) == inspect(data)
    assert Image.open(io.BytesIO(stored)).info["xmp"].count(b"trainedAlgorithmicMedia") == 1


async def test_storing_the_same_image_twice_is_idempotent(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    data = image_bytes()
    first = await storage.put(data, inspect(data), PROVENANCE)
    mtime = (root / first.key).stat().st_mtime_ns
    second = await storage.put(data, inspect(data), PROVENANCE)
    assert second == first
    assert (root / first.key).stat().st_mtime_ns == mtime  # not rewritten
    assert len(stored_files(root)) == 2  # the image and its sidecar
    assert part_files(root) == []


async def test_same_pixels_with_other_provenance_are_a_different_blob(
    storage: FilesystemBlobStorage,
) -> None:
    data = image_bytes()
    one = await storage.put(data, inspect(data), PROVENANCE)
    other = await storage.put(
        data,
        inspect(data),
        Provenance(
            digital_source_type=DIGITAL_SOURCE_TYPE_GENERATED,
            provider="local",
            model="abstract-v1",
            prompt="another prompt",
            generation_id="gen_02",
        ),
    )
    assert one.key != other.key


async def test_concurrent_puts_all_land_and_leave_no_temp_files(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    images = [image_bytes(colour=(i, 2 * i, 3 * i)) for i in range(12)] * 2
    blobs = await asyncio.gather(*(storage.put(d, inspect(d), PROVENANCE) for d in images))
    assert len({b.key for b in blobs}) == 12
    for blob in blobs:
        assert hashlib.sha256(await storage.get(blob.key)).hexdigest() == blob.sha256
    assert part_files(root) == []


# --- sidecar -----------------------------------------------------------------------------------


async def test_sidecar_records_provenance_digest_format_and_size(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    data = image_bytes("JPEG")
    blob = await storage.put(data, inspect(data), PROVENANCE)
    sidecar = json.loads((root / blob.key).with_suffix(".json").read_text())
    assert sidecar == {
        "sha256": blob.sha256,
        "format": "jpeg",
        "width": 24,
        "height": 16,
        "byte_size": blob.byte_size,
        "provenance": PROVENANCE.as_dict(),
    }


async def test_update_metadata_merges_into_the_sidecar_and_survives_a_second_put(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    data = image_bytes()
    blob = await storage.put(data, inspect(data), PROVENANCE)
    await storage.update_metadata(blob.key, {"title": "Fox", "tags": ["a", "b"]})
    await storage.update_metadata(blob.key, {"title": "Fox at dusk", "approval": "final"})
    await storage.put(data, inspect(data), PROVENANCE)

    sidecar = json.loads((root / blob.key).with_suffix(".json").read_text())
    assert sidecar["metadata"] == {"title": "Fox at dusk", "tags": ["a", "b"], "approval": "final"}
    assert sidecar["sha256"] == blob.sha256
    assert sidecar["provenance"] == PROVENANCE.as_dict()
    assert part_files(root) == []


async def test_update_metadata_needs_a_stored_image_and_json_values(
    storage: FilesystemBlobStorage,
) -> None:
    missing = "ab/" + "ab" + "0" * 62 + ".png"
    with pytest.raises(StorageError, match="No image"):
        await storage.update_metadata(missing, {"title": "x"})
    data = image_bytes()
    blob = await storage.put(data, inspect(data), PROVENANCE)
    with pytest.raises(StorageError, match="JSON"):
        await storage.update_metadata(blob.key, {"when": object()})


async def test_get_of_a_missing_key_raises_storage_error(storage: FilesystemBlobStorage) -> None:
    with pytest.raises(StorageError, match="No image"):
        await storage.get("cd/cd" + "1" * 62 + ".webp")


# --- keys --------------------------------------------------------------------------------------

VALID_SHA = "ab" + "c" * 62
BAD_KEYS = [
    "../x",
    "/etc/passwd",
    "aa/../../etc/passwd",
    "",
    f"ab/{VALID_SHA}.gif",
    f"ab/{VALID_SHA}.PNG",
    f"AB/{VALID_SHA.upper()}.png",
    f"cd/{VALID_SHA}.png",  # shard does not match the digest
    f"ab/{VALID_SHA}.png\n",
    f"ab/{VALID_SHA}.png/../../x",
    f"ab\\{VALID_SHA}.png",
    f"/ab/{VALID_SHA}.png",
    f"ab/{VALID_SHA}.json",
    f"ab/{VALID_SHA[:-1]}.png",
]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_keys_outside_the_strict_pattern_are_refused(
    storage: FilesystemBlobStorage, key: str
) -> None:
    with pytest.raises(StorageError, match="not a valid storage key"):
        await storage.get(key)
    with pytest.raises(StorageError, match="not a valid storage key"):
        await storage.update_metadata(key, {"a": 1})
    with pytest.raises(StorageError, match="not a valid storage key"):
        storage.local_path(key)


async def test_a_shard_symlinked_outside_the_root_is_refused(
    storage: FilesystemBlobStorage, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{VALID_SHA}.png").write_bytes(b"secret")
    root.mkdir()
    (root / "ab").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StorageError, match="not a valid storage key"):
        await storage.get(f"ab/{VALID_SHA}.png")


async def test_an_image_file_symlinked_outside_the_root_is_refused(
    storage: FilesystemBlobStorage, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    (root / "ab").mkdir(parents=True)
    (root / "ab" / f"{VALID_SHA}.png").symlink_to(outside)
    with pytest.raises(StorageError, match="not a valid storage key"):
        await storage.get(f"ab/{VALID_SHA}.png")
    with pytest.raises(StorageError, match="not a valid storage key"):
        storage.local_path(f"ab/{VALID_SHA}.png")


def test_a_link_inside_the_root_resolves_to_its_target(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    other = "cd" + VALID_SHA[2:]
    (root / "ab").mkdir(parents=True)
    (root / "cd").mkdir()
    (root / "cd" / f"{other}.png").write_bytes(b"x")
    (root / "ab" / f"{VALID_SHA}.png").symlink_to(root / "cd" / f"{other}.png")
    assert storage.local_path(f"ab/{VALID_SHA}.png") == str(
        (root / "cd" / f"{other}.png").resolve()
    )


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failing_call", [1, 2], ids=["sidecar-replace", "image-replace"])
async def test_a_failed_write_leaves_no_temp_file_and_no_final_file(
    storage: FilesystemBlobStorage,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing_call: int,
) -> None:
    real_replace = os.replace
    calls = 0

    def flaky_replace(src: Any, dst: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    data = image_bytes()
    with pytest.raises(StorageError) as caught:
        await storage.put(data, inspect(data), PROVENANCE)

    assert "EIO" in str(caught.value)
    assert "\\x" not in str(caught.value)
    assert "PNG" not in str(caught.value)  # no image bytes in the message
    assert part_files(root) == []
    assert stored_files(root) == []  # neither the image nor an orphaned sidecar


async def test_a_failed_fsync_leaves_no_temp_file(
    storage: FilesystemBlobStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    data = image_bytes()
    with pytest.raises(StorageError, match="ENOSPC"):
        await storage.put(data, inspect(data), PROVENANCE)
    assert part_files(root) == []
    assert stored_files(root) == []


async def test_bytes_that_are_not_the_declared_format_are_refused(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    with pytest.raises(StorageError, match="not a PNG"):
        await storage.put(b"GIF89a...", ImageInfo(ImageFormat.PNG, 1, 1), PROVENANCE)
    assert stored_files(root) == []


# --- stale temp files and crashes --------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


async def test_first_use_removes_temp_files_of_dead_writers_only(root: Path) -> None:
    tmp = root / ".tmp"
    tmp.mkdir(parents=True)
    dead = tmp / f"{dead_pid()}-0123abcd.part"
    live_recent = tmp / f"{os.getppid()}-0123abcd.part"
    live_ancient = tmp / f"{os.getppid()}-4567abcd.part"
    ours_orphan = tmp / f"{os.getpid()}-89abcdef.part"  # a previous process with our pid
    unrelated = tmp / "notes.txt"
    for path in (dead, live_recent, live_ancient, ours_orphan, unrelated):
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(live_ancient, (two_hours_ago, two_hours_ago))

    storage = FilesystemBlobStorage(root)
    with pytest.raises(StorageError):
        await storage.get(f"ab/{VALID_SHA}.png")  # any first use cleans up

    assert sorted(p.name for p in tmp.iterdir()) == sorted([live_recent.name, unrelated.name])
    assert storage.remove_stale_temp_files() == 0


def test_remove_stale_temp_files_counts_and_tolerates_a_missing_directory(root: Path) -> None:
    storage = FilesystemBlobStorage(root)
    assert storage.remove_stale_temp_files() == 0
    (root / ".tmp").mkdir(parents=True)
    for i in range(3):
        (root / ".tmp" / f"{dead_pid()}-{i:08x}.part").write_bytes(b"x")
    assert storage.remove_stale_temp_files() == 3
    assert part_files(root) == []


async def test_cleanup_never_removes_a_write_in_flight_in_this_process(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, other = FilesystemBlobStorage(root), FilesystemBlobStorage(root)
    release, started = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def paused_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode) and not release.is_set():
            started.set()
            release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", paused_fsync)
    data = image_bytes()
    put = asyncio.create_task(writer.put(data, inspect(data), PROVENANCE))
    assert await asyncio.to_thread(started.wait, 5)
    assert len(part_files(root)) == 1  # our own pid, but a live write
    assert other.remove_stale_temp_files() == 0
    assert writer.remove_stale_temp_files() == 0
    release.set()
    blob = await put
    assert (root / blob.key).is_file()
    assert part_files(root) == []


_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, io, os, stat, sys, time
    from PIL import Image
    from imagegen.domain.asset import DIGITAL_SOURCE_TYPE_GENERATED, Provenance
    from imagegen.infrastructure.imaging import PillowInspector
    from imagegen.infrastructure.storage.filesystem import FilesystemBlobStorage

    real_fsync = os.fsync

    def hanging_fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a temp file, not a directory
            print("writing", flush=True)
            time.sleep(60)
        real_fsync(fd)

    os.fsync = hanging_fsync
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    data = buffer.getvalue()
    provenance = Provenance(DIGITAL_SOURCE_TYPE_GENERATED, "local", "m", "crash", "gen_x")
    storage = FilesystemBlobStorage(sys.argv[1])
    asyncio.run(storage.put(data, PillowInspector().inspect(data), provenance))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
async def test_a_writer_killed_mid_write_leaves_a_part_file_the_next_instance_removes(
    root: Path,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(root)], stdout=subprocess.PIPE, text=True
    ) as child:  # leaving the block waits for (reaps) it, so its pid is really gone
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "writing\n"
            assert len(part_files(root)) == 1  # mid-write: the temp file exists
        finally:
            child.send_signal(signal.SIGKILL)
    assert child.returncode == -signal.SIGKILL
    assert len(part_files(root)) == 1  # the crash left it behind

    survivor = FilesystemBlobStorage(root)
    assert survivor.remove_stale_temp_files() == 1
    assert part_files(root) == []
    assert stored_files(root) == []  # nothing half-written became visible
