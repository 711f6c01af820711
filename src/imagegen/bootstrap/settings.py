"""Settings, read from ``IMAGEGEN_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("imagegen", appauthor=False)


class Settings(BaseSettings):
    """Every knob of the library. Each field is ``IMAGEGEN_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGEN_", extra="ignore", frozen=True, populate_by_name=True
    )

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

    # --- money ------------------------------------------------------------------------------
    usd_per_credit: Decimal = Field(
        default=Decimal("0.01"),
        gt=0,
        description="What one credit is worth: provider prices in USD become credits "
        "(rounded up per image).",
    )
    catalog_file: Path | None = Field(
        default=None, description="A model catalog file that overrides or extends the built-in one."
    )

    # --- billing ----------------------------------------------------------------------------
    plans_file: Path | None = Field(
        default=None, description="A plans file that overrides or extends the built-in plans."
    )
    alert_thresholds: list[int] = Field(
        default_factory=lambda: [80, 90, 100],
        description="JSON list: percentages of a quota or budget used at which "
        "credits.threshold_reached fires (once per threshold and month).",
    )

    # --- providers --------------------------------------------------------------------------
    # Keys are read from IMAGEGEN_<NAME> or the provider's own variable; they stay SecretStr
    # until the adapter unwraps them, so they never reach a repr, a log line or an error.
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("IMAGEGEN_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, description="e.g. an emulator: http://127.0.0.1:8001/v1"
    )
    replicate_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("IMAGEGEN_REPLICATE_API_TOKEN", "REPLICATE_API_TOKEN"),
    )
    replicate_base_url: str | None = Field(default=None)
    stability_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("IMAGEGEN_STABILITY_API_KEY", "STABILITY_API_KEY"),
    )
    stability_base_url: str | None = Field(default=None)
    provider_request_timeout_seconds: float = Field(
        default=120.0, gt=0, description="Timeout of one HTTP request to a provider."
    )
    provider_max_attempts: int = Field(
        default=4, ge=1, le=20, description="Attempts per provider call (retries + 1)."
    )
    provider_retry_base_delay_seconds: float = Field(
        default=0.5, ge=0, description="Backoff before the first retry (doubles each retry)."
    )
    provider_retry_max_delay_seconds: float = Field(
        default=20.0, ge=0, description="Longest backoff between two attempts."
    )
    provider_max_retry_after_seconds: float = Field(
        default=60.0, ge=0, description="A Retry-After longer than this fails at once."
    )
    provider_concurrency: int = Field(
        default=8, ge=1, le=256, description="Calls in flight at once, per provider."
    )
    provider_rate_per_second: float | None = Field(
        default=None, gt=0, description="Calls started per second, per provider (None: no limit)."
    )
    circuit_failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open a provider's circuit."
    )
    circuit_reset_seconds: float = Field(
        default=30.0, gt=0, description="How long an open circuit refuses calls."
    )
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description='JSON: {"replicate/black-forest-labs/flux-1.1-pro": ["openai/gpt-image-2"]}; '
        "used when a provider is unavailable, never on a content-policy refusal.",
    )

    # --- usage metering (Stripe) ---------------------------------------------------------------
    # Stripe never decides whether a job may run: these only feed ``imagegen billing meter-sync``.
    stripe_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("IMAGEGEN_STRIPE_API_KEY", "STRIPE_API_KEY"),
        description="Stripe secret (or restricted, with Billing meter events write) key; "
        "unset: usage is not reported to Stripe.",
    )
    stripe_meter_event_name: str = Field(
        default="imagegen_credits",
        min_length=1,
        max_length=100,
        description="The event name of the Stripe meter (aggregation: sum) credits go to.",
    )
    stripe_api_base: str | None = Field(
        default=None, description="Stripe's API address, e.g. an emulator: http://127.0.0.1:8010"
    )
    stripe_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Timeout of one request to Stripe."
    )
    stripe_max_attempts: int = Field(
        default=4, ge=1, le=20, description="Attempts per meter event (retries + 1)."
    )
    meter_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="Usage events read and marked per transaction."
    )

    # --- webhooks -------------------------------------------------------------------------------
    webhooks_allow_private: bool = Field(
        default=False,
        description="Let webhooks reach loopback, private, link-local and reserved addresses "
        "(tests, a receiver on the same host); off: public addresses only.",
    )
    webhooks_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of one webhook request."
    )
    webhooks_retry_schedule: list[float] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=0,
        max_length=50,
        description="JSON list: seconds to wait before each retry of a failed webhook; "
        "after the last one the delivery is dead.",
    )
    webhooks_jitter: float = Field(
        default=0.1, ge=0, le=1, description="Retry delays vary by up to this fraction."
    )
    webhooks_poll_seconds: float = Field(
        default=2.0, gt=0, description="How often a running dispatcher looks for work."
    )
    webhooks_dispatch_in_service: bool = Field(
        default=True,
        description="imagegen serve delivers webhooks in the background (off: run "
        "imagegen webhooks deliver or a worker instead).",
    )
    # --- background jobs -------------------------------------------------------------------
    job_queue: Literal["inprocess", "procrastinate"] = Field(
        default="inprocess",
        description="The job queue: 'inprocess' (jobs in the application's database, run by "
        "an asyncio runner in 'imagegen worker' or inside 'imagegen serve'), or "
        "'procrastinate' (PostgreSQL only, pip install 'imagegen[jobs]'; run 'imagegen worker').",
    )
    worker_concurrency: int = Field(
        default=4, ge=1, le=256, description="Jobs one worker runs at once."
    )
    job_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A running job's lease, renewed every third of it; a job whose worker died "
        "is claimed again once it runs out.",
    )
    job_max_attempts: int = Field(
        default=3, ge=1, le=100, description="Claims of a job before its generation is failed."
    )
    worker_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often an idle worker looks for jobs."
    )
    worker_maintenance_seconds: float = Field(
        default=60.0, gt=0, description="How often a worker sweeps expired reservations."
    )
    api_key_cache: bool = Field(
        default=True,
        description="On PostgreSQL, each process keeps the API keys it has read and drops one "
        "as soon as its revocation commits (LISTEN/NOTIFY); off: every request reads its key.",
    )
    serve_runs_jobs: bool = Field(
        default=True,
        description="'imagegen serve' runs a job runner in the server process (set false when "
        "separate 'imagegen worker' processes do the work).",
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
