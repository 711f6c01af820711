"""The ``imagegen`` command."""

from imagegen.interfaces.cli import (
    jobs,  # noqa: F401  (registers cancel, worker)
    service,  # noqa: F401  (registers serve, tenants, keys)
    webhooks,  # noqa: F401  (registers webhooks)
)
from imagegen.interfaces.cli.app import app, main

__all__ = ["app", "main"]
