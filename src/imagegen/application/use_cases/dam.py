"""The DAM: saving generated images as assets, listing, reading and exporting them."""

from __future__ import annotations

import logging
from datetime import datetime

import attrs

from imagegen.application.commands import DEFAULT_TENANT, SaveToDamCommand
from imagegen.application.ports import (
    AssetQuery,
    BlobStorage,
    Clock,
    IdGenerator,
    Page,
    UnitOfWorkFactory,
)
from imagegen.domain.asset import (
    DIGITAL_SOURCE_TYPE_COMPOSITE,
    DIGITAL_SOURCE_TYPE_GENERATED,
    Asset,
    Provenance,
    normalize_tags,
)
from imagegen.domain.errors import AssetNotFound, InvalidParameter
from imagegen.domain.events import DomainEvent
from imagegen.domain.generation import GeneratedImage, Generation
from imagegen.domain.models import Operation

log = logging.getLogger("imagegen.dam")

MAX_PAGE = 100


def new_asset(
    generation: Generation,
    image: GeneratedImage,
    tags: tuple[str, ...],
    title: str | None,
    metadata: dict[str, str],
    asset_id: str,
    now: datetime,
) -> Asset:
    return Asset(
        id=asset_id,
        tenant_id=generation.tenant_id,
        image_id=image.id,
        generation_id=generation.id,
        storage_key=image.storage_key,
        sha256=image.sha256,
        format=image.format,
        width=image.width,
        height=image.height,
        byte_size=image.byte_size,
        title=title or generation.prompt[:120],
        tags=tags,
        provenance=Provenance(
            digital_source_type=(
                DIGITAL_SOURCE_TYPE_GENERATED
                if generation.parameters.operation is Operation.GENERATE
                else DIGITAL_SOURCE_TYPE_COMPOSITE
            ),
            provider=generation.provider,
            model=generation.model,
            prompt=generation.prompt,
            negative_prompt=generation.parameters.negative_prompt,
            generation_id=generation.id,
            seed=image.seed.value if image.seed is not None else None,
            created_at=image.created_at,
            parent_asset_id=generation.parent_id,
        ),
        created_at=now,
        updated_at=now,
        metadata=dict(metadata),
    )


def asset_sidecar(asset: Asset) -> dict[str, object]:
    return {
        "asset": {
            "id": asset.id,
            "title": asset.title,
            "tags": list(asset.tags),
            "metadata": asset.metadata,
            "approval_state": asset.approval_state.value,
            "version": asset.version,
        }
    }


def _check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    if len(metadata) > 64:
        raise InvalidParameter("An asset takes at most 64 metadata fields.")
    for key, value in metadata.items():
        if not key.strip() or len(key) > 64 or len(value) > 2048:
            raise InvalidParameter(
                f"Metadata field {key[:64]!r}: names are 1-64 characters, values at most 2048."
            )
    return {key.strip(): value for key, value in metadata.items()}


class SaveToDam:
    """Save a generated image as an asset. Saving the same image again adds tags and metadata
    to its asset instead of making a second one."""

    def __init__(
        self, *, uow: UnitOfWorkFactory, storage: BlobStorage, clock: Clock, ids: IdGenerator
    ) -> None:
        self._uow = uow
        self._storage = storage
        self._clock = clock
        self._ids = ids

    async def execute(self, command: SaveToDamCommand) -> Asset:
        tags = normalize_tags(command.tags)
        metadata = _check_metadata(command.metadata)
        title = command.title.strip() if command.title else None
        if title is not None and not 1 <= len(title) <= 200:
            raise InvalidParameter("An asset title is 1-200 characters.")
        async with self._uow() as uow:
            generation = await uow.generations.get_by_image(command.tenant_id, command.image_id)
            image = (
                next((i for i in generation.images if i.id == command.image_id), None)
                if generation is not None
                else None
            )
            if generation is None or image is None:
                raise AssetNotFound(
                    f"No image {command.image_id} in this tenant's history.",
                    image_id=command.image_id,
                )
            now = self._clock.now()
            asset = await uow.assets.get_by_image(command.tenant_id, command.image_id)
            if asset is None:
                asset = new_asset(
                    generation, image, tags, title, metadata, self._ids.new("ast"), now
                )
                await uow.assets.add(asset)
                uow.record(
                    [
                        DomainEvent(
                            "asset.created",
                            asset.id,
                            now,
                            {
                                "tenant_id": asset.tenant_id,
                                "generation_id": generation.id,
                                "image_id": image.id,
                            },
                        )
                    ]
                )
            else:
                asset.tags = normalize_tags([*asset.tags, *tags])
                asset.metadata = {**asset.metadata, **metadata}
                if title is not None:
                    asset.title = title
                asset.updated_at = now
                await uow.assets.save(asset)
            await uow.commit()
        try:
            await self._storage.update_metadata(asset.storage_key, asset_sidecar(asset))
        except Exception:
            # The database is the record; the sidecar is a convenience copy for other tools.
            log.warning("could not update the sidecar of asset %s", asset.id, exc_info=True)
        return asset


class GetAsset:
    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, asset_id: str, tenant_id: str = DEFAULT_TENANT) -> Asset:
        async with self._uow(read_only=True) as uow:
            asset = await uow.assets.get(tenant_id, asset_id)
        if asset is None:
            raise AssetNotFound(f"No asset {asset_id}.", asset_id=asset_id)
        return asset


class ListAssets:
    def __init__(self, *, uow: UnitOfWorkFactory) -> None:
        self._uow = uow

    async def execute(self, query: AssetQuery) -> Page[Asset]:
        if not 1 <= query.limit <= MAX_PAGE:
            raise InvalidParameter(f"limit must be between 1 and {MAX_PAGE}.")
        tag = None
        if query.tag:
            tags = normalize_tags([query.tag])
            if not tags:
                raise InvalidParameter("A tag to filter on needs more than blank characters.")
            tag = tags[0]
        async with self._uow(read_only=True) as uow:
            return await uow.assets.list(attrs.evolve(query, tag=tag))


@attrs.frozen
class ExportedAsset:
    asset: Asset
    data: bytes = attrs.field(repr=False)

    @property
    def filename(self) -> str:
        return f"{self.asset.id}.{self.asset.format.extension}"


class ExportAsset:
    """The asset's stored bytes (with their embedded XMP provenance) and a safe file name."""

    def __init__(self, *, uow: UnitOfWorkFactory, storage: BlobStorage) -> None:
        self._get = GetAsset(uow=uow)
        self._storage = storage

    async def execute(self, asset_id: str, tenant_id: str = DEFAULT_TENANT) -> ExportedAsset:
        asset = await self._get.execute(asset_id, tenant_id)
        return ExportedAsset(asset, await self._storage.get(asset.storage_key))
