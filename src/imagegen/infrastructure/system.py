"""The system clock and time-sortable id generation."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class UlidGenerator:
    """``prefix_`` + a ULID: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by creation time, which keeps primary-key indexes append-mostly, and need no
    coordination between processes.
    """

    def new(self, prefix: str) -> str:
        value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
        chars = []
        for _ in range(26):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return f"{prefix}_{''.join(reversed(chars))}"
