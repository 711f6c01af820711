"""API keys cached per process on PostgreSQL, invalidated by ``NOTIFY`` as revocations commit.

Authenticating a request reads its key by primary key: a round trip and a session's worth of
CPU on every request. Keys hardly ever change, so a process may keep them, provided it hears
of a revocation at once: ``SqlApiKeyRepository.save`` sends ``pg_notify(CHANNEL, key id)`` in
the transaction that revokes (PostgreSQL delivers it when, and only if, that commits), and
every process LISTENs on a connection of its own and drops the key.

Whenever it cannot be sure to hear (not connected yet, the listening connection broke), the
cache holds nothing and every request reads the database, as without it; on reconnecting it
starts empty. ``mark`` / ``put`` close the race between a request's read and a revocation
that commits while it is in flight: a key read before an invalidation is not kept. Entries
also expire after ``ttl_seconds``, a bound for a change made behind the library's back (an
``UPDATE api_keys`` by hand sends no notification).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

from imagegen.domain.access import ApiKey

log = logging.getLogger(__name__)

CHANNEL = "imagegen_api_keys"


class NotifiedKeyCache:
    def __init__(
        self,
        dsn: str,
        *,
        ttl_seconds: float = 30.0,
        max_entries: int = 10_000,
        retry_seconds: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._retry = retry_seconds
        self._keys: OrderedDict[str, tuple[ApiKey, float]] = OrderedDict()
        self._epoch = 0  # bumped by every invalidation
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._connection: Any = None
        self._socket = -1
        self._broken = asyncio.Event()

    # --- ApiKeyCache ------------------------------------------------------------------------

    def get(self, key_id: str) -> ApiKey | None:
        self._ensure_listener()
        self._drain()
        if not self._listening:
            return None
        entry = self._keys.get(key_id)
        if entry is None:
            return None
        key, stored_at = entry
        if time.monotonic() - stored_at > self._ttl:
            del self._keys[key_id]
            return None
        return key

    def mark(self) -> object:
        return (self._epoch, self._listening)

    def put(self, key: ApiKey, mark: object) -> None:
        if not self._listening or mark != (self._epoch, True):
            return  # something changed (or we were deaf) since the read began
        self._keys[key.id] = (key, time.monotonic())
        self._keys.move_to_end(key.id)
        while len(self._keys) > self._max_entries:
            self._keys.popitem(last=False)

    def forget(self, key_id: str) -> None:
        self._drain()
        self._invalidate(key_id)

    # --- the listener -----------------------------------------------------------------------
    # libpq's own pattern: after LISTEN the connection is idle and only receives notifications;
    # the loop calls ``_drain`` when its socket is readable, and ``get`` calls it too, so a
    # notification that has reached the socket is applied before any cached key is used.

    @property
    def listening(self) -> bool:
        return self._listening

    def _invalidate(self, key_id: str | None = None) -> None:
        self._epoch += 1
        if key_id is None:
            self._keys.clear()
        else:
            self._keys.pop(key_id, None)

    def _ensure_listener(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._listen_forever())

    def _drain(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            pgconn = connection.pgconn
            pgconn.consume_input()
            while (notification := pgconn.notifies()) is not None:
                self._invalidate(notification.extra.decode() or None)
        except Exception as error:
            log.warning("API key cache: the listening connection broke (%s)", type(error).__name__)
            self._deaf()
            self._broken.set()

    def _deaf(self) -> None:
        self._listening = False
        self._invalidate()
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._socket)

    async def _listen_forever(self) -> None:
        import psycopg

        while not self._closed:
            connection: Any = None
            try:
                connection = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                await connection.execute(f"LISTEN {CHANNEL}")
                self._broken.clear()
                self._socket = connection.pgconn.socket
                self._connection = connection
                asyncio.get_running_loop().add_reader(self._socket, self._drain)
                self._invalidate()  # whatever happened while deaf is unknown
                self._listening = True
                await self._broken.wait()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("API key cache: not listening (%s); retrying", type(error).__name__)
            finally:
                self._deaf()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
            await asyncio.sleep(self._retry)

    async def aclose(self) -> None:
        self._closed = True
        self._deaf()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
