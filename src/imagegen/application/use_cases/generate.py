"""GenerateImages: the generation lifecycle (ARCHITECTURE §3), for new images and for edits.

1. Parse and negotiate the request against the model and every fallback (nothing is written
   for bad input; edit inputs are decoded and checked here, before any charge).
2. One transaction: lock the tenant's account, honour the idempotency key, create the
   generation and reserve the largest estimate of the chain.
3. Outside any transaction: call the provider, splitting ``n`` into calls of at most the
   model's per-call limit, run concurrently (the provider's resilience layer caps them).
   Each provider job id is saved as soon as it exists, so a crash can resume, not re-pay.
   A provider that is down hands over to the next model of the fallback chain.
4. Validate every image (decoded, format, size), store them atomically in the DAM, then one
   transaction: add images, mark succeeded, capture the actual cost (at most the reservation).
5. On any failure: mark failed with a typed reason and release the reservation.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence

import attrs

from imagegen.application.accounts import account_id_for, lock_or_open_account
from imagegen.application.billing import (
    apply_hold,
    plan_hold,
    record_capture,
    return_holds,
)
from imagegen.application.commands import EditCommand, GenerateCommand, GenerationPolicy
from imagegen.application.fallback import FallbackChain, ModelRef, run_with_fallback
from imagegen.application.ports import (
    BlobStorage,
    Clock,
    IdGenerator,
    ImageInfo,
    ImageInspector,
    InputImage,
    JobCallback,
    ModelCatalog,
    Outpaint,
    PlanCatalog,
    ProviderRegistry,
    ProviderRequest,
    ProviderResult,
    StoredBlob,
    UnitOfWork,
    UnitOfWorkFactory,
    Usage,
)
from imagegen.application.use_cases.dam import new_asset
from imagegen.domain.asset import (
    DIGITAL_SOURCE_TYPE_COMPOSITE,
    DIGITAL_SOURCE_TYPE_GENERATED,
    Asset,
    Provenance,
    normalize_tags,
)
from imagegen.domain.billing import Reservation
from imagegen.domain.errors import (
    AssetNotFound,
    BudgetExceeded,
    GenerationNotFound,
    IdempotencyConflict,
    ImageGenError,
    InvalidParameter,
    ProviderProtocolError,
    ProviderUnavailable,
    ReservationAlreadyResolved,
    ReservationExpired,
)
from imagegen.domain.generation import (
    GeneratedImage,
    Generation,
    GenerationParameters,
    GenerationStatus,
)
from imagegen.domain.models import ModelSpec, Operation
from imagegen.domain.negotiation import (
    RATIO_TOLERANCE,
    ImageRequest,
    NegotiatedRequest,
    negotiate,
)
from imagegen.domain.plans import QUOTA
from imagegen.domain.pricing import Quote, charge, quote
from imagegen.domain.values import (
    AspectRatio,
    Credits,
    ImageFormat,
    ImageSize,
    Money,
    Prompt,
    Seed,
)

log = logging.getLogger("imagegen.generate")

_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
# Operations whose prompt may be empty (the image says it all).
_PROMPTLESS = frozenset({Operation.ERASE, Operation.REMOVE_BACKGROUND})
MAX_OUTPAINT = 2000


@attrs.frozen
class GenerationOutcome:
    generation: Generation
    replayed: bool = False
    assets: tuple[Asset, ...] = ()


@attrs.frozen
class EditInputs:
    """An edit's checked inputs: the source image(s), a mask and operation parameters."""

    images: tuple[InputImage, ...]
    mask: InputImage | None = None
    search_prompt: str | None = None
    outpaint: Outpaint | None = None
    source_asset_id: str | None = None

    def fingerprint(self) -> dict[str, object]:
        return {
            "images": [hashlib.sha256(i.data).hexdigest() for i in self.images],
            "mask": hashlib.sha256(self.mask.data).hexdigest() if self.mask else None,
            "search_prompt": self.search_prompt,
            "outpaint": attrs.astuple(self.outpaint) if self.outpaint else None,
            "source_asset_id": self.source_asset_id,
        }


@attrs.frozen
class Attempt:
    """One model the request can run on, with the request negotiated for it."""

    spec: ModelSpec
    negotiated: NegotiatedRequest
    quote: Quote

    @property
    def estimate(self) -> Credits:
        return self.quote.credits

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.spec.provider, self.spec.model)


# An image the provider returned: decoded and checked, stored in the DAM, with its seed.
_Checked = tuple[ImageInfo, StoredBlob, Seed | None]
_Ran = tuple[Attempt, list[ProviderResult], list[_Checked]]
# Adds the job that will run a queued generation, in the transaction that created it.
Enqueue = Callable[[UnitOfWork, Generation], Awaitable[None]]


@attrs.frozen
class Plan:
    """A validated request: everything needed before anything is written."""

    attempts: tuple[Attempt, ...]  # the model asked for, then its fallbacks
    tags: tuple[str, ...]
    fingerprint: str
    inputs: EditInputs | None = None
    # Resuming after a crash: the inputs are gone, so the price quoted when the generation
    # was reserved (credits per image) is what a delivered image costs.
    quoted_per_image: Credits | None = None

    @property
    def primary(self) -> Attempt:
        return self.attempts[0]

    @property
    def spec(self) -> ModelSpec:
        return self.primary.spec

    @property
    def negotiated(self) -> NegotiatedRequest:
        return self.primary.negotiated

    @property
    def reservation(self) -> Credits:
        """Enough for whichever model of the chain ends up running."""
        return max((a.estimate for a in self.attempts), key=lambda c: c.amount)


def _input_sizes(inputs: EditInputs | None) -> list[ImageSize]:
    return [ImageSize(i.width, i.height) for i in inputs.images] if inputs else []


def _quote(
    spec: ModelSpec,
    negotiated: NegotiatedRequest,
    policy: GenerationPolicy,
    input_sizes: Sequence[ImageSize],
) -> Quote:
    return quote(
        spec.pricing,
        n=negotiated.n,
        size=negotiated.size,
        quality=negotiated.quality,
        usd_per_credit=policy.usd_per_credit,
        prompt_chars=len(negotiated.prompt.text) + len(negotiated.prompt.negative or ""),
        operation=negotiated.operation.value,
        input_images=input_sizes,
    )


def _total_usage(results: Sequence[ProviderResult]) -> Usage | None:
    reported = [r.usage for r in results if r.usage is not None]
    if not reported:
        return None
    return Usage(
        input_text_tokens=sum(u.input_text_tokens for u in reported),
        input_image_tokens=sum(u.input_image_tokens for u in reported),
        output_image_tokens=sum(u.output_image_tokens for u in reported),
        output_text_tokens=sum(u.output_text_tokens for u in reported),
    )


def _total_cost(results: Sequence[ProviderResult]) -> Money | None:
    costs = [r.cost_usd for r in results]
    if not costs or any(c is None for c in costs):
        return None  # unknown for some call: price the images from the catalog instead
    total = Money.zero()
    for cost in costs:
        assert cost is not None
        total = total + cost
    return total


def _fingerprint(
    attempt: Attempt,
    command: GenerateCommand | EditCommand,
    tags: tuple[str, ...],
    inputs: EditInputs | None,
) -> str:
    prompt = attempt.negotiated.prompt
    canonical = json.dumps(
        {
            "provider": attempt.spec.provider,
            "model": attempt.spec.model,
            "prompt": prompt.text,
            "negative_prompt": prompt.negative,
            "n": command.n,
            "size": command.size,
            "aspect_ratio": getattr(command, "aspect_ratio", None),
            "seed": command.seed,
            "format": command.format,
            "quality": command.quality,
            "operation": attempt.negotiated.operation.value,
            "inputs": inputs.fingerprint() if inputs is not None else None,
            "tags": list(tags),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_operation(text: str) -> Operation:
    try:
        return Operation(text.strip().lower().replace("-", "_"))
    except ValueError:
        allowed = ", ".join(o.value for o in Operation if o is not Operation.GENERATE)
        raise InvalidParameter(f"Operation {text!r} is not one of {allowed}.") from None


def _edit_operation(command: EditCommand, spec: ModelSpec, inputs: EditInputs | None) -> Operation:
    """The operation asked for, or — when none is — the one the inputs and the model imply:
    margins mean outpaint, a search prompt search-and-replace, a mask inpaint (if the model
    inpaints); else an edit by prompt, or the model's only edit operation."""
    if command.operation:
        return _parse_operation(command.operation)
    offered = spec.operations - {Operation.GENERATE}
    if inputs is not None and inputs.outpaint is not None:
        return Operation.OUTPAINT
    if inputs is not None and inputs.search_prompt is not None:
        return Operation.SEARCH_AND_REPLACE
    if inputs is not None and inputs.mask is not None and Operation.INPAINT in offered:
        return Operation.INPAINT
    if Operation.EDIT in offered or len(offered) != 1:
        return Operation.EDIT
    return next(iter(offered))


def _check_inputs(spec: ModelSpec, inputs: EditInputs | None) -> None:
    if inputs is None:
        return
    if len(inputs.images) > max(spec.max_input_images, 1):
        raise InvalidParameter(
            f"{spec.ref} takes at most {max(spec.max_input_images, 1)} input image(s); "
            f"got {len(inputs.images)}.",
        )
    if inputs.mask is not None and not spec.supports_mask:
        raise InvalidParameter(f"{spec.ref} does not take a mask.")


def _attempt(
    spec: ModelSpec, request: ImageRequest, inputs: EditInputs | None, policy: GenerationPolicy
) -> Attempt:
    _check_inputs(spec, inputs)
    negotiated = negotiate(request, spec)
    return Attempt(spec, negotiated, _quote(spec, negotiated, policy, _input_sizes(inputs)))


def plan_generation(
    command: GenerateCommand | EditCommand,
    catalog: ModelCatalog,
    policy: GenerationPolicy,
    *,
    fallbacks: FallbackChain | None = None,
    inputs: EditInputs | None = None,
) -> Plan:
    """Parse and negotiate ``command`` for its model and every usable fallback; raises a
    typed ``InvalidInput`` for anything wrong with the request itself."""
    spec = catalog.get(command.provider, command.model)
    operation = (
        _edit_operation(command, spec, inputs)
        if isinstance(command, EditCommand)
        else Operation.GENERATE
    )
    text = command.prompt
    if not (text or "").strip() and operation in _PROMPTLESS:
        text = operation.value.replace("_", " ")
    prompt = Prompt.parse(text, command.negative_prompt, max_length=policy.max_prompt_length)
    size = ImageSize.parse(command.size) if command.size else None
    if size is None and inputs is not None:
        size = _edit_output_size(inputs)
    ratio_text = getattr(command, "aspect_ratio", None)
    ratio = AspectRatio.parse(ratio_text) if ratio_text else None
    seed = Seed(command.seed) if command.seed is not None else None
    fmt = ImageFormat.parse(command.format) if command.format else None
    if command.idempotency_key is not None and not _IDEMPOTENCY_KEY_RE.match(
        command.idempotency_key
    ):
        raise InvalidParameter("An idempotency key is 1-255 printable ASCII characters.")
    request = ImageRequest(
        prompt=prompt,
        n=command.n,
        size=size,
        aspect_ratio=ratio,
        seed=seed,
        format=fmt,
        quality=command.quality,
        operation=operation,
    )
    primary = _attempt(spec, request, inputs, policy)
    attempts = [primary]
    for ref in fallbacks.alternatives(spec.provider, spec.model) if fallbacks else ():
        try:
            attempts.append(_attempt(catalog.get(ref.provider, ref.model), request, inputs, policy))
        except ImageGenError as error:
            # A fallback that cannot serve this request is skipped, not an error of the user's.
            log.info("fallback %s cannot serve this request: %s", ref, error.message)
    tags = normalize_tags(command.tags)
    return Plan(tuple(attempts), tags, _fingerprint(primary, command, tags, inputs), inputs)


def _edit_output_size(inputs: EditInputs) -> ImageSize:
    source = inputs.images[0]
    if inputs.outpaint is None:
        return ImageSize(source.width, source.height)
    grow = inputs.outpaint
    return ImageSize(source.width + grow.left + grow.right, source.height + grow.up + grow.down)


def _parameters(negotiated: NegotiatedRequest, inputs: EditInputs | None) -> GenerationParameters:
    return GenerationParameters(
        n=negotiated.n,
        size=negotiated.size,
        format=negotiated.format,
        seed=negotiated.seed,
        negative_prompt=negotiated.prompt.negative,
        operation=negotiated.operation,
        quality=negotiated.quality,
        input_sizes=tuple(_input_sizes(inputs)),
    )


def _same_shape(info: ImageInfo, size: ImageSize) -> bool:
    wanted = size.width / size.height
    return abs(math.log((info.width / info.height) / wanted)) <= RATIO_TOLERANCE


def _chunks(n: int, per_call: int) -> list[tuple[int, int]]:
    """(first image index, count) of each provider call for ``n`` images."""
    per_call = max(1, per_call)
    return [(start, min(per_call, n - start)) for start in range(0, n, per_call)]


class GenerateImages:
    """Generate or edit images (``execute``), or finish a generation whose process died while
    its provider jobs ran (``resume``)."""

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
        fallbacks: FallbackChain | None = None,
        plans: PlanCatalog | None = None,
    ) -> None:
        self._uow = uow
        self._plans = plans
        self._catalog = catalog
        self._providers = providers
        self._storage = storage
        self._inspector = inspector
        self._clock = clock
        self._ids = ids
        self._policy = policy
        self._fallbacks = fallbacks or FallbackChain()

    # --- planning ----------------------------------------------------------------------------

    async def plan(self, command: GenerateCommand | EditCommand) -> Plan:
        inputs = await self._edit_inputs(command) if isinstance(command, EditCommand) else None
        return plan_generation(
            command, self._catalog, self._policy, fallbacks=self._fallbacks, inputs=inputs
        )

    async def _edit_inputs(self, command: EditCommand) -> EditInputs:
        sources = list(command.images)
        if command.source_asset_id is not None:
            async with self._uow(read_only=True) as uow:
                asset = await uow.assets.get(command.tenant_id, command.source_asset_id)
            if asset is None:
                raise AssetNotFound(
                    f"No asset {command.source_asset_id}.", asset_id=command.source_asset_id
                )
            sources.insert(0, await self._storage.get(asset.storage_key))
        if not sources:
            raise InvalidParameter("An edit needs a source image: a DAM asset id or an image file.")
        images = tuple(
            [await self._input_image(f"Input image {i + 1}", d) for i, d in enumerate(sources)]
        )
        mask = await self._input_image("The mask", command.mask) if command.mask else None
        if mask is not None and (mask.width, mask.height) != (images[0].width, images[0].height):
            raise InvalidParameter(
                f"The mask is {mask.width}x{mask.height} but the image is "
                f"{images[0].width}x{images[0].height}; they must match."
            )
        outpaint = None
        if command.outpaint is not None:
            left, right, up, down = command.outpaint
            if min(command.outpaint) < 0 or max(command.outpaint) > MAX_OUTPAINT:
                raise InvalidParameter(f"Outpaint margins are 0-{MAX_OUTPAINT} pixels each.")
            if not any(command.outpaint):
                raise InvalidParameter("Outpaint needs at least one margin above 0.")
            outpaint = Outpaint(left=left, right=right, up=up, down=down)
        operation = _parse_operation(command.operation) if command.operation else None
        if operation is Operation.OUTPAINT and outpaint is None:
            raise InvalidParameter("Outpaint needs margins (left, right, up, down).")
        search = (command.search_prompt or "").strip() or None
        if operation is Operation.SEARCH_AND_REPLACE and search is None:
            raise InvalidParameter("Search-and-replace needs a search prompt: what to replace.")
        return EditInputs(images, mask, search, outpaint, command.source_asset_id)

    async def _input_image(self, label: str, data: bytes) -> InputImage:
        limit = self._policy.max_input_image_bytes
        if len(data) > limit:
            raise InvalidParameter(
                f"{label} has {len(data)} bytes; the limit is {limit}.", size=len(data)
            )
        try:
            info: ImageInfo = await asyncio.to_thread(self._inspector.inspect, data)
        except ProviderProtocolError as error:
            raise InvalidParameter(f"{label} is not a usable image: {error.message}") from None
        return InputImage(data=data, format=info.format, width=info.width, height=info.height)

    # --- the lifecycle -----------------------------------------------------------------------

    async def execute(self, command: GenerateCommand | EditCommand) -> GenerationOutcome:
        plan = await self.plan(command)
        for attempt in plan.attempts:
            self._providers.get(attempt.spec.provider)  # an unknown provider fails now

        replay = await self._reserve(command, plan)
        if isinstance(replay, GenerationOutcome):
            return replay
        generation, plan = replay
        return await self._run_to_completion(generation, plan, resume=False)

    async def submit(
        self, command: GenerateCommand | EditCommand, enqueue: Enqueue
    ) -> GenerationOutcome:
        """Reserve and create the generation as ``queued``, and — in that same transaction —
        ``enqueue`` the job that will run it. A replayed idempotency key enqueues nothing.
        An edit's inputs are decoded and checked here, before anything is reserved, as the
        synchronous edit's are; ``enqueue`` must make them durable with the job."""
        plan = await self.plan(command)
        for attempt in plan.attempts:
            self._providers.get(attempt.spec.provider)
        reserved = await self._reserve(command, plan, enqueue=enqueue)
        if isinstance(reserved, GenerationOutcome):
            return reserved
        return GenerationOutcome(reserved[0])

    async def run_queued(
        self, generation_id: str, tenant_id: str, command: GenerateCommand | EditCommand
    ) -> GenerationOutcome:
        """Run a generation ``submit`` queued (``command`` is the one it was submitted with):
        start it, then the usual lifecycle. Run again after a worker died, it resumes the
        provider jobs it recorded (never paying twice); a generation already over is returned
        as it is. A request that no longer plans (an edit's source asset was deleted
        meanwhile) fails the generation and releases its credits."""
        async with self._uow(read_only=True) as uow:
            found = await uow.generations.get(tenant_id, generation_id)
        if found is None:
            raise GenerationNotFound(f"No generation {generation_id}.", generation_id=generation_id)
        if found.status.is_terminal:
            return GenerationOutcome(found)
        if found.provider_job_ids:
            return await self.resume(generation_id, tenant_id)
        try:
            plan = await self.plan(command)
        except ImageGenError as exc:
            await self._fail(found, exc.code, exc.message)
            raise
        async with self._uow() as uow:
            account = await uow.accounts.lock(account_id_for(tenant_id))
            generation = await uow.generations.get(tenant_id, generation_id)
            reservation = (
                await uow.accounts.get_reservation(generation.reservation_id)
                if generation is not None and generation.reservation_id
                else None
            )
            if generation is None or generation.status.is_terminal:
                return GenerationOutcome(generation or found)
            if account is None or reservation is None or reservation.status.is_resolved:
                raise ReservationExpired(
                    f"Generation {generation_id} lost its credit reservation before it ran.",
                    generation_id=generation_id,
                )
            plan = self._within_plan(account.plan_id, plan)
            if generation.status is GenerationStatus.QUEUED:
                generation.start(self._clock.now())
                await uow.generations.save(generation)
            await uow.commit()
        return await self._run_to_completion(generation, plan, resume=False)

    async def resume(self, generation_id: str, tenant_id: str) -> GenerationOutcome:
        """Collect the results of a generation whose process died after its provider jobs
        started: poll those jobs (never start new ones), then store and charge as usual."""
        async with self._uow(read_only=True) as uow:
            generation = await uow.generations.get(tenant_id, generation_id)
            reservation = (
                await uow.accounts.get_reservation(generation.reservation_id)
                if generation is not None and generation.reservation_id
                else None
            )
        if generation is None:
            raise GenerationNotFound(f"No generation {generation_id}.", generation_id=generation_id)
        if (
            generation.status.is_terminal
            or not generation.provider_job_ids
            or reservation is None
            or reservation.status.is_resolved
        ):
            raise InvalidParameter(
                f"Generation {generation_id} is {generation.status.value} and has no provider "
                "job left to resume.",
                generation_id=generation_id,
            )
        spec = self._catalog.get(generation.provider, generation.model)
        params = generation.parameters
        negotiated = NegotiatedRequest(
            prompt=Prompt(generation.prompt, params.negative_prompt),
            n=params.n,
            size=params.size,
            seed=params.seed,
            format=params.format,
            operation=params.operation,
            quality=params.quality,
        )
        attempt = Attempt(
            spec, negotiated, _quote(spec, negotiated, self._policy, params.input_sizes)
        )
        per_image = -(-generation.estimated_credits // max(params.n, 1))
        plan = Plan(
            (attempt,),
            generation.tags,
            generation.request_fingerprint or "",
            None,
            quoted_per_image=Credits(per_image),
        )
        return await self._run_to_completion(generation, plan, resume=True)

    async def _run_to_completion(
        self, generation: Generation, plan: Plan, *, resume: bool
    ) -> GenerationOutcome:
        try:
            attempt, results, produced = await self._run(generation, plan, resume=resume)
            images = self._records(generation, produced)
            return await self._complete(generation, attempt, results, images, plan)
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

    def _within_plan(self, plan_id: str | None, plan: Plan) -> Plan:
        """The attempts the tenant's plan allows: the requested model must be; a fallback it
        does not allow is dropped. Raises ``ModelNotInPlan`` / ``QuotaExceeded``."""
        if self._plans is None or plan_id is None:
            return plan
        billing_plan = self._plans.get(plan_id)
        allowed = []
        for index, attempt in enumerate(plan.attempts):
            try:
                billing_plan.check_request(
                    attempt.spec.provider,
                    attempt.spec.model,
                    attempt.negotiated.operation.value,
                    attempt.negotiated.n,
                )
            except ImageGenError:
                if index == 0:
                    raise
                continue
            allowed.append(attempt)
        return attrs.evolve(plan, attempts=tuple(allowed))

    def _check_caps(self, command: GenerateCommand | EditCommand, credits: Credits) -> None:
        if command.max_credits is not None and credits.amount > command.max_credits:
            raise BudgetExceeded(
                f"This request needs {credits.amount} credits; its cap is {command.max_credits}.",
                needed=credits.amount,
                max_credits=command.max_credits,
            )
        if command.max_cost is not None:
            cost = credits.amount * self._policy.usd_per_credit
            if cost > command.max_cost:
                raise BudgetExceeded(
                    f"This request costs ${cost}; its cap is ${command.max_cost}.",
                    cost_usd=str(cost),
                    max_cost=str(command.max_cost),
                )

    async def _reserve(
        self, command: GenerateCommand | EditCommand, plan: Plan, *, enqueue: Enqueue | None = None
    ) -> tuple[Generation, Plan] | GenerationOutcome:
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
            plan = self._within_plan(account.plan_id, plan)
            hold = await plan_hold(
                uow,
                account,
                self._plans,
                n=plan.negotiated.n,
                estimate=plan.reservation,
                principal_id=command.principal_id,
                project_id=command.project_id,
                now=now,
            )
            self._check_caps(command, hold.credits)
            generation_id = self._ids.new("gen")
            reservation = account.reserve(
                self._ids.new("res"),
                hold.credits,
                now,
                now + self._policy.reservation_ttl,
                reference=generation_id,
            )
            reservation.included_images = hold.included
            reservation.overage_images = hold.overage
            reservation.period_start = hold.period_start
            reservation.holds = hold.subjects
            negotiated = plan.negotiated
            generation = Generation(
                id=generation_id,
                tenant_id=command.tenant_id,
                principal_id=command.principal_id,
                provider=plan.spec.provider,
                model=plan.spec.model,
                prompt=negotiated.prompt.text,
                parameters=_parameters(negotiated, plan.inputs),
                created_at=now,
                updated_at=now,
                estimated_credits=plan.primary.estimate.amount,
                reservation_id=reservation.id,
                idempotency_key=command.idempotency_key,
                request_fingerprint=plan.fingerprint,
                parent_id=plan.inputs.source_asset_id if plan.inputs else None,
                warnings=negotiated.warnings,
                tags=plan.tags,
                project_id=command.project_id,
            )
            if enqueue is None:
                generation.start(now)
            await uow.accounts.save(account)
            await uow.accounts.add_reservation(reservation)
            await apply_hold(uow, command.tenant_id, reservation)
            await uow.generations.add(generation)
            if enqueue is not None:
                await enqueue(uow, generation)
            await uow.commit()
        return generation, plan

    async def _run(self, generation: Generation, plan: Plan, *, resume: bool) -> _Ran:
        by_ref = {attempt.ref: attempt for attempt in plan.attempts}

        async def attempt(ref: ModelRef) -> _Ran:
            chosen = by_ref[ref]
            results, produced = await self._call(chosen, generation, plan.inputs, resume=resume)
            return chosen, results, produced

        async def on_fallback(failed: ModelRef, error: BaseException, following: ModelRef) -> None:
            nxt = by_ref[following]
            reason = error.code if isinstance(error, ImageGenError) else type(error).__name__
            generation.fall_back_to(
                nxt.spec.provider,
                nxt.spec.model,
                _parameters(nxt.negotiated, plan.inputs),
                reason,
                self._clock.now(),
            )
            generation.warnings = (*generation.warnings, *nxt.negotiated.warnings)

        return await run_with_fallback(
            [a.ref for a in plan.attempts], attempt, on_fallback=on_fallback
        )

    async def _call(
        self,
        attempt: Attempt,
        generation: Generation,
        inputs: EditInputs | None,
        *,
        resume: bool,
    ) -> tuple[list[ProviderResult], list[_Checked]]:
        """Run the attempt's calls concurrently; keep what succeeded (a partial result is
        charged for what it delivered), raise when nothing did."""
        spec, negotiated = attempt.spec, attempt.negotiated
        provider = self._providers.get(spec.provider)
        requests = [
            ProviderRequest(
                model=spec.model,
                prompt=negotiated.prompt.text,
                n=count,
                size=negotiated.size,
                format=negotiated.format,
                seed=negotiated.seed.offset(start) if negotiated.seed is not None else None,
                negative_prompt=negotiated.prompt.negative,
                operation=negotiated.operation,
                quality=negotiated.quality,
                images=inputs.images if inputs else (),
                mask=inputs.mask if inputs else None,
                search_prompt=inputs.search_prompt if inputs else None,
                outpaint=inputs.outpaint if inputs else None,
                on_job_created=self._job_recorder(generation),
            )
            for start, count in _chunks(negotiated.n, spec.max_images_per_call)
        ]
        if resume:
            started = [
                provider.resume(job_id, request)
                for job_id, request in zip(generation.provider_job_ids, requests, strict=False)
            ]
        else:
            started = [provider.generate(request) for request in requests]
        # Each call's images are decoded and checked as soon as it returns, while the other
        # calls are still in flight.
        calls = [
            self._checked(call, request, attempt, generation)
            for call, request in zip(started, requests, strict=False)
        ]
        timeout = self._policy.provider_timeout.total_seconds()
        try:
            async with asyncio.timeout(timeout):
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
        except TimeoutError:
            raise ProviderUnavailable(
                f"{spec.provider} did not answer within {timeout:g} seconds.",
                provider=spec.provider,
            ) from None
        results: list[ProviderResult] = []
        produced: list[_Checked] = []
        failures: list[BaseException] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # cancellation and the like are not failures to report
                failures.append(outcome)
                continue
            result, checked = outcome
            results.append(result)
            produced.extend(checked)
        if not produced:
            if failures:
                raise failures[0]
            raise ProviderProtocolError(
                f"{spec.provider} returned no images.", provider=spec.provider
            )
        if failures:
            first = failures[0]
            reason = first.message if isinstance(first, ImageGenError) else type(first).__name__
            generation.warnings = (
                *generation.warnings,
                f"{len(failures)} of {len(requests)} calls to {spec.provider} failed ({reason});"
                f" {len(produced)} of {negotiated.n} images were delivered and charged.",
            )
        elif len(produced) < negotiated.n:
            generation.warnings = (
                *generation.warnings,
                f"{spec.provider} returned {len(produced)} of {negotiated.n} images; only those "
                "are charged.",
            )
        return results, produced[: negotiated.n]

    def _job_recorder(self, generation: Generation) -> JobCallback:
        async def record(job_id: str) -> None:
            await self._record_job(generation, job_id)

        return record

    async def _record_job(self, generation: Generation, job_id: str) -> None:
        """Persist a provider job id the moment it exists: a process that dies from now on
        leaves enough behind for ``resume`` to collect the result without paying again."""
        generation.record_provider_job(job_id, self._clock.now())
        async with self._uow() as uow:
            await uow.accounts.lock(account_id_for(generation.tenant_id))
            reservation = (
                await uow.accounts.get_reservation(generation.reservation_id)
                if generation.reservation_id
                else None
            )
            if reservation is None or reservation.status.is_resolved:
                return  # swept meanwhile: the generation is over, do not write it back
            await uow.generations.save(generation)
            await uow.commit()

    async def _checked(
        self,
        call: Awaitable[ProviderResult],
        request: ProviderRequest,
        attempt: Attempt,
        generation: Generation,
    ) -> tuple[ProviderResult, list[_Checked]]:
        """Await one provider call, decode every image it returned, then store them; a wrong
        format or shape is a protocol error of that call (its images are not stored or
        charged)."""
        result = await call
        items = result.images[: request.n]
        infos = await asyncio.gather(
            *(asyncio.to_thread(self._inspector.inspect, item.data) for item in items)
        )
        spec, negotiated = attempt.spec, attempt.negotiated
        editing = negotiated.operation is not Operation.GENERATE
        for info in infos:
            if info.format is not negotiated.format:
                raise ProviderProtocolError(
                    f"{spec.provider} returned {info.format.value} where "
                    f"{negotiated.format.value} was asked for.",
                    provider=spec.provider,
                )
            if (info.width, info.height) != (negotiated.size.width, negotiated.size.height):
                same_shape = _same_shape(info, negotiated.size)
                if not editing and not same_shape:
                    raise ProviderProtocolError(
                        f"{spec.provider} returned a {info.width}x{info.height} image where "
                        f"{negotiated.size} was asked for.",
                        provider=spec.provider,
                    )
                # Some models pick the pixel count themselves (and edit endpoints the size):
                # the image is what was paid for, so keep it and say what came.
                warning = (
                    f"{spec.provider} returned {info.width}x{info.height} where "
                    f"{negotiated.size} was asked for."
                )
                if warning not in generation.warnings:
                    generation.warnings = (*generation.warnings, warning)
        # Store this call's images now, while the other calls are still running (every image
        # of the call was checked first, so a bad one leaves none of its siblings behind).
        source_type = DIGITAL_SOURCE_TYPE_COMPOSITE if editing else DIGITAL_SOURCE_TYPE_GENERATED
        seeds = [
            item.seed or (request.seed.offset(i) if request.seed is not None else None)
            for i, item in enumerate(items)
        ]
        now = self._clock.now()
        blobs = await asyncio.gather(
            *(
                self._storage.put(
                    item.data,
                    info,
                    Provenance(
                        digital_source_type=source_type,
                        provider=spec.provider,
                        model=spec.model,
                        prompt=negotiated.prompt.text,
                        negative_prompt=negotiated.prompt.negative,
                        generation_id=generation.id,
                        seed=seed.value if seed is not None else None,
                        created_at=now,
                        parent_asset_id=generation.parent_id,
                    ),
                )
                for item, info, seed in zip(items, infos, seeds, strict=True)
            )
        )
        return result, list(zip(infos, blobs, seeds, strict=True))

    def _records(self, generation: Generation, produced: list[_Checked]) -> list[GeneratedImage]:
        """The image records of what the calls stored, in order."""
        now = self._clock.now()
        return [
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
            for index, (info, blob, seed) in enumerate(produced)
        ]

    async def _complete(
        self,
        generation: Generation,
        attempt: Attempt,
        results: list[ProviderResult],
        images: list[GeneratedImage],
        plan: Plan,
    ) -> GenerationOutcome:
        negotiated = attempt.negotiated
        bill = charge(
            attempt.spec.pricing,
            images=len(images),
            size=negotiated.size,
            quality=negotiated.quality,
            usd_per_credit=self._policy.usd_per_credit,
            usage=_total_usage(results),
            provider_cost=_total_cost(results),
            operation=negotiated.operation.value,
            # A resumed edit has no inputs in hand: the sizes were kept with the generation.
            input_images=_input_sizes(plan.inputs) or generation.parameters.input_sizes,
            quoted=attempt.quote,
        )
        charged = bill.credits
        if plan.quoted_per_image is not None:
            charged = plan.quoted_per_image * len(images)
        cost = str(bill.usd.amount) if bill.usd is not None else None
        warnings = list(generation.warnings)
        for result in results:
            warnings.extend(w for w in result.warnings if w not in warnings)
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
            if QUOTA in reservation.holds:
                charged = self._plan_charge(account.plan_id, reservation, charged, len(images))
            if charged.amount > reservation.amount:
                warnings.append(
                    f"The call cost {charged.amount} credits, more than the {reservation.amount}"
                    " reserved; only the reservation was charged."
                )
                charged = Credits(reservation.amount)
            now = self._clock.now()
            try:
                entry = account.capture(reservation, charged, now, self._ids.new("ent"))
            except ReservationAlreadyResolved:
                raise ReservationExpired(
                    f"Generation {generation.id} outlived its credit reservation and was "
                    "released by the sweeper; nothing was charged.",
                    generation_id=generation.id,
                ) from None
            generation.warnings = tuple(warnings)
            generation.succeed(images, charged.amount, now, provider_cost_usd=cost)
            await record_capture(
                uow,
                account,
                reservation,
                generation,
                entry,
                delivered=len(images),
                plans=self._plans,
                thresholds=self._policy.alert_thresholds,
                ids=self._ids,
                now=now,
            )
            uow.record(generation.events)
            await uow.accounts.save(account)
            await uow.accounts.save_reservation(reservation)
            await uow.generations.save(generation)
            for image in images if plan.tags else ():
                asset = new_asset(generation, image, plan.tags, None, {}, self._ids.new("ast"), now)
                await uow.assets.add(asset)
                assets.append(asset)
            await uow.commit()
        return GenerationOutcome(generation, assets=tuple(assets))

    def _plan_charge(
        self, plan_id: str | None, reservation: Reservation, billed: Credits, delivered: int
    ) -> Credits:
        """Under a plan, only overage images cost credits: at the price per overage image
        reserved, or — when the plan charges the model's own price — what the call really
        cost per image, if that is less."""
        included = min(delivered, reservation.included_images)
        overage = delivered - included
        if overage == 0 or reservation.overage_images == 0:
            return Credits(0)
        per_image = reservation.amount // reservation.overage_images
        charged = overage * per_image
        billing_plan = self._plans.get(plan_id) if self._plans is not None and plan_id else None
        if billing_plan is not None and billing_plan.overage_credits_per_image is None:
            actual = -(-billed.amount * overage // max(delivered, 1))
            charged = min(charged, actual)
        return Credits(charged)

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
                    await return_holds(uow, account.tenant_id, reservation)
                if stored is not None and not stored.status.is_terminal:
                    # A fallback switched the model in memory only: record what really ran.
                    stored.provider, stored.model = generation.provider, generation.model
                    stored.parameters = generation.parameters
                    stored.warnings = generation.warnings
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
