"""The database-backed job queue and its asyncio runner."""

from imagegen.infrastructure.jobs.runner import JobRunner
from imagegen.infrastructure.jobs.sql_queue import SqlJobQueue

__all__ = ["JobRunner", "SqlJobQueue"]
