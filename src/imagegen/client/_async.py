"""``AsyncImageGen``: the library's entry point for asyncio applications."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy.ext.asyncio import AsyncEngine

from imagegen.application.commands import (
    EditCommand,
    GenerateCommand,
    GrantCreditsCommand,
    HistoryFilter,
    SaveToDamCommand,
)
from imagegen.application.ports import AssetQuery, ProviderHealth
from imagegen.bootstrap.container import Container, build_container
from imagegen.bootstrap.settings import Settings
from imagegen.client._billing import AsyncBilling
from imagegen.client._results import (
    AssetResult,
    BalanceResult,
    EstimateResult,
    GenerationResult,
    ImageResult,
    ModelInfo,
    Page,
)
from imagegen.domain.errors import InvalidParameter, StorageError
from imagegen.infrastructure.persistence.engine import upgrade_schema
from imagegen.infrastructure.persistence.uow import SqlUnitOfWorkFactory


def _decimal(value: Decimal | str | None) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    try:
        return Decimal(value)
    except InvalidOperation:
        raise InvalidParameter(f"max_cost is an amount in USD like 0.50; got {value!r}.") from None


class AsyncImageGen(AsyncBilling):
    """Generate images, keep them in the DAM, and bill them in credits.

    >>> async with AsyncImageGen() as gen:                    # doctest: +SKIP
    ...     result = await gen.generate("a red fox in the snow", n=2)

    ``settings`` default to ``Settings()`` (``IMAGEGEN_*`` environment variables). Pass a
    ``container`` to replace adapters (``container.gateways.storage.override(...)``).
    Every method raises ``imagegen.ImageGenError`` subclasses only.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        container: Container | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self._container = container or build_container(settings or Settings())
        self.settings: Settings = self._container.settings()
        self.tenant_id = tenant_id or self.settings.tenant
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncImageGen:
        return cls(Settings(**overrides))

    @property
    def container(self) -> Container:
        return self._container

    def _sql_engine(self) -> AsyncEngine | None:
        """The database engine, when the unit of work is the SQL one (not a test fake)."""
        uow = self._container.gateways.uow()
        return uow.engine if isinstance(uow, SqlUnitOfWorkFactory) else None

    async def _start(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                engine = self._sql_engine()
                if engine is not None and self.settings.auto_migrate:
                    await upgrade_schema(engine)
                    if self.settings.job_queue == "procrastinate":
                        from imagegen.infrastructure.jobs.procrastinate_queue import (
                            ensure_schema,
                        )

                        await ensure_schema(engine)
                self._ready = True

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close database connections. The object can be used again afterwards."""
        if self._ready:
            await self._container.gateways.provider_registry().aclose()
            engine = self._sql_engine()
            if engine is not None:
                await engine.dispose()

    @property
    def _storage(self) -> Any:
        return self._container.gateways.storage()

    # --- generation ------------------------------------------------------------------------

    async def generate(
        self,
        prompt: str,
        *,
        n: int = 1,
        size: str | None = None,
        aspect_ratio: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        seed: int | None = None,
        format: str | None = None,
        negative_prompt: str | None = None,
        quality: str | None = None,
        idempotency_key: str | None = None,
        tags: Sequence[str] = (),
        project: str | None = None,
        max_credits: int | None = None,
        max_cost: Decimal | str | None = None,
        background: bool = False,
    ) -> GenerationResult:
        """Generate ``n`` images, store them in the DAM, charge what they cost.

        With ``background``, return at once with the generation ``queued`` (its credits
        reserved): a worker (``imagegen worker``, or ``run_jobs``) runs it; poll it with
        ``get_generation`` and stop it with ``cancel``.

        With ``tags``, every image is also saved as a DAM asset carrying them. Replaying an
        ``idempotency_key`` returns the first result (``replayed=True``) and charges nothing.
        ``project`` bills it to a project (budgets, usage reports); ``max_credits`` /
        ``max_cost`` (USD) refuse it (``BudgetExceeded``) if its reservation would cost more.
        """
        await self._start()
        command = GenerateCommand(
            prompt=prompt,
            provider=provider,
            model=model,
            n=n,
            size=size,
            aspect_ratio=aspect_ratio,
            seed=seed,
            format=format,
            negative_prompt=negative_prompt,
            quality=quality,
            idempotency_key=idempotency_key,
            tags=tuple(tags),
            tenant_id=self.tenant_id,
            project_id=project,
            max_credits=max_credits,
            max_cost=_decimal(max_cost),
        )
        return await self._run(command, background=background)

    async def _run(
        self, command: GenerateCommand | EditCommand, *, background: bool
    ) -> GenerationResult:
        """Run it now, or queue it for a worker (``background``)."""
        if background:
            outcome = await self._container.submit_generation().execute(command)
        else:
            outcome = await self._container.generate_images().execute(command)
        return GenerationResult.of(
            outcome.generation, self._storage, replayed=outcome.replayed, assets=outcome.assets
        )

    async def cancel(self, generation_id: str) -> GenerationResult:
        """Cancel a queued or running generation: it ends ``canceled`` and its reserved
        credits are released (a running job stops at its worker's next heartbeat)."""
        await self._start()
        generation = await self._container.cancel_generation().execute(
            generation_id, self.tenant_id
        )
        return GenerationResult.of(generation, self._storage)

    async def run_jobs(self, *, once: bool = True, concurrency: int | None = None) -> int:
        """Run background jobs in this process (``once``: until none is left); returns how
        many this call finished. ``imagegen worker`` does the same without ``once``."""
        from imagegen.bootstrap.jobs import build_worker

        await self._start()
        return await build_worker(self._container, concurrency=concurrency).run(once=once)

    async def edit(
        self,
        source: AssetResult | ImageResult | str | bytes | os.PathLike[str],
        prompt: str = "",
        *,
        operation: str | None = None,
        mask: bytes | str | os.PathLike[str] | None = None,
        references: Sequence[bytes | str | os.PathLike[str]] = (),
        search_prompt: str | None = None,
        outpaint: tuple[int, int, int, int] | None = None,
        n: int = 1,
        size: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        seed: int | None = None,
        format: str | None = None,
        negative_prompt: str | None = None,
        quality: str | None = None,
        idempotency_key: str | None = None,
        tags: Sequence[str] = (),
        project: str | None = None,
        max_credits: int | None = None,
        max_cost: Decimal | str | None = None,
        background: bool = False,
    ) -> GenerationResult:
        """Edit an image into a new generation linked to its source.

        ``source`` is a DAM asset (``AssetResult`` or an ``ast_…`` id), a generated image
        (``ImageResult``, saved to the DAM first so the edit can link to it), image bytes, or a
        path. ``operation`` is one of edit, inpaint, outpaint, erase, search_and_replace,
        remove_background (default: implied — margins mean outpaint, a search prompt
        search-and-replace, a mask inpaint, else edit or the model's only operation);
        ``mask`` (same size as the source) marks what to change, ``search_prompt`` what to
        replace, ``outpaint`` the margins (left, right, up, down).
        The result carries the IPTC DigitalSourceType compositeWithTrainedAlgorithmicMedia.

        With ``background``, return at once with the edit ``queued`` (its credits reserved,
        its uploaded images stored with the job in the same transaction): a worker runs it,
        as for ``generate(background=True)``.
        """
        await self._start()
        asset_id: str | None = None
        images: list[bytes] = []
        if isinstance(source, ImageResult):
            source = await self.save_to_dam(source)
        if isinstance(source, AssetResult):
            asset_id = source.id
        elif isinstance(source, str) and source.startswith("ast_"):
            asset_id = source
        elif isinstance(source, bytes):
            images.append(source)
        else:
            images.append(await _read_file(source))
        images.extend([r if isinstance(r, bytes) else await _read_file(r) for r in references])
        mask_bytes = mask if isinstance(mask, bytes) or mask is None else await _read_file(mask)
        command = EditCommand(
            prompt=prompt,
            operation=operation,
            source_asset_id=asset_id,
            images=tuple(images),
            mask=mask_bytes,
            search_prompt=search_prompt,
            outpaint=outpaint,
            provider=provider,
            model=model,
            n=n,
            size=size,
            seed=seed,
            format=format,
            negative_prompt=negative_prompt,
            quality=quality,
            idempotency_key=idempotency_key,
            tags=tuple(tags),
            tenant_id=self.tenant_id,
            project_id=project,
            max_credits=max_credits,
            max_cost=_decimal(max_cost),
        )
        return await self._run(command, background=background)

    async def resume(self, generation_id: str) -> GenerationResult:
        """Finish a generation whose process died while its provider jobs ran: poll those
        jobs (never start new ones, so nothing is paid twice), then store and charge."""
        await self._start()
        outcome = await self._container.generate_images().resume(generation_id, self.tenant_id)
        return GenerationResult.of(outcome.generation, self._storage, assets=outcome.assets)

    def estimate(
        self,
        prompt: str = "estimate",
        *,
        n: int = 1,
        size: str | None = None,
        aspect_ratio: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        format: str | None = None,
        quality: str | None = None,
    ) -> EstimateResult:
        """What ``generate`` with these arguments would charge, without running it."""
        estimate = self._container.estimate_cost().execute(
            GenerateCommand(
                prompt=prompt,
                provider=provider,
                model=model,
                n=n,
                size=size,
                aspect_ratio=aspect_ratio,
                format=format,
                quality=quality,
            )
        )
        return EstimateResult(
            provider=estimate.spec.provider,
            model=estimate.spec.model,
            n=estimate.request.n,
            size=str(estimate.request.size),
            format=estimate.request.format.value,
            credits=estimate.credits.amount,
            usd=str(estimate.usd.amount) if estimate.usd is not None else None,
            warnings=estimate.warnings,
        )

    async def get_generation(self, generation_id: str) -> GenerationResult:
        await self._start()
        generation = await self._container.get_generation().execute(generation_id, self.tenant_id)
        return GenerationResult.of(generation, self._storage)

    async def history(
        self,
        *,
        status: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        text: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Generations, newest first; ``Page.items`` are ``GenerationResult``s."""
        await self._start()
        page = await self._container.list_history().execute(
            HistoryFilter(
                status=status,
                provider=provider,
                model=model,
                text=text,
                created_from=created_from,
                created_to=created_to,
                limit=limit,
                cursor=cursor,
                tenant_id=self.tenant_id,
            )
        )
        storage = self._storage
        return Page(tuple(GenerationResult.of(g, storage) for g in page.items), page.next_cursor)

    # --- the DAM ---------------------------------------------------------------------------

    async def save_to_dam(
        self,
        image: ImageResult | str,
        *,
        tags: Sequence[str] = (),
        title: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> AssetResult:
        await self._start()
        image_id = image.id if isinstance(image, ImageResult) else image
        asset = await self._container.save_to_dam().execute(
            SaveToDamCommand(
                image_id=image_id,
                tags=tuple(tags),
                title=title,
                metadata=dict(metadata or {}),
                tenant_id=self.tenant_id,
            )
        )
        return AssetResult.of(asset, self._storage)

    async def get_asset(self, asset_id: str) -> AssetResult:
        await self._start()
        asset = await self._container.get_asset().execute(asset_id, self.tenant_id)
        return AssetResult.of(asset, self._storage)

    async def assets(
        self,
        *,
        tag: str | None = None,
        text: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """Assets, newest first; ``Page.items`` are ``AssetResult``s."""
        await self._start()
        page = await self._container.list_assets().execute(
            AssetQuery(tenant_id=self.tenant_id, tag=tag, text=text, limit=limit, cursor=cursor)
        )
        storage = self._storage
        return Page(tuple(AssetResult.of(a, storage) for a in page.items), page.next_cursor)

    async def export_asset(self, asset_id: str, directory: str | os.PathLike[str]) -> Path:
        """Copy the asset's file (with its embedded provenance) into ``directory``."""
        await self._start()
        exported = await self._container.export_asset().execute(asset_id, self.tenant_id)
        target_dir = Path(directory)
        target = target_dir / exported.filename
        try:
            await asyncio.to_thread(_write_new_file, target, exported.data)
        except OSError as error:
            raise StorageError(
                f"Could not write {target}: {error.strerror or type(error).__name__}.",
                path=str(target),
            ) from None
        return target

    # --- credits ---------------------------------------------------------------------------

    async def balance(self) -> BalanceResult:
        await self._start()
        return BalanceResult.of(await self._container.get_balance().execute(self.tenant_id))

    async def grant_credits(self, amount: int, *, memo: str | None = None) -> BalanceResult:
        await self._start()
        balance = await self._container.grant_credits().execute(
            GrantCreditsCommand(amount=amount, memo=memo, tenant_id=self.tenant_id)
        )
        return BalanceResult.of(balance)

    async def verify_ledger(self) -> list[str]:
        """Every broken ledger invariant of this tenant, in words; empty when consistent."""
        await self._start()
        return (await self._container.ledger_report().execute(self.tenant_id)).violations()

    async def sweep(self) -> int:
        """Release reservations whose generation died; returns how many were released."""
        await self._start()
        return await self._container.sweeper().execute()

    async def provider_health(self, names: Sequence[str] = ()) -> list[ProviderHealth]:
        """Ask each provider (or those named) whether it answers and accepts our key."""
        return await self._container.check_providers().execute(list(names) or None)

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo.of(spec, self.settings.usd_per_credit)
            for spec in self._container.list_models().execute()
        ]


def _write_new_file(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


async def _read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return await asyncio.to_thread(Path(path).read_bytes)
    except OSError as error:
        raise InvalidParameter(
            f"Could not read {path}: {error.strerror or type(error).__name__}.", path=str(path)
        ) from None
