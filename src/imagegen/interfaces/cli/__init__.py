"""The ``imagegen`` command."""

from imagegen.interfaces.cli.app import app, main

__all__ = ["app", "main"]
