"""The cursor of every keyset-paginated list: ``(created_at, id)`` of the last item, opaque to
callers. One format for the SQL repositories, the in-memory fakes and the use cases that page
in memory, so a cursor from any of them works with the others."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from imagegen.domain.errors import InvalidParameter


def encode_cursor(created_at: datetime, item_id: str) -> str:
    raw = f"{created_at.isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``InvalidParameter`` for anything ``encode_cursor`` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, item_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidParameter("The cursor is not one this API returned.") from None
    if created_at.tzinfo is None:
        raise InvalidParameter("The cursor is not one this API returned.")
    return created_at, item_id
