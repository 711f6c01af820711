"""Content-addressed blob storage on a local filesystem, crash-safe by construction.

Layout under ``root``::

    ab/ab12…ef.png      the image, named by the SHA-256 of its final bytes (XMP included)
    ab/ab12…ef.json     its sidecar: provenance, digest, format, size, merged metadata
    .tmp/<pid>-<rand>.part   writes in progress

Every file is written to ``.tmp`` first, fsynced, then renamed into place with ``os.replace``
(atomic on POSIX and Windows within one filesystem), so a reader sees a whole file or none.
A crash can leave a ``.part`` file behind; the next process to use the storage removes those
whose writer is gone.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

from imagegen.application.ports import ImageInfo, StoredBlob
from imagegen.domain.asset import Provenance
from imagegen.domain.errors import StorageError
from imagegen.infrastructure.storage.xmp import build_xmp_packet, embed_xmp

# fullmatch, not match + "$": "$" also matches before a trailing newline. The backreference
# makes the shard directory agree with the digest, so a key names exactly one file.
_KEY_RE: Final = re.compile(r"([0-9a-f]{2})/(\1[0-9a-f]{62})\.(png|jpg|webp)")
_TEMP_RE: Final = re.compile(r"(\d{1,10})-[0-9a-f]+\.part")
TEMP_DIR_NAME: Final = ".tmp"
DEFAULT_STALE_TEMP_AGE_S: Final = 3600.0

# Names of temp files this process is writing right now, so cleanup never deletes them though
# their pid (ours) is alive. Process-wide rather than per instance: two storages on one root
# in one process must not take each other's writes for debris.
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


class FilesystemBlobStorage:
    """``BlobStorage`` on a directory tree; see the module docstring for the layout.

    ``stale_temp_age_s``: a ``.part`` file older than this is removed even if a process with
    the writer's pid is alive, since pids get reused (a container restarted after a crash often
    gets the same pid). Writes take milliseconds, so an hour is generous.
    """

    def __init__(
        self, root: Path | str, *, stale_temp_age_s: float = DEFAULT_STALE_TEMP_AGE_S
    ) -> None:
        self._root = Path(root).absolute()
        self._tmp = self._root / TEMP_DIR_NAME
        self._stale_temp_age_s = stale_temp_age_s
        self._real_root: Path | None = None
        self._ready = False
        self._lock = threading.Lock()  # guards _ready
        # Read-modify-write of a sidecar must not interleave within this process. (Across
        # processes two concurrent update_metadata calls on one key can still lose an update.)
        self._sidecar_lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self._root

    # --- BlobStorage ---------------------------------------------------------------------------

    async def put(self, data: bytes, info: ImageInfo, provenance: Provenance) -> StoredBlob:
        return await asyncio.to_thread(self._put, data, info, provenance)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        return await asyncio.to_thread(self._get, key, path)

    async def update_metadata(self, key: str, metadata: dict[str, Any]) -> None:
        path = self._path(key)
        await asyncio.to_thread(self._update_metadata, key, path, metadata)

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    # --- maintenance ---------------------------------------------------------------------------

    def remove_stale_temp_files(self) -> int:
        """Delete ``.part`` files left by writers that no longer run; return how many."""
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError(f"Could not list {self._tmp}: {_describe(exc)}") from exc
        now = time.time()
        removed = 0
        for entry in entries:
            match = _TEMP_RE.fullmatch(entry.name)
            if match is None:
                continue  # not ours: leave it alone
            pid = int(match.group(1))
            if pid == os.getpid():
                with _in_flight_lock:
                    stale = entry.name not in _in_flight
            else:
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue  # its writer just renamed or removed it
                stale = not _pid_alive(pid) or age > self._stale_temp_age_s
            if stale:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # another process cleaned it up first
                except OSError as exc:
                    raise StorageError(f"Could not remove {entry.path}: {_describe(exc)}") from exc
                removed += 1
        return removed

    # --- blocking implementations (run in worker threads) --------------------------------------

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            try:
                self._tmp.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"Could not create the storage directory {self._tmp}: {_describe(exc)}"
                ) from exc
            self._ready = True
        self.remove_stale_temp_files()

    def _put(self, data: bytes, info: ImageInfo, provenance: Provenance) -> StoredBlob:
        self._ensure_ready()
        final = embed_xmp(data, info, build_xmp_packet(provenance))
        sha = hashlib.sha256(final).hexdigest()
        key = f"{sha[:2]}/{sha}.{info.format.extension}"
        path = self._path(key)
        sidecar = path.with_suffix(".json")
        record: dict[str, Any] = {
            "sha256": sha,
            "format": info.format.value,
            "width": info.width,
            "height": info.height,
            "byte_size": len(final),
            "provenance": provenance.as_dict(),
        }
        created_sidecar = False
        try:
            self._make_shard_dir(path.parent)
            # Sidecar first: whenever the image is visible, its sidecar already is. Existing
            # sidecar fields (merged metadata) survive a second put of the same bytes.
            with self._sidecar_lock:
                # A damaged sidecar is rebuilt here: the record we are writing is authoritative.
                current = self._read_sidecar(sidecar, repair=True)
                merged = {**current, **record}
                if merged != current:
                    # The directory fsync below covers this rename too (same directory).
                    self._write_atomic(sidecar, _dumps(merged), sync_dir=False)
                    created_sidecar = not current
            if not _has_content(path, final):
                self._write_atomic(path, final, sync_dir=False)
            # One fsync of the shard directory makes both renames durable.
            _fsync_dir(path.parent)
        except BaseException as exc:
            if created_sidecar and not path.exists():
                # Do not leave a sidecar describing an image that never arrived.
                with suppress(OSError):
                    sidecar.unlink()
            if isinstance(exc, StorageError) or not isinstance(exc, Exception):
                raise
            # The message names the key and the OS error, never the bytes.
            raise StorageError(f"Could not store image {key}: {_describe(exc)}", key=key) from exc
        return StoredBlob(key=key, sha256=sha, byte_size=len(final))

    def _get(self, key: str, path: Path) -> bytes:
        self._ensure_ready()
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"No image is stored under key {key}.", key=key) from None
        except OSError as exc:
            raise StorageError(f"Could not read image {key}: {_describe(exc)}", key=key) from exc

    def _update_metadata(self, key: str, path: Path, metadata: dict[str, Any]) -> None:
        self._ensure_ready()
        if not path.is_file():
            raise StorageError(f"No image is stored under key {key}.", key=key)
        sidecar = path.with_suffix(".json")
        try:
            with self._sidecar_lock:
                current = self._read_sidecar(sidecar)
                # Caller metadata lives under its own key so it can never overwrite the
                # digest, size or provenance recorded when the bytes were stored.
                extra = current.get("metadata")
                current["metadata"] = {**(extra if isinstance(extra, dict) else {}), **metadata}
                self._write_atomic(sidecar, _dumps(current))
        except StorageError:
            raise
        except (TypeError, ValueError) as exc:
            raise StorageError(
                f"Metadata for {key} must be JSON-serializable: {exc}", key=key
            ) from exc
        except OSError as exc:
            raise StorageError(
                f"Could not update metadata of {key}: {_describe(exc)}", key=key
            ) from exc

    def _read_sidecar(self, sidecar: Path, *, repair: bool = False) -> dict[str, Any]:
        try:
            loaded = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            if repair:
                return {}
            raise StorageError(f"The sidecar {sidecar.name} is not valid JSON.") from exc
        if not isinstance(loaded, dict):
            if repair:
                return {}
            raise StorageError(f"The sidecar {sidecar.name} is not a JSON object.")
        return loaded

    def _make_shard_dir(self, directory: Path) -> None:
        try:
            directory.mkdir()
        except FileExistsError:
            return
        _fsync_dir(directory.parent)  # make the new directory entry itself durable

    def _write_atomic(self, target: Path, data: bytes, *, sync_dir: bool = True) -> None:
        """Write ``data`` to ``target`` via a fsynced temp file and a rename. ``sync_dir=False``
        leaves the directory fsync to the caller (one fsync covers several renames into it)."""
        name = f"{os.getpid()}-{secrets.token_hex(8)}.part"
        temp = self._tmp / name
        with _in_flight_lock:
            _in_flight.add(name)  # before the file exists, so cleanup never races us
        try:
            with open(temp, "xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # data on disk before the name points at it
            os.replace(temp, target)
            if sync_dir:
                _fsync_dir(target.parent)  # and the rename itself on disk
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        finally:
            with _in_flight_lock:
                _in_flight.discard(name)

    # --- keys ----------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file a key names, or StorageError. Keys come from outside (URLs, the database),
        so they are checked twice: against the strict pattern, and by resolving the path."""
        if not isinstance(key, str) or _KEY_RE.fullmatch(key) is None:
            raise StorageError(f"{_shorten(key)} is not a valid storage key.")
        root = self._resolved_root()
        path = root / key
        if not _links_below(str(root), key):
            return path  # the root is resolved and nothing below it is a link: path is real
        # resolve() follows symlinks, so a planted link to elsewhere is refused as well.
        path = path.resolve()
        if not path.is_relative_to(root):
            raise StorageError(f"{_shorten(key)} is not a valid storage key.")
        return path

    def _resolved_root(self) -> Path:
        if self._real_root is None:
            self._real_root = self._root.resolve()
        return self._real_root


def _links_below(root: str, key: str) -> bool:
    """Whether the shard directory or the file a (well-formed) key names is a symbolic link:
    two ``lstat`` calls where ``resolve()`` makes one per component of the whole path."""
    shard = os.path.join(root, key[:2])
    for candidate in (shard, os.path.join(shard, key[3:])):
        try:
            if stat.S_ISLNK(os.lstat(candidate).st_mode):
                return True
        except FileNotFoundError:
            return False  # nothing below a missing entry can be a link
        except OSError:
            return True  # let resolve() decide
    return False


def _has_content(path: Path, data: bytes) -> bool:
    """True if ``path`` already holds exactly ``data`` (content addressing makes a second
    write of the same image a no-op; a damaged copy is rewritten)."""
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return  # Windows cannot open a directory for fsync; NTFS journals the rename
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # os.kill(0, ...) would address our own process group
    if os.name != "posix":
        # On Windows os.kill(pid, 0) *terminates* the process; rely on the age check instead.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just belongs to another user
    except (OverflowError, OSError):
        return False  # not a pid this system can have
    return True


def _dumps(obj: dict[str, Any]) -> bytes:
    # ensure_ascii: a prompt with a lone surrogate still serializes (as \udxxx), never raises.
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})"
    return type(exc).__name__


def _shorten(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."
