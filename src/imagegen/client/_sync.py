"""``ImageGen``: the same API as ``AsyncImageGen`` for code that does not use asyncio.

It runs an ``AsyncImageGen`` on a private event loop in a background thread, so it works
the same from scripts, notebooks (which already run a loop) and threaded web servers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from imagegen.application.ports import ProviderHealth
from imagegen.bootstrap.container import Container
from imagegen.bootstrap.settings import Settings
from imagegen.client._async import AsyncImageGen
from imagegen.client._billing import SyncBilling
from imagegen.client._results import (
    AssetResult,
    BalanceResult,
    EstimateResult,
    GenerationResult,
    ImageResult,
    ModelInfo,
    Page,
)

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="imagegen-loop", daemon=True
        )
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self.closed:
            coroutine.close()  # never started: close it so no "never awaited" warning
            raise RuntimeError("This ImageGen is closed; create a new one.")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            # Let the coroutine's own cleanup (releasing a reservation) finish first.
            future.cancel()
            with contextlib.suppress(concurrent.futures.CancelledError, Exception):
                future.result(timeout=10)
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class ImageGen(SyncBilling):
    """Generate images, keep them in the DAM, and bill them in credits.

    >>> with ImageGen() as gen:                                # doctest: +SKIP
    ...     result = gen.generate("a red fox in the snow", n=2)
    ...     gen.save_to_dam(result.images[0], tags=["winter"])
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        container: Container | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self._async = AsyncImageGen(settings, container=container, tenant_id=tenant_id)
        self._runner = _LoopThread()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    @classmethod
    def from_env(cls, **overrides: Any) -> ImageGen:
        return cls(Settings(**overrides))

    @property
    def settings(self) -> Settings:
        return self._async.settings

    @property
    def container(self) -> Container:
        return self._async.container

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._runner.closed:
            return
        try:
            self._runner.run(self._async.aclose())
        finally:
            self._runner.close()

    def generate(
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
        """See ``AsyncImageGen.generate``."""
        return self._runner.run(
            self._async.generate(
                prompt,
                n=n,
                size=size,
                aspect_ratio=aspect_ratio,
                provider=provider,
                model=model,
                seed=seed,
                format=format,
                negative_prompt=negative_prompt,
                quality=quality,
                idempotency_key=idempotency_key,
                tags=tags,
                project=project,
                max_credits=max_credits,
                max_cost=max_cost,
                background=background,
            )
        )

    def edit(
        self,
        source: AssetResult | ImageResult | str | bytes | os.PathLike[str],
        prompt: str = "",
        **options: Any,
    ) -> GenerationResult:
        """See ``AsyncImageGen.edit``."""
        return self._runner.run(self._async.edit(source, prompt, **options))

    def cancel(self, generation_id: str) -> GenerationResult:
        """See ``AsyncImageGen.cancel``."""
        return self._runner.run(self._async.cancel(generation_id))

    def run_jobs(self, *, once: bool = True, concurrency: int | None = None) -> int:
        """See ``AsyncImageGen.run_jobs``."""
        return self._runner.run(self._async.run_jobs(once=once, concurrency=concurrency))

    def resume(self, generation_id: str) -> GenerationResult:
        """See ``AsyncImageGen.resume``."""
        return self._runner.run(self._async.resume(generation_id))

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
        return self._async.estimate(
            prompt,
            n=n,
            size=size,
            aspect_ratio=aspect_ratio,
            provider=provider,
            model=model,
            format=format,
            quality=quality,
        )

    def get_generation(self, generation_id: str) -> GenerationResult:
        return self._runner.run(self._async.get_generation(generation_id))

    def history(
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
        return self._runner.run(
            self._async.history(
                status=status,
                provider=provider,
                model=model,
                text=text,
                created_from=created_from,
                created_to=created_to,
                limit=limit,
                cursor=cursor,
            )
        )

    def save_to_dam(
        self,
        image: ImageResult | str,
        *,
        tags: Sequence[str] = (),
        title: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> AssetResult:
        return self._runner.run(
            self._async.save_to_dam(image, tags=tags, title=title, metadata=metadata)
        )

    def get_asset(self, asset_id: str) -> AssetResult:
        return self._runner.run(self._async.get_asset(asset_id))

    def assets(
        self,
        *,
        tag: str | None = None,
        text: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        return self._runner.run(self._async.assets(tag=tag, text=text, limit=limit, cursor=cursor))

    def export_asset(self, asset_id: str, directory: str | Path) -> Path:
        return self._runner.run(self._async.export_asset(asset_id, directory))

    def balance(self) -> BalanceResult:
        return self._runner.run(self._async.balance())

    def grant_credits(self, amount: int, *, memo: str | None = None) -> BalanceResult:
        return self._runner.run(self._async.grant_credits(amount, memo=memo))

    def verify_ledger(self) -> list[str]:
        return self._runner.run(self._async.verify_ledger())

    def sweep(self) -> int:
        return self._runner.run(self._async.sweep())

    def provider_health(self, names: Sequence[str] = ()) -> list[ProviderHealth]:
        return self._runner.run(self._async.provider_health(names))

    def models(self) -> list[ModelInfo]:
        return self._async.models()
