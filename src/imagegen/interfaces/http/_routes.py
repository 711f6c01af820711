"""The v1 endpoints. Each one authenticates the caller, turns the request into a command,
calls the ``AccessGuard`` (which checks the role and scopes everything to the caller's
tenant) and maps the result to a response body. No logic of its own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagegen.application.commands import (
    EditCommand,
    GenerateCommand,
    GrantCreditsCommand,
    HistoryFilter,
    SaveToDamCommand,
    UsageReportCommand,
)
from imagegen.application.guard import AccessGuard
from imagegen.application.ports import AssetQuery
from imagegen.application.use_cases import GenerationOutcome
from imagegen.application.use_cases.billing import DIMENSIONS
from imagegen.client import ModelInfo
from imagegen.domain.access import Principal
from imagegen.domain.errors import InvalidParameter
from imagegen.interfaces.http._problems import PROBLEM_JSON, problem
from imagegen.interfaces.http._runtime import Runtime
from imagegen.interfaces.http._schemas import (
    AssetOut,
    AssetPage,
    BalanceOut,
    EstimateOut,
    EstimateRequest,
    GenerationOut,
    GenerationPage,
    GenerationRequest,
    GrantRequest,
    ModelList,
    ModelOut,
    Problem,
    SaveAssetRequest,
    UsageReportOut,
)
from imagegen.interfaces.http._uploads import read_image

bearer = HTTPBearer(auto_error=False, description="An API key: Authorization: Bearer ig_live_…")


def _problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    content = {PROBLEM_JSON: {"schema": Problem.model_json_schema()}}
    return {status: {"model": Problem, "content": content} for status in statuses}


COMMON = (400, 401, 403, 404, 413, 422, 500)
CREATES = (*COMMON, 402, 409, 429, 502, 503, 504)
router = APIRouter(responses=_problem_responses(*COMMON))

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Replaying a key returns the first result and never charges twice.",
    ),
]


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.imagegen
    return runtime


async def guard(request: Request) -> AccessGuard:
    return (await runtime_of(request).start()).guard


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    access = await runtime_of(request).start()
    return await access.authenticate.execute(credentials.credentials if credentials else None)


Caller = Annotated[Principal, Depends(principal)]
Guard = Annotated[AccessGuard, Depends(guard)]


# --- generations -------------------------------------------------------------------------


async def _finish(
    request: Request,
    response: Response,
    guard: AccessGuard,
    caller: Principal,
    command: GenerateCommand | EditCommand,
) -> GenerationOut | JSONResponse:
    """Wait for the generation up to the limit; after it, the generation goes on."""
    runtime = runtime_of(request)
    task = runtime.detach(guard.generate(caller, command))
    try:
        outcome: GenerationOutcome = await asyncio.wait_for(
            asyncio.shield(task), runtime.service.generation_wait_seconds
        )
    except TimeoutError:
        key = command.idempotency_key
        pending = await guard.generation_by_idempotency_key(caller, key) if key else None
        if pending is None:
            return problem(
                504,
                "generation_pending",
                "The generation is taking longer than this service waits; it goes on and "
                "will appear in GET /v1/generations. Send an Idempotency-Key to get its id.",
            )
        body = GenerationOut.of(pending).model_dump(mode="json")
        location = f"/v1/generations/{pending.id}"
        return JSONResponse(body, status_code=202, headers={"Location": location})
    generation = outcome.generation
    response.headers["Location"] = f"/v1/generations/{generation.id}"
    if outcome.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return GenerationOut.of(generation, replayed=outcome.replayed, assets=outcome.assets)


def _generation_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"model": GenerationOut, "description": "A replayed Idempotency-Key."},
        202: {
            "model": GenerationOut,
            "description": "Queued (background / Prefer: respond-async), or still running "
            "after the wait limit.",
        },
        **_problem_responses(*CREATES, *statuses),
    }


@router.post(
    "/generations",
    status_code=201,
    response_model=GenerationOut,
    responses=_generation_responses(),
    summary="Generate images (waits for the result)",
)
async def create_generation(
    body: GenerationRequest,
    request: Request,
    response: Response,
    caller: Caller,
    guard: Guard,
    idempotency_key: IdempotencyKey = None,
    prefer: Annotated[
        str | None,
        Header(description="respond-async: queue it for a worker and answer 202 at once."),
    ] = None,
) -> Any:
    command = GenerateCommand(
        prompt=body.prompt,
        provider=body.provider,
        model=body.model,
        n=body.n,
        size=body.size,
        aspect_ratio=body.aspect_ratio,
        seed=body.seed,
        format=body.format,
        negative_prompt=body.negative_prompt,
        quality=body.quality,
        idempotency_key=idempotency_key,
        tags=tuple(body.tags),
    )
    if body.background or "respond-async" in (prefer or "").lower():
        return await _submit(response, guard, caller, command)
    return await _finish(request, response, guard, caller, command)


async def _submit(
    response: Response,
    guard: AccessGuard,
    caller: Principal,
    command: GenerateCommand | EditCommand,
) -> GenerationOut:
    """Queue the generation or edit (credits reserved): 202 with its status URL to poll."""
    outcome = await guard.submit(caller, command)
    generation = outcome.generation
    response.headers["Location"] = f"/v1/generations/{generation.id}"
    response.status_code = 200 if outcome.replayed else 202
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        response.headers["Preference-Applied"] = "respond-async"
    return GenerationOut.of(generation, replayed=outcome.replayed, assets=outcome.assets)


def _outpaint(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None or not text.strip():
        return None
    try:
        left, right, up, down = (int(part) for part in text.split(","))
    except ValueError:
        raise InvalidParameter(
            "outpaint is LEFT,RIGHT,UP,DOWN pixels, e.g. 0,0,256,0.", outpaint=text[:50]
        ) from None
    return left, right, up, down


@router.post(
    "/edits",
    status_code=201,
    response_model=GenerationOut,
    responses=_generation_responses(415),
    summary="Edit an uploaded image or a DAM asset into a new generation",
)
async def create_edit(
    request: Request,
    response: Response,
    caller: Caller,
    guard: Guard,
    image: Annotated[
        list[UploadFile] | None,
        File(description="The image to edit; more files are references."),
    ] = None,
    source_asset_id: Annotated[str | None, Form(description="Or: a DAM asset.")] = None,
    mask: Annotated[UploadFile | None, File(description="Same size; transparent = change.")] = None,
    prompt: Annotated[str, Form()] = "",
    operation: Annotated[str | None, Form()] = None,
    search_prompt: Annotated[str | None, Form()] = None,
    outpaint: Annotated[str | None, Form(description="LEFT,RIGHT,UP,DOWN pixels.")] = None,
    provider: Annotated[str | None, Form()] = None,
    model: Annotated[str | None, Form()] = None,
    n: Annotated[int, Form()] = 1,
    size: Annotated[str | None, Form()] = None,
    seed: Annotated[int | None, Form()] = None,
    format: Annotated[str | None, Form()] = None,
    negative_prompt: Annotated[str | None, Form()] = None,
    quality: Annotated[str | None, Form()] = None,
    tags: Annotated[list[str] | None, Form()] = None,
    background: Annotated[
        bool,
        Form(description="Queue it for a worker and answer 202 at once (as Prefer does)."),
    ] = False,
    idempotency_key: IdempotencyKey = None,
    prefer: Annotated[
        str | None,
        Header(description="respond-async: queue it for a worker and answer 202 at once."),
    ] = None,
) -> Any:
    limit = runtime_of(request).service.max_upload_bytes
    images = tuple([await read_image(upload, limit, "image") for upload in image or ()])
    mask_bytes = await read_image(mask, limit, "mask") if mask is not None else None
    command = EditCommand(
        prompt=prompt,
        operation=operation or None,
        source_asset_id=source_asset_id or None,
        images=images,
        mask=mask_bytes,
        search_prompt=search_prompt or None,
        outpaint=_outpaint(outpaint),
        provider=provider or None,
        model=model or None,
        n=n,
        size=size or None,
        seed=seed,
        format=format or None,
        negative_prompt=negative_prompt or None,
        quality=quality or None,
        idempotency_key=idempotency_key,
        tags=tuple(tags or ()),
    )
    if background or "respond-async" in (prefer or "").lower():
        return await _submit(response, guard, caller, command)
    return await _finish(request, response, guard, caller, command)


@router.get("/generations/{generation_id}", response_model=GenerationOut)
async def get_generation(generation_id: str, caller: Caller, guard: Guard) -> GenerationOut:
    return GenerationOut.of(await guard.generation(caller, generation_id))


@router.post(
    "/generations/{generation_id}/cancel",
    response_model=GenerationOut,
    responses=_problem_responses(409),
    summary="Cancel a queued or running generation (its credits are released)",
)
async def cancel_generation(generation_id: str, caller: Caller, guard: Guard) -> GenerationOut:
    return GenerationOut.of(await guard.cancel(caller, generation_id))


@router.get("/generations", response_model=GenerationPage, summary="History, newest first")
async def list_generations(
    caller: Caller,
    guard: Guard,
    status: Annotated[str | None, Query(description="queued, running, succeeded, …")] = None,
    provider: str | None = None,
    model: str | None = None,
    text: Annotated[str | None, Query(description="Text the prompt contains.")] = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the last page.")] = None,
) -> GenerationPage:
    page = await guard.history(
        caller,
        HistoryFilter(
            status=status,
            provider=provider,
            model=model,
            text=text,
            created_from=created_from,
            created_to=created_to,
            limit=limit,
            cursor=cursor,
        ),
    )
    return GenerationPage(
        items=[GenerationOut.of(g) for g in page.items], next_cursor=page.next_cursor
    )


_IMAGE_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
        "description": "The bytes, with their embedded provenance (XMP).",
    }
}


def _bytes(data: bytes, media_type: str, filename: str, sha256: str) -> Response:
    return Response(
        content=data,
        media_type=media_type,
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "ETag": f'"{sha256}"',
            "Cache-Control": "private, max-age=31536000, immutable",  # content-addressed
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/images/{image_id}/content",
    response_class=Response,
    responses=_IMAGE_CONTENT,
    summary="A generated image's bytes",
)
async def get_image_content(image_id: str, caller: Caller, guard: Guard) -> Response:
    content = await guard.image_content(caller, image_id)
    image = content.image
    filename = f"{image.id}.{image.format.extension}"
    return _bytes(content.data, image.format.mime_type, filename, image.sha256)


# --- the DAM -----------------------------------------------------------------------------


@router.post(
    "/assets",
    status_code=201,
    response_model=AssetOut,
    responses={200: {"model": AssetOut, "description": "The image was already an asset."}},
    summary="Save a generated image to the DAM",
)
async def save_asset(
    body: SaveAssetRequest,
    response: Response,
    caller: Caller,
    guard: Guard,
    idempotency_key: IdempotencyKey = None,  # accepted: saving an image twice is one asset
) -> AssetOut:
    saved = await guard.save_asset(
        caller,
        SaveToDamCommand(
            image_id=body.image_id,
            tags=tuple(body.tags),
            title=body.title,
            metadata=dict(body.metadata),
        ),
    )
    response.headers["Location"] = f"/v1/assets/{saved.asset.id}"
    if not saved.created:
        response.status_code = 200
    return AssetOut.of(saved.asset)


@router.get("/assets", response_model=AssetPage, summary="Assets, newest first")
async def list_assets(
    caller: Caller,
    guard: Guard,
    tag: str | None = None,
    text: Annotated[str | None, Query(description="Text the title contains.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> AssetPage:
    page = await guard.assets(
        caller, AssetQuery(tenant_id="", tag=tag, text=text, limit=limit, cursor=cursor)
    )
    return AssetPage(items=[AssetOut.of(a) for a in page.items], next_cursor=page.next_cursor)


@router.get("/assets/{asset_id}", response_model=AssetOut)
async def get_asset(asset_id: str, caller: Caller, guard: Guard) -> AssetOut:
    return AssetOut.of(await guard.asset(caller, asset_id))


@router.get(
    "/assets/{asset_id}/content",
    response_class=Response,
    responses=_IMAGE_CONTENT,
    summary="An asset's bytes",
)
async def get_asset_content(asset_id: str, caller: Caller, guard: Guard) -> Response:
    exported = await guard.asset_content(caller, asset_id)
    asset = exported.asset
    return _bytes(exported.data, asset.format.mime_type, exported.filename, asset.sha256)


# --- the catalog and credits -------------------------------------------------------------


@router.get("/models", response_model=ModelList, summary="Models with their prices")
async def list_models(request: Request, caller: Caller, guard: Guard) -> ModelList:
    usd_per_credit = runtime_of(request).usd_per_credit
    infos = [ModelInfo.of(spec, usd_per_credit) for spec in guard.models(caller)]
    return ModelList(models=[ModelOut(**info.to_dict()) for info in infos])


@router.post("/estimate", response_model=EstimateOut, summary="Price a generation")
async def estimate(body: EstimateRequest, caller: Caller, guard: Guard) -> EstimateOut:
    result = guard.estimate(
        caller,
        GenerateCommand(
            prompt=body.prompt,
            provider=body.provider,
            model=body.model,
            n=body.n,
            size=body.size,
            aspect_ratio=body.aspect_ratio,
            format=body.format,
            quality=body.quality,
        ),
    )
    return EstimateOut.of(result)


@router.get("/credits/balance", response_model=BalanceOut)
async def balance(caller: Caller, guard: Guard) -> BalanceOut:
    return BalanceOut.of(await guard.balance(caller))


@router.post(
    "/credits/grants",
    status_code=201,
    response_model=BalanceOut,
    responses={200: {"model": BalanceOut, "description": "A replayed Idempotency-Key."}},
    summary="Add credits (admin)",
)
async def grant(
    body: GrantRequest,
    response: Response,
    caller: Caller,
    guard: Guard,
    idempotency_key: IdempotencyKey = None,
) -> BalanceOut:
    outcome = await guard.grant_credits(
        caller, GrantCreditsCommand(amount=body.amount, memo=body.memo), idempotency_key
    )
    if outcome.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return BalanceOut.of(outcome.balance, replayed=outcome.replayed)


# --- usage -------------------------------------------------------------------------------

CSV = "text/csv"


def _utc(value: datetime | None, name: str) -> datetime | None:
    """An aware UTC datetime (a naive one is taken as UTC)."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidParameter(f"{name} is out of range.") from None


@router.get(
    "/usage",
    response_model=UsageReportOut,
    response_model_exclude_none=True,
    responses={
        200: {
            "content": {CSV: {"schema": {"type": "string"}}},
            "description": "The report; as CSV with Accept: text/csv or format=csv.",
        }
    },
    summary="The tenant's usage report: credits, revenue, provider cost and margin",
)
async def usage_report(
    request: Request,
    caller: Caller,
    guard: Guard,
    period: Annotated[
        str | None,
        Query(description="A month, YYYY-MM (default: the current month, UTC)."),
    ] = None,
    from_: Annotated[
        datetime | None,
        Query(alias="from", description="Or: the start (inclusive) of a range, with `to`."),
    ] = None,
    to: Annotated[
        datetime | None, Query(description="The end (exclusive) of the range, with `from`.")
    ] = None,
    by: Annotated[
        str | None,
        Query(description=f"Group by, comma-separated: {', '.join(DIMENSIONS)}."),
    ] = None,
    format: Annotated[
        Literal["json", "csv"] | None,
        Query(description="csv as Accept: text/csv does (the default is JSON)."),
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Any:
    start, end = _utc(from_, "from"), _utc(to, "to")
    if period is None and start is None and end is None:  # as the Python API: this month
        period = runtime_of(request).container.gateways.clock().now().strftime("%Y-%m")
    report = await guard.usage_report(
        caller,
        UsageReportCommand(period=period, start=start, end=end, by=tuple((by or "").split(","))),
    )
    wants_csv = format == "csv" or (format is None and CSV in (accept or "").lower())
    if wants_csv:
        return Response(report.to_csv(), media_type=CSV)
    return UsageReportOut.of(report)
