"""Settings, read from ``IMAGEGEN_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("imagegen", appauthor=False)


class Settings(BaseSettings):
    """Every knob of the library. Each field is ``IMAGEGEN_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the SQLite database and the DAM's files live.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite at <data_dir>/imagegen.db. "
        "PostgreSQL: postgresql+psycopg://user:password@host/db.",
    )
    starting_credits: int = Field(
        default=100, ge=0, description="Credits granted when a tenant's account is first opened."
    )
    default_provider: str = Field(default="local", description="Provider used when none is named.")
    local_credits_per_image: int = Field(
        default=1, ge=0, description="What an image from the offline local provider costs."
    )
    local_latency_ms: int = Field(
        default=0, ge=0, description="Extra time the local provider waits (to emulate a provider)."
    )
    reservation_ttl_seconds: int = Field(
        default=900, ge=1, description="After this, the sweeper releases a stuck reservation."
    )
    provider_timeout_seconds: float = Field(
        default=180.0, gt=0, description="Longest wait for a provider's answer."
    )
    max_prompt_length: int = Field(default=4000, ge=1, le=100_000)
    auto_migrate: bool = Field(
        default=True, description="Apply database migrations when the library starts."
    )
    tenant: str = Field(
        default="default", min_length=1, max_length=64, description="Tenant used by the CLI."
    )

    @property
    def assets_dir(self) -> Path:
        return self.data_dir / "assets"

    def database_url_value(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'imagegen.db'}"

    def sync_database_url(self) -> str:
        """The URL with a synchronous driver (for the alembic command line)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url_value())
        driver = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql+psycopg"
        return url.set(drivername=driver).render_as_string(hide_password=False)
