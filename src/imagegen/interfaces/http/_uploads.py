"""Uploaded images: bounded in size, and recognised by their content (not by the name or the
declared type) before the library decodes and checks them in full."""

from __future__ import annotations

from fastapi import HTTPException, UploadFile

CHUNK = 1024 * 1024


def sniff(head: bytes) -> str | None:
    """The image format the first bytes announce (PNG, JPEG or WebP), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


async def read_image(upload: UploadFile, limit: int, field: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"{field}: an uploaded image is at most {limit} bytes.")
        chunks.append(chunk)
    data = b"".join(chunks)
    if sniff(data[:16]) is None:
        raise HTTPException(415, f"{field}: the upload is not a PNG, JPEG or WebP image.")
    return data
