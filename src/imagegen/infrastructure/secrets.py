"""Cryptographic randomness for secrets (API keys)."""

from __future__ import annotations

import secrets


class TokenSecrets:
    def token(self, nbytes: int) -> str:
        return secrets.token_urlsafe(nbytes)
