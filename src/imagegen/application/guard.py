"""The use cases as a caller with an identity sees them.

Every call takes the ``Principal`` (who is calling), checks the role's permission
(``imagegen.domain.access.PERMISSIONS``) before anything runs, and scopes the call to the
principal's tenant — whatever tenant a command carries is replaced, so a shell cannot
forget it. Another tenant's ids are simply not found (``NotFound``, never "forbidden").
The HTTP service calls the library only through this class.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from imagegen.application.commands import (
    EditCommand,
    GenerateCommand,
    GrantCreditsCommand,
    HistoryFilter,
    SaveToDamCommand,
    UsageReportCommand,
)
from imagegen.application.ports import AssetQuery, BlobStorage, Page, UnitOfWorkFactory
from imagegen.application.use_cases import (
    EstimateCost,
    ExportAsset,
    GenerateImages,
    GenerationOutcome,
    GetAsset,
    GetBalance,
    GetGeneration,
    ListAssets,
    ListHistory,
    ListModels,
    SaveToDam,
)
from imagegen.application.use_cases.access import KeyOutcome, ManageApiKeys
from imagegen.application.use_cases.billing import UsageReport, UsageReportResult
from imagegen.application.use_cases.credits import Balance
from imagegen.application.use_cases.dam import ExportedAsset
from imagegen.application.use_cases.grants import GrantCreditsOnce, GrantOutcome
from imagegen.application.use_cases.jobs import CancelGeneration, SubmitGeneration
from imagegen.application.use_cases.models import Estimate
from imagegen.domain.access import ApiKey, Permission, Principal
from imagegen.domain.asset import Asset
from imagegen.domain.errors import AssetNotFound, ConfigurationError, PermissionDenied
from imagegen.domain.generation import GeneratedImage, Generation
from imagegen.domain.models import ModelSpec


@attrs.frozen
class ImageContent:
    image: GeneratedImage
    data: bytes = attrs.field(repr=False)


@attrs.frozen
class SavedAsset:
    asset: Asset
    created: bool


def require(principal: Principal, permission: Permission) -> None:
    if not principal.can(permission):
        raise PermissionDenied(
            f"The {principal.role.value} role may not do this ({permission.value}).",
            permission=permission.value,
            role=principal.role.value,
        )


@attrs.frozen(kw_only=True)
class AccessGuard:
    generate_images: GenerateImages
    get_generation: GetGeneration
    list_history: ListHistory
    save_to_dam: SaveToDam
    get_asset: GetAsset
    list_assets: ListAssets
    export_asset: ExportAsset
    get_balance: GetBalance
    grant_credits_once: GrantCreditsOnce
    list_models: ListModels
    estimate_cost: EstimateCost
    uow: UnitOfWorkFactory
    storage: BlobStorage
    submit_generation: SubmitGeneration | None = None
    cancel_generation: CancelGeneration | None = None
    usage_reports: UsageReport | None = None
    manage_keys: ManageApiKeys | None = None

    # --- the catalog ---------------------------------------------------------------------

    def models(self, principal: Principal) -> Sequence[ModelSpec]:
        require(principal, Permission.MODELS_READ)
        return self.list_models.execute()

    def estimate(self, principal: Principal, command: GenerateCommand) -> Estimate:
        require(principal, Permission.MODELS_READ)
        return self.estimate_cost.execute(attrs.evolve(command, tenant_id=principal.tenant_id))

    # --- generations ---------------------------------------------------------------------

    async def generate(
        self, principal: Principal, command: GenerateCommand | EditCommand
    ) -> GenerationOutcome:
        require(principal, Permission.GENERATIONS_CREATE)
        return await self.generate_images.execute(_scoped(command, principal))

    async def submit(
        self, principal: Principal, command: GenerateCommand | EditCommand
    ) -> GenerationOutcome:
        """Queue a generation or an edit for a worker: it comes back ``queued``, its credits
        reserved."""
        require(principal, Permission.GENERATIONS_CREATE)
        if self.submit_generation is None:
            raise ConfigurationError("Background generations are not configured.")
        scoped = attrs.evolve(command, tenant_id=principal.tenant_id, principal_id=principal.key_id)
        return await self.submit_generation.execute(scoped)

    async def cancel(self, principal: Principal, generation_id: str) -> Generation:
        """Cancel a queued or running generation of the caller's tenant."""
        require(principal, Permission.GENERATIONS_CREATE)
        if self.cancel_generation is None:
            raise ConfigurationError("Cancelling generations is not configured.")
        return await self.cancel_generation.execute(generation_id, principal.tenant_id)

    async def generation(self, principal: Principal, generation_id: str) -> Generation:
        require(principal, Permission.GENERATIONS_READ)
        return await self.get_generation.execute(generation_id, principal.tenant_id)

    async def generation_by_idempotency_key(
        self, principal: Principal, key: str
    ) -> Generation | None:
        require(principal, Permission.GENERATIONS_READ)
        async with self.uow(read_only=True) as uow:
            return await uow.generations.get_by_idempotency_key(principal.tenant_id, key)

    async def history(self, principal: Principal, filters: HistoryFilter) -> Page[Generation]:
        require(principal, Permission.GENERATIONS_READ)
        return await self.list_history.execute(attrs.evolve(filters, tenant_id=principal.tenant_id))

    async def image_content(self, principal: Principal, image_id: str) -> ImageContent:
        require(principal, Permission.GENERATIONS_READ)
        async with self.uow(read_only=True) as uow:
            generation = await uow.generations.get_by_image(principal.tenant_id, image_id)
        image = (
            next((i for i in generation.images if i.id == image_id), None) if generation else None
        )
        if image is None:
            raise AssetNotFound(f"No image {image_id}.", image_id=image_id)
        return ImageContent(image, await self.storage.get(image.storage_key))

    # --- the DAM -------------------------------------------------------------------------

    async def save_asset(self, principal: Principal, command: SaveToDamCommand) -> SavedAsset:
        """Save an image as an asset; saving it again adds tags and metadata to the same
        asset (``created`` is False), so a retried request never makes a second one."""
        require(principal, Permission.ASSETS_CREATE)
        async with self.uow(read_only=True) as uow:
            existed = await uow.assets.get_by_image(principal.tenant_id, command.image_id)
        asset = await self.save_to_dam.execute(attrs.evolve(command, tenant_id=principal.tenant_id))
        return SavedAsset(asset, created=existed is None)

    async def asset(self, principal: Principal, asset_id: str) -> Asset:
        require(principal, Permission.ASSETS_READ)
        return await self.get_asset.execute(asset_id, principal.tenant_id)

    async def assets(self, principal: Principal, query: AssetQuery) -> Page[Asset]:
        require(principal, Permission.ASSETS_READ)
        return await self.list_assets.execute(attrs.evolve(query, tenant_id=principal.tenant_id))

    async def asset_content(self, principal: Principal, asset_id: str) -> ExportedAsset:
        require(principal, Permission.ASSETS_READ)
        return await self.export_asset.execute(asset_id, principal.tenant_id)

    # --- credits -------------------------------------------------------------------------

    async def balance(self, principal: Principal) -> Balance:
        require(principal, Permission.CREDITS_READ)
        return await self.get_balance.execute(principal.tenant_id)

    async def grant_credits(
        self, principal: Principal, command: GrantCreditsCommand, idempotency_key: str | None
    ) -> GrantOutcome:
        require(principal, Permission.CREDITS_GRANT)
        return await self.grant_credits_once.execute(
            attrs.evolve(command, tenant_id=principal.tenant_id), idempotency_key
        )

    # --- usage ---------------------------------------------------------------------------

    async def usage_report(
        self, principal: Principal, command: UsageReportCommand
    ) -> UsageReportResult:
        """The caller's tenant's usage (whatever tenant the command names)."""
        require(principal, Permission.USAGE_READ)
        if self.usage_reports is None:
            raise ConfigurationError("Usage reports are not configured.")
        return await self.usage_reports.execute(
            attrs.evolve(command, tenant_id=principal.tenant_id)
        )

    # --- API keys ------------------------------------------------------------------------

    def _keys(self, principal: Principal) -> ManageApiKeys:
        require(principal, Permission.KEYS_MANAGE)
        if self.manage_keys is None:
            raise ConfigurationError("Managing API keys is not configured.")
        return self.manage_keys

    async def create_key(
        self,
        principal: Principal,
        role: str,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> KeyOutcome:
        """A new key of the caller's tenant, with any role (its secret is in the outcome
        only, once)."""
        keys = self._keys(principal)
        return await keys.create(principal.tenant_id, role, name, idempotency_key)

    async def keys(
        self, principal: Principal, limit: int = 20, cursor: str | None = None
    ) -> Page[ApiKey]:
        return await self._keys(principal).list(principal.tenant_id, limit, cursor)

    async def key(self, principal: Principal, key_id: str) -> ApiKey:
        return await self._keys(principal).get(principal.tenant_id, key_id)

    async def rotate_key(
        self, principal: Principal, key_id: str, idempotency_key: str | None = None
    ) -> KeyOutcome:
        keys = self._keys(principal)
        return await keys.rotate(principal.tenant_id, key_id, idempotency_key)

    async def revoke_key(self, principal: Principal, key_id: str) -> ApiKey:
        """Revoke a key of the caller's tenant, the caller's own too: this request
        succeeds, the next one with that key is refused."""
        return await self._keys(principal).revoke(principal.tenant_id, key_id)


def _scoped(
    command: GenerateCommand | EditCommand, principal: Principal
) -> GenerateCommand | EditCommand:
    return attrs.evolve(command, tenant_id=principal.tenant_id, principal_id=principal.key_id)
