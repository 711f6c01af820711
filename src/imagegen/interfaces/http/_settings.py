"""The HTTP service's own knobs (``IMAGEGEN_HTTP_*``); the library's are in ``Settings``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_HTTP_", extra="ignore", frozen=True)

    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest request body (413 above)."
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1024, description="Largest uploaded image (413 above)."
    )
    generation_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long POST /v1/generations and /v1/edits wait for the result; after "
        "that the generation goes on and the answer is 202 (with an Idempotency-Key) or 504.",
    )
