"""Cryptographic randomness for secrets (API keys, webhook signing secrets)."""

from __future__ import annotations

import secrets


class TokenSecrets:
    def token(self, nbytes: int) -> str:
        return secrets.token_urlsafe(nbytes)

    def token_bytes(self, nbytes: int) -> bytes:
        return secrets.token_bytes(nbytes)
