"""GenerateImages: the generation lifecycle (ARCHITECTURE §3).

1. Parse and negotiate the request (nothing is written for bad input).
2. One transaction: lock the tenant's account, honour the idempotency key, create the
   generation and reserve its estimated credits.
3. Outside any transaction: call the provider, with a timeout.
4. Validate every image (decoded, format, size), store it atomically in the DAM, then one
   transaction: add images, mark succeeded, capture the actual cost (at most the reservation).
5. On any failure: mark failed with a typed reason and release the reservation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re

import attrs

from imagegen.application.accounts import account_id_for, lock_or_open_account
from imagegen.application.commands import GenerateCommand, GenerationPolicy
from imagegen.application.ports import (
    BlobStorage,
    Clock,
    IdGenerator,
    ImageInspector,
    ImageProvider,
    ModelCatalog,
    ProviderRegistry,
    ProviderRequest,
    ProviderResult,
    UnitOfWork,
    UnitOfWorkFactory,
)
from imagegen.application.use_cases.dam import new_asset
from imagegen.domain.asset import DIGITAL_SOURCE_TYPE_GENERATED, Asset, Provenance, normalize_tags
from imagegen.domain.errors import (
    IdempotencyConflict,
    ImageGenError,
    InvalidParameter,
    ProviderProtocolError,
    ProviderUnavailable,
    ReservationAlreadyResolved,
    ReservationExpired,
)
from imagegen.domain.generation import GeneratedImage, Generation, GenerationParameters
from imagegen.domain.models import ModelSpec
from imagegen.domain.negotiation import ImageRequest, NegotiatedRequest, negotiate
from imagegen.domain.values import AspectRatio, Credits, ImageFormat, ImageSize, Prompt, Seed

log = logging.getLogger("imagegen.generate")

_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


@attrs.frozen
class GenerationOutcome:
    generation: Generation
    replayed: bool = False
    assets: tuple[Asset, ...] = ()


@attrs.frozen
class _Plan:
    """A validated request: everything needed before anything is written."""

    spec: ModelSpec
    negotiated: NegotiatedRequest
    tags: tuple[str, ...]
    fingerprint: str
    estimate: Credits


def plan_generation(
    command: GenerateCommand, catalog: ModelCatalog, policy: GenerationPolicy
) -> _Plan:
    """Parse and negotiate ``command``; raises a typed ``InvalidInput`` for anything wrong."""
    prompt = Prompt.parse(
        command.prompt, command.negative_prompt, max_length=policy.max_prompt_length
    )
    size = ImageSize.parse(command.size) if command.size else None
    ratio = AspectRatio.parse(command.aspect_ratio) if command.aspect_ratio else None
    seed = Seed(command.seed) if command.seed is not None else None
    fmt = ImageFormat.parse(command.format) if command.format else None
    if command.idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.match(
        command.idempotency_key
    ):
        raise InvalidParameter("An idempotency key is 1-255 printable ASCII characters.")
    spec = catalog.get(command.provider, command.model)
    negotiated = negotiate(
        ImageRequest(
            prompt=prompt,
            n=command.n,
            size=size,
            aspect_ratio=ratio,
            seed=seed,
            format=fmt,
            quality=command.quality,
        ),
        spec,
    )
    tags = normalize_tags(command.tags)
    fingerprint = _fingerprint(spec, prompt, command, tags)
    return _Plan(spec, negotiated, tags, fingerprint, spec.estimate(negotiated.n))


def _fingerprint(
    spec: ModelSpec, prompt: Prompt, command: GenerateCommand, tags: tuple[str, ...]
) -> str:
    canonical = json.dumps(
        {
            "provider": spec.provider,
            "model": spec.model,
            "prompt": prompt.text,
            "negative_prompt": prompt.negative,
            "n": command.n,
            "size": command.size,
            "aspect_ratio": command.aspect_ratio,
            "seed": command.seed,
            "format": command.format,
            "quality": command.quality,
            "tags": list(tags),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class GenerateImages:
    def __init__(
        self,
        *,
        uow: UnitOfWorkFactory,
        catalog: ModelCatalog,
        providers: ProviderRegistry,
        storage: BlobStorage,
        inspector: ImageInspector,
        clock: Clock,
        ids: IdGenerator,
        policy: GenerationPolicy,
    ) -> None:
        self._uow = uow
        self._catalog = catalog
        self._providers = providers
        self._storage = storage
        self._inspector = inspector
        self._clock = clock
        self._ids = ids
        self._policy = policy

    async def execute(self, command: GenerateCommand) -> GenerationOutcome:
        plan = plan_generation(command, self._catalog, self._policy)
        provider = self._providers.get(plan.spec.provider)

        replay = await self._reserve(command, plan)
        if isinstance(replay, GenerationOutcome):
            return replay
        generation = replay

        try:
            result = await self._call_provider(provider, plan)
            images = await self._store_images(generation, result, plan)
            return await self._complete(generation, result, images, plan)
        except ImageGenError as exc:
            await self._fail(generation, exc.code, exc.message)
            raise
        except BaseException as exc:
            # Cancellation, interpreter exit or a bug in an adapter: the reservation must still
            # be released. Shielded so a second cancellation cannot interrupt the cleanup.
            message = "The generation was interrupted before it completed."
            if isinstance(exc, Exception):
                log.exception("unexpected error in generation %s", generation.id)
                message = "The generation failed with an internal error."
            await asyncio.shield(self._fail(generation, "internal_error", message))
            raise

    async def _reserve(
        self, command: GenerateCommand, plan: _Plan
    ) -> Generation | GenerationOutcome:
        async with self._uow() as uow:
            account = await lock_or_open_account(
                uow, command.tenant_id, self._policy, self._clock, self._ids
            )
            if command.idempotency_key is not None:
                existing = await uow.generations.get_by_idempotency_key(
                    command.tenant_id, command.idempotency_key
                )
                if existing is not None:
                    if existing.request_fingerprint != plan.fingerprint:
                        raise IdempotencyConflict(
                            "This idempotency key was already used for a different request.",
                            idempotency_key=command.idempotency_key,
                            generation_id=existing.id,
                        )
                    assets = await _assets_of(uow, existing)
                    await uow.commit()  # may have opened the account
                    return GenerationOutcome(existing, replayed=True, assets=assets)
            now = self._clock.now()
            generation_id = self._ids.new("gen")
            reservation = account.reserve(
                self._ids.new("res"),
                plan.estimate,
                now,
                now + self._policy.reservation_ttl,
                reference=generation_id,
            )
            negotiated = plan.negotiated
            generation = Generation(
                id=generation_id,
                tenant_id=command.tenant_id,
                principal_id=command.principal_id,
                provider=plan.spec.provider,
                model=plan.spec.model,
                prompt=negotiated.prompt.text,
                parameters=GenerationParameters(
                    n=negotiated.n,
                    size=negotiated.size,
                    format=negotiated.format,
                    seed=negotiated.seed,
                    negative_prompt=negotiated.prompt.negative,
                    operation=negotiated.operation,
                    quality=negotiated.quality,
                ),
                created_at=now,
                updated_at=now,
                estimated_credits=plan.estimate.amount,
                reservation_id=reservation.id,
                idempotency_key=command.idempotency_key,
                request_fingerprint=plan.fingerprint,
                warnings=negotiated.warnings,
                tags=plan.tags,
            )
            generation.start(now)
            await uow.accounts.save(account)
            await uow.accounts.add_reservation(reservation)
            await uow.generations.add(generation)
            await uow.commit()
        return generation

    async def _call_provider(self, provider: ImageProvider, plan: _Plan) -> ProviderResult:
        negotiated = plan.negotiated
        request = ProviderRequest(
            model=plan.spec.model,
            prompt=negotiated.prompt.text,
            n=negotiated.n,
            size=negotiated.size,
            format=negotiated.format,
            seed=negotiated.seed,
            negative_prompt=negotiated.prompt.negative,
            operation=negotiated.operation,
            quality=negotiated.quality,
        )
        timeout = self._policy.provider_timeout.total_seconds()
        try:
            async with asyncio.timeout(timeout):
                result = await provider.generate(request)
        except TimeoutError:
            raise ProviderUnavailable(
                f"{plan.spec.provider} did not answer within {timeout:g} seconds.",
                provider=plan.spec.provider,
            ) from None
        if not result.images:
            raise ProviderProtocolError(
                f"{plan.spec.provider} returned no images.", provider=plan.spec.provider
            )
        return result

    async def _store_images(
        self, generation: Generation, result: ProviderResult, plan: _Plan
    ) -> list[GeneratedImage]:
        negotiated = plan.negotiated
        produced_images = result.images[: negotiated.n]
        # Check every image before storing any: a bad second image must not leave the first
        # one in the DAM without a record.
        infos = []
        for produced in produced_images:
            info = await asyncio.to_thread(self._inspector.inspect, produced.data)
            if info.format is not negotiated.format:
                raise ProviderProtocolError(
                    f"{plan.spec.provider} returned {info.format.value} where "
                    f"{negotiated.format.value} was asked for.",
                    provider=plan.spec.provider,
                )
            if (info.width, info.height) != (negotiated.size.width, negotiated.size.height):
                raise ProviderProtocolError(
                    f"{plan.spec.provider} returned a {info.width}x{info.height} image where "
                    f"{negotiated.size} was asked for.",
                    provider=plan.spec.provider,
                )
            infos.append(info)
        images: list[GeneratedImage] = []
        for index, (produced, info) in enumerate(zip(produced_images, infos, strict=True)):
            seed = produced.seed or (
                negotiated.seed.offset(index) if negotiated.seed is not None else None
            )
            now = self._clock.now()
            provenance = Provenance(
                digital_source_type=DIGITAL_SOURCE_TYPE_GENERATED,
                provider=plan.spec.provider,
                model=plan.spec.model,
                prompt=negotiated.prompt.text,
                negative_prompt=negotiated.prompt.negative,
                generation_id=generation.id,
                seed=seed.value if seed is not None else None,
                created_at=now,
            )
            blob = await self._storage.put(produced.data, info, provenance)
            images.append(
                GeneratedImage(
                    id=self._ids.new("img"),
                    generation_id=generation.id,
                    index=index,
                    storage_key=blob.key,
                    sha256=blob.sha256,
                    format=info.format,
                    width=info.width,
                    height=info.height,
                    byte_size=blob.byte_size,
                    seed=seed,
                    created_at=now,
                )
            )
        return images

    async def _complete(
        self,
        generation: Generation,
        result: ProviderResult,
        images: list[GeneratedImage],
        plan: _Plan,
    ) -> GenerationOutcome:
        charged = plan.spec.pricing.credits_per_image * len(images)
        cost = result.cost_usd
        if cost is None and plan.spec.pricing.usd_per_image is not None:
            cost = plan.spec.pricing.usd_per_image * len(images)
        warnings = list(generation.warnings) + list(result.warnings)
        if len(images) < plan.negotiated.n:
            warnings.append(
                f"{plan.spec.provider} returned {len(images)} of {plan.negotiated.n} images; "
                f"only those are charged."
            )
        assets: list[Asset] = []
        async with self._uow() as uow:
            account = await uow.accounts.lock(account_id_for(generation.tenant_id))
            reservation = (
                await uow.accounts.get_reservation(generation.reservation_id)
                if generation.reservation_id
                else None
            )
            if account is None or reservation is None:
                raise ProviderProtocolError("The generation's records disappeared.")
            # While the account is locked and the reservation is still active, nobody but this
            # call has changed the generation: the sweeper (and any canceller) resolves the
            # reservation in the same transaction as it ends the generation. So the copy in
            # hand is current, and capture() below refuses if that is no longer so.
            stored = generation
            now = self._clock.now()
            try:
                account.capture(reservation, charged, now, self._ids.new("ent"))
            except ReservationAlreadyResolved:
                raise ReservationExpired(
                    f"Generation {generation.id} outlived its credit reservation and was "
                    "released by the sweeper; nothing was charged.",
                    generation_id=generation.id,
                ) from None
            stored.warnings = tuple(warnings)
            stored.succeed(
                images,
                charged.amount,
                now,
                provider_cost_usd=str(cost.amount) if cost is not None else None,
            )
            uow.record(stored.events)
            await uow.accounts.save(account)
            await uow.accounts.save_reservation(reservation)
            await uow.generations.save(stored)
            for image in images if plan.tags else ():
                asset = new_asset(stored, image, plan.tags, None, {}, self._ids.new("ast"), now)
                await uow.assets.add(asset)
                assets.append(asset)
            await uow.commit()
        return GenerationOutcome(stored, assets=tuple(assets))

    async def _fail(self, generation: Generation, code: str, message: str) -> None:
        try:
            async with self._uow() as uow:
                account = await uow.accounts.lock(account_id_for(generation.tenant_id))
                stored = await uow.generations.get(generation.tenant_id, generation.id)
                reservation = (
                    await uow.accounts.get_reservation(generation.reservation_id)
                    if generation.reservation_id
                    else None
                )
                now = self._clock.now()
                if (
                    account is not None
                    and reservation is not None
                    and not reservation.status.is_resolved
                ):
                    account.release(reservation, now)
                    await uow.accounts.save(account)
                    await uow.accounts.save_reservation(reservation)
                if stored is not None and not stored.status.is_terminal:
                    stored.fail(code, message, now)
                    uow.record(stored.events)
                    await uow.generations.save(stored)
                await uow.commit()
        except Exception:
            # The sweeper releases what we could not; the original error matters more.
            log.exception("could not record the failure of generation %s", generation.id)


async def _assets_of(uow: UnitOfWork, generation: Generation) -> tuple[Asset, ...]:
    assets = []
    for image in generation.images:
        asset = await uow.assets.get_by_image(generation.tenant_id, image.id)
        if asset is not None:
            assets.append(asset)
    return tuple(assets)
