"""``imagegen``: the command-line shell. It parses arguments, calls ``AsyncImageGen`` and
prints results (``--json`` for machines); errors become one sentence on stderr and an exit
code:

    0 success · 2 invalid input (or unknown id) · 3 insufficient credits or quota ·
    4 provider failure · 1 anything else
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from imagegen.domain.errors import (
    BillingError,
    ImageGenError,
    InvalidInput,
    NotFound,
    ProviderError,
)

T = TypeVar("T")

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_CREDITS, EXIT_PROVIDER = 0, 1, 2, 3, 4

app = typer.Typer(
    name="imagegen",
    help="Generate images, keep them in your asset library, and pay only for results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
credits_app = typer.Typer(help="Credit balance and grants.", no_args_is_help=True)
assets_app = typer.Typer(help="The asset library (DAM).", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
providers_app = typer.Typer(help="The image providers.", no_args_is_help=True)
app.add_typer(providers_app, name="providers")
app.add_typer(credits_app, name="credits")
app.add_typer(assets_app, name="assets")
app.add_typer(db_app, name="db")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ProjectOption = Annotated[
    str | None, typer.Option("--project", help="Bill it to this project (budgets, reports).")
]
MaxCreditsOption = Annotated[
    int | None, typer.Option("--max-credits", help="Refuse if it would reserve more credits.")
]
MaxCostOption = Annotated[
    str | None, typer.Option("--max-cost", help="Refuse if it would cost more USD, e.g. 0.50.")
]


def exit_code_for(error: ImageGenError) -> int:
    if isinstance(error, InvalidInput | NotFound):
        return EXIT_INVALID
    if isinstance(error, BillingError):
        return EXIT_CREDITS
    if isinstance(error, ProviderError):
        return EXIT_PROVIDER
    return EXIT_ERROR


def _settings() -> Any:
    """Settings from the environment; a bad IMAGEGEN_* value is one sentence and exit 1."""
    from pydantic import ValidationError

    from imagegen.bootstrap.settings import Settings

    try:
        return Settings()
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else "setting"
        variable = f"IMAGEGEN_{field.upper()}"
        err.print(f"error: {variable}: {first['msg']}.", markup=False)
        raise typer.Exit(EXIT_ERROR) from None


def _client() -> Any:
    from imagegen.client import AsyncImageGen

    return AsyncImageGen(_settings())


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(client)`` on a fresh client; turn library errors into an exit code."""

    async def main() -> T:
        async with _client() as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except ImageGenError as error:
        err.print(f"error: {error.message}", markup=False)
        raise typer.Exit(exit_code_for(error)) from None
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        raise typer.Exit(130) from None
    except typer.Exit:
        raise  # already reported (e.g. a bad setting)
    except Exception as error:
        logging.getLogger("imagegen.cli").debug("unexpected error", exc_info=True)
        err.print(
            f"error: an internal error occurred ({type(error).__name__}); "
            "run with --verbose for details.",
            markup=False,
        )
        raise typer.Exit(EXIT_ERROR) from None


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")


def _parse_when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        err.print(
            f"error: {option} {value!r} is not a date like 2026-11-01 or 2026-11-01T12:00:00.",
            markup=False,
        )
        raise typer.Exit(EXIT_INVALID) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _add_row(table: Table, *cells: object) -> None:
    """Cells are plain text: prompts and titles are user data, never Rich markup."""
    table.add_row(*(Text(str(cell)) for cell in cells))


def _table(*columns: str) -> Table:
    """A table whose id and path columns are never cut: users copy them into commands."""
    table = Table()
    for name in columns:
        if name in {"id", "image", "asset", "model", "created"}:
            table.add_column(name, no_wrap=True)
        elif name == "path":
            table.add_column(name, overflow="fold", min_width=20)
        else:
            table.add_column(name)
    return table


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
) -> None:
    # Without --verbose the one-sentence error on stderr is the whole story; tracebacks
    # of unexpected errors are logged only with it.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if version:
        from imagegen import __version__

        out.print(f"imagegen {__version__}")
        raise typer.Exit()


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    provider: Annotated[str | None, typer.Option(help="Provider (default: local).")] = None,
    model: Annotated[str | None, typer.Option(help="Model of the provider.")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="How many images.")] = 1,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, e.g. 1024x1024.")] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help="W:H, e.g. 16:9.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed, for reproducible images.")] = None,
    format: Annotated[str | None, typer.Option("--format", help="png, jpeg or webp.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to avoid.")] = None,
    quality: Annotated[
        str | None, typer.Option(help="Model quality, e.g. low, medium, high (see models).")
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Replaying a key returns the first result, charged once.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", help="Save the images as DAM assets with this tag (repeatable)."
        ),
    ] = None,
    project: ProjectOption = None,
    max_credits: MaxCreditsOption = None,
    max_cost: MaxCostOption = None,
    background: Annotated[
        bool,
        typer.Option("--background", help="Queue it for 'imagegen worker'; print its id."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate images into the DAM and charge their credits."""

    async def work(client: Any) -> Any:
        what = f"{n} image{'s' if n != 1 else ''}"
        with err.status(f"Generating {what}…", spinner="dots"):
            return await client.generate(
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
                tags=tag or (),
                project=project,
                max_credits=max_credits,
                max_cost=max_cost,
                background=background,
            )

    result = _run(work)
    if as_json:
        _emit_json(result.to_dict())
    elif background:
        out.print(result.id)
    else:
        _print_result(result)


def _parse_outpaint(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        left, right, up, down = (int(part) for part in text.split(","))
    except ValueError:
        err.print(
            f"error: --outpaint {text!r} is not LEFT,RIGHT,UP,DOWN pixels (e.g. 0,0,256,0).",
            markup=False,
        )
        raise typer.Exit(EXIT_INVALID) from None
    return left, right, up, down


def _print_result(result: Any) -> None:
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    replay = " (replayed: nothing charged)" if result.replayed else ""
    out.print(
        f"[bold]{result.id}[/bold] {result.status} · {escape(result.provider)}/"
        f"{escape(result.model)} · {result.credits_charged} credits{replay}"
    )
    table = _table("image", "size", "format", "seed", "path")
    for image in result.images:
        _add_row(
            table,
            image.id,
            f"{image.width}x{image.height}",
            image.format,
            image.seed if image.seed is not None else "-",
            image.path,
        )
    out.print(table)
    for asset in result.assets:
        out.print(f"saved as asset {asset.id} tagged {', '.join(asset.tags)}", markup=False)


@app.command()
def edit(
    source: Annotated[str, typer.Argument(help="An asset id (ast_…) or an image file.")],
    prompt: Annotated[str, typer.Argument(help="The change to make.")] = "",
    operation: Annotated[
        str | None,
        typer.Option(
            help="edit, inpaint, outpaint, erase, search_and_replace or remove_background "
            "(default: implied by --mask/--outpaint/--search-prompt and the model)."
        ),
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="PNG mask, same size: transparent = change.")
    ] = None,
    reference: Annotated[
        list[Path] | None, typer.Option(help="More input images (repeatable).")
    ] = None,
    search_prompt: Annotated[
        str | None, typer.Option(help="search_and_replace: what to replace.")
    ] = None,
    outpaint: Annotated[
        str | None, typer.Option(help="outpaint: LEFT,RIGHT,UP,DOWN pixels to add.")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Model of the provider.")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="How many results.")] = 1,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT of the result.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    format: Annotated[str | None, typer.Option("--format", help="png, jpeg or webp.")] = None,
    quality: Annotated[str | None, typer.Option(help="Model quality.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Charged once per key.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Save results as assets with this tag.")
    ] = None,
    project: ProjectOption = None,
    max_credits: MaxCreditsOption = None,
    max_cost: MaxCostOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Edit an image from the DAM or a file; the result links to its source."""
    margins = _parse_outpaint(outpaint)
    what: Any = source if source.startswith("ast_") else Path(source)

    async def work(client: Any) -> Any:
        with err.status("Editing…", spinner="dots"):
            return await client.edit(
                what,
                prompt,
                operation=operation,
                mask=mask,
                references=tuple(reference or ()),
                search_prompt=search_prompt,
                outpaint=margins,
                n=n,
                size=size,
                provider=provider,
                model=model,
                seed=seed,
                format=format,
                quality=quality,
                idempotency_key=idempotency_key,
                tags=tag or (),
                project=project,
                max_credits=max_credits,
                max_cost=max_cost,
            )

    result = _run(work)
    if as_json:
        _emit_json(result.to_dict())
    else:
        _print_result(result)


@app.command()
def resume(
    generation_id: Annotated[str, typer.Argument(help="A running generation (gen_…).")],
    as_json: JsonFlag = False,
) -> None:
    """Finish a generation whose process died while its provider job ran (no second charge)."""
    result = _run(lambda client: client.resume(generation_id))
    if as_json:
        _emit_json(result.to_dict())
    else:
        _print_result(result)


EMULATORS = ("openai", "replicate", "stability", "stripe")


@app.command()
def emulate(
    provider: Annotated[
        str, typer.Argument(help="openai, replicate, stability or stripe (meter events).")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="The key the emulator accepts (default: the emulator's).")
    ] = None,
    latency: Annotated[float, typer.Option(help="Seconds added to every answer.")] = 0.0,
) -> None:
    """Run a provider emulator (its real wire protocol, real images, fault injection)."""
    import importlib

    if provider not in EMULATORS:
        err.print(f"error: no emulator for {provider!r}; use {', '.join(EMULATORS)}.")
        raise typer.Exit(EXIT_INVALID)
    try:
        import uvicorn

        module = importlib.import_module(f"imagegen.testing.emulators.{provider}")
    except ImportError:
        err.print("error: the emulators need: pip install 'imagegen[emulators]'", markup=False)
        raise typer.Exit(EXIT_ERROR) from None
    options: dict[str, Any] = {"latency_s": latency}
    if api_key is not None:
        options["api_token" if provider == "replicate" else "api_key"] = api_key
    application = module.create_app(**options)
    err.print(f"{provider} emulator on http://{host}:{port} (Ctrl-C stops it)", markup=False)
    uvicorn.run(application, host=host, port=port, log_level="warning")


@providers_app.command("health")
def providers_health(
    names: Annotated[list[str] | None, typer.Argument(help="Providers (default: all).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check that each provider answers and accepts its credentials; exit 4 if one does not."""
    reports = _run(lambda client: client.provider_health(names or ()))
    if as_json:
        _emit_json(
            {
                "providers": [
                    {
                        "provider": r.provider,
                        "ok": r.ok,
                        "latency_ms": r.latency_ms,
                        "detail": r.detail,
                    }
                    for r in reports
                ]
            }
        )
    else:
        table = _table("provider", "ok", "latency", "detail")
        for r in reports:
            latency_text = f"{r.latency_ms:.0f} ms" if r.latency_ms is not None else "-"
            _add_row(table, r.provider, "yes" if r.ok else "NO", latency_text, r.detail)
        out.print(table)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_PROVIDER)


@app.command()
def estimate(
    provider: Annotated[str | None, typer.Option(help="Provider (default: local).")] = None,
    model: Annotated[str | None, typer.Option(help="Model of the provider.")] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="How many images.")] = 1,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT.")] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help="W:H.")] = None,
    format: Annotated[str | None, typer.Option("--format", help="png, jpeg or webp.")] = None,
    quality: Annotated[str | None, typer.Option(help="Model quality (see models).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Price a generation before running it."""
    from imagegen.client import AsyncImageGen

    try:
        result = AsyncImageGen(_settings()).estimate(
            n=n,
            size=size,
            aspect_ratio=aspect_ratio,
            provider=provider,
            model=model,
            format=format,
            quality=quality,
        )
    except ImageGenError as error:
        err.print(f"error: {error.message}", markup=False)
        raise typer.Exit(exit_code_for(error)) from None
    if as_json:
        _emit_json(result.to_dict())
        return
    for warning in result.warnings:
        err.print(f"warning: {warning}", markup=False)
    usd = f" (provider cost ${result.usd})" if result.usd is not None else ""
    out.print(
        f"{result.n} × {result.provider}/{result.model} {result.size} {result.format}: "
        f"{result.credits} credits{usd}"
    )


def _print_generation(result: Any) -> None:
    out.print(f"[bold]{result.id}[/bold]  {result.status}  {result.created_at:%Y-%m-%d %H:%M:%S}")
    out.print(f"  prompt:   {result.prompt}", markup=False)
    out.print(
        f"  model:    {result.provider}/{result.model}  {result.size} {result.format} "
        f"n={result.n} seed={result.seed if result.seed is not None else '-'}"
    )
    out.print(f"  credits:  estimated {result.estimated_credits}, charged {result.credits_charged}")
    if result.failure_code:
        out.print(f"  failure:  {result.failure_code}: {result.failure_message}", markup=False)
    for warning in result.warnings:
        out.print(f"  warning:  {warning}", markup=False)
    for image in result.images:
        out.print(f"  image:    {image.id} {image.width}x{image.height} {image.path}", markup=False)


@app.command()
def show(
    generation_id: Annotated[str, typer.Argument(help="A generation id (gen_…).")],
    as_json: JsonFlag = False,
) -> None:
    """Show one generation."""
    result = _run(lambda client: client.get_generation(generation_id))
    if as_json:
        _emit_json(result.to_dict())
    else:
        _print_generation(result)


@app.command()
def history(
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed or canceled.")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    text: Annotated[str | None, typer.Option(help="Text the prompt contains.")] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="Created at or after (ISO date).")
    ] = None,
    until: Annotated[str | None, typer.Option("--to", help="Created before (ISO date).")] = None,
    limit: Annotated[int, typer.Option(help="Page size, 1-100.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List generations, newest first."""
    created_from = _parse_when(since, "--from")
    created_to = _parse_when(until, "--to")
    page = _run(
        lambda client: client.history(
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
    if as_json:
        _emit_json(page.to_dict())
        return
    table = _table("id", "created", "status", "model", "n", "credits", "prompt")
    for g in page.items:
        _add_row(
            table,
            g.id,
            f"{g.created_at:%Y-%m-%d %H:%M:%S}",
            g.status,
            f"{g.provider}/{g.model}",
            str(g.n),
            str(g.credits_charged),
            g.prompt if len(g.prompt) <= 60 else g.prompt[:57] + "…",
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


@app.command()
def models(as_json: JsonFlag = False) -> None:
    """List the models you can generate with, and their prices."""
    from imagegen.client import AsyncImageGen

    infos = AsyncImageGen(_settings()).models()
    if as_json:
        _emit_json({"models": [m.to_dict() for m in infos]})
        return
    table = _table("model", "operations", "price", "max n")
    for m in infos:
        name = f"{m.provider}/{m.model}" + (" (deprecated)" if m.deprecated else "")
        _add_row(table, name, ", ".join(m.operations), m.price, m.max_images_per_request)
    out.print(table)


@app.command()
def sweep(as_json: JsonFlag = False) -> None:
    """Release credit reservations of generations that died mid-way."""
    released = _run(lambda client: client.sweep())
    if as_json:
        _emit_json({"released": released})
    else:
        out.print(f"released {released} expired reservation{'s' if released != 1 else ''}")


@credits_app.command("balance")
def credits_balance(as_json: JsonFlag = False) -> None:
    """Show the credit balance."""
    result = _run(lambda client: client.balance())
    if as_json:
        _emit_json(result.to_dict())
    else:
        out.print(
            f"{result.available} credits available "
            f"(balance {result.balance}, reserved {result.reserved})"
        )


@credits_app.command("grant")
def credits_grant(
    amount: Annotated[int, typer.Argument(help="Credits to add.")],
    memo: Annotated[str | None, typer.Option(help="Why (kept in the ledger).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add credits to the balance."""
    result = _run(lambda client: client.grant_credits(amount, memo=memo))
    if as_json:
        _emit_json(result.to_dict())
    else:
        out.print(f"granted {amount}; {result.available} credits available")


@credits_app.command("verify")
def credits_verify(as_json: JsonFlag = False) -> None:
    """Check the ledger's invariants; exit 1 if any is broken."""
    problems = _run(lambda client: client.verify_ledger())
    if as_json:
        _emit_json({"ok": not problems, "violations": problems})
    elif problems:
        for problem in problems:
            err.print(f"violation: {problem}", markup=False)
    else:
        out.print("ledger consistent")
    if problems:
        raise typer.Exit(EXIT_ERROR)


@assets_app.command("list")
def assets_list(
    tag: Annotated[str | None, typer.Option(help="Only assets with this tag.")] = None,
    text: Annotated[str | None, typer.Option(help="Text the title contains.")] = None,
    limit: Annotated[int, typer.Option(help="Page size, 1-100.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of the previous page.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List assets, newest first."""
    page = _run(lambda client: client.assets(tag=tag, text=text, limit=limit, cursor=cursor))
    if as_json:
        _emit_json(page.to_dict())
        return
    table = _table("asset", "created", "size", "tags", "title")
    for a in page.items:
        _add_row(
            table,
            a.id,
            f"{a.created_at:%Y-%m-%d %H:%M:%S}",
            f"{a.width}x{a.height}",
            ", ".join(a.tags),
            a.title,
        )
    out.print(table)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}")


@assets_app.command("save")
def assets_save(
    image_id: Annotated[str, typer.Argument(help="An image id (img_…) from a generation.")],
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Tag (repeatable).")] = None,
    title: Annotated[str | None, typer.Option(help="Title (default: the prompt).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Save a generated image to the DAM as an asset."""
    result = _run(lambda client: client.save_to_dam(image_id, tags=tag or (), title=title))
    if as_json:
        _emit_json(result.to_dict())
    else:
        out.print(f"asset {result.id} · tags: {', '.join(result.tags) or '-'} · {result.path}")


@assets_app.command("show")
def assets_show(
    asset_id: Annotated[str, typer.Argument(help="An asset id (ast_…).")],
    as_json: JsonFlag = False,
) -> None:
    """Show one asset with its provenance."""
    result = _run(lambda client: client.get_asset(asset_id))
    if as_json:
        _emit_json(result.to_dict())
        return
    out.print(f"[bold]{result.id}[/bold]  {escape(result.title)}", markup=True)
    out.print(
        f"  file:       {result.path} ({result.width}x{result.height} {result.format})",
        markup=False,
    )
    out.print(f"  sha256:     {result.sha256}")
    out.print(f"  tags:       {', '.join(result.tags) or '-'}", markup=False)
    out.print(f"  approval:   {result.approval_state}")
    for key, value in result.provenance.items():
        if value is not None:
            out.print(f"  {key + ':':<11} {value}", markup=False)


@assets_app.command("export")
def assets_export(
    asset_id: Annotated[str, typer.Argument(help="An asset id (ast_…).")],
    to: Annotated[Path, typer.Option("--to", help="Directory to copy the file into.")] = Path("."),
    as_json: JsonFlag = False,
) -> None:
    """Copy an asset's file, with its embedded provenance, into a directory."""
    target = _run(lambda client: client.export_asset(asset_id, to))
    if as_json:
        _emit_json({"id": asset_id, "path": str(target.resolve())})
    else:
        out.print(str(target), markup=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (the library also does this on start-up), and
    procrastinate's schema when IMAGEGEN_JOB_QUEUE=procrastinate."""
    from imagegen.bootstrap.container import build_container
    from imagegen.infrastructure.persistence.engine import (
        HEAD_REVISION,
        safe_url,
        upgrade_schema,
    )

    settings = _settings()
    container = build_container(settings)

    async def main() -> str | None:
        engine = container.gateways.engine()
        try:
            before = await upgrade_schema(engine)
            if settings.job_queue == "procrastinate":  # its own schema, applied once
                from imagegen.infrastructure.jobs.procrastinate_queue import ensure_schema

                await ensure_schema(engine)
            return before
        finally:
            await engine.dispose()

    try:
        before = asyncio.run(main())
    except ImageGenError as error:
        err.print(f"error: {error.message}", markup=False)
        raise typer.Exit(exit_code_for(error)) from None
    where = safe_url(settings.database_url_value())
    if before == HEAD_REVISION:
        out.print(f"{where} is up to date ({HEAD_REVISION})", markup=False)
    else:
        out.print(f"{where} upgraded from {before or 'empty'} to {HEAD_REVISION}", markup=False)


# The billing commands (plans, billing, budgets, usage) register themselves on ``app``.
from imagegen.interfaces.cli import billing as _billing  # noqa: E402

assert _billing


def main() -> None:
    app()
