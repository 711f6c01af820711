"""Reading generations back: one by id, or the history with filters and cursor pagination."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from imagegen.application.commands import DEFAULT_TENANT, HistoryFilter
from imagegen.application.ports import HistoryQuery, Page, UnitOfWorkFactory
from imagegen.domain.errors import GenerationNotFound, InvalidParameter
from imagegen.domain.generation import Generation, GenerationStatus

MAX_PAGE = 100


class GetGeneration:
    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, generation_id: str, tenant_id: str = DEFAULT_TENANT) -> Generation:
        async with self._uow(read_only=True) as uow:
            generation = await uow.generations.get(tenant_id, generation_id)
        if generation is None:
            raise GenerationNotFound(f"No generation {generation_id}.", generation_id=generation_id)
        return generation


class ListHistory:
    """Newest first. ``next_cursor`` is opaque: pass it back to get the next page."""

    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, filters: HistoryFilter) -> Page[Generation]:
        if not 1 <= filters.limit <= MAX_PAGE:
            raise InvalidParameter(f"limit must be between 1 and {MAX_PAGE}.")
        status = None
        if filters.status:
            try:
                status = GenerationStatus(filters.status.strip().lower())
            except ValueError:
                allowed = ", ".join(s.value for s in GenerationStatus)
                raise InvalidParameter(
                    f"Status {filters.status!r} is not one of {allowed}."
                ) from None
        # A date without a timezone means UTC, as in the CLI.
        filters = attrs.evolve(
            filters,
            created_from=_as_utc(filters.created_from),
            created_to=_as_utc(filters.created_to),
        )
        if (
            filters.created_from is not None
            and filters.created_to is not None
            and filters.created_from > filters.created_to
        ):
            raise InvalidParameter("The date range ends before it starts.")
        query = HistoryQuery(
            tenant_id=filters.tenant_id,
            status=status,
            provider=filters.provider or None,
            model=filters.model or None,
            text=(filters.text or "").strip() or None,
            created_from=filters.created_from,
            created_to=filters.created_to,
            limit=filters.limit,
            cursor=filters.cursor,
        )
        async with self._uow(read_only=True) as uow:
            return await uow.generations.list(query)


def _as_utc(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)
