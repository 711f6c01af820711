"""The HTTP service's commands: ``imagegen serve``, ``imagegen tenants …``, ``imagegen keys …``.

Importing this module registers them on the ``imagegen`` app (``imagegen.interfaces.cli``
does). Tenants and keys are operator commands: whoever runs them has the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from imagegen.domain.errors import ImageGenError
from imagegen.interfaces.cli.app import (
    EXIT_ERROR,
    JsonFlag,
    _add_row,
    _emit_json,
    _settings,
    _table,
    app,
    err,
    exit_code_for,
    out,
)

T = TypeVar("T")

tenants_app = typer.Typer(help="Tenants of the HTTP service.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the HTTP service.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")


def _access(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(access)`` against the configured database; errors become an exit code."""
    from imagegen.bootstrap.access import build_access
    from imagegen.bootstrap.container import build_container
    from imagegen.client import AsyncImageGen

    async def main() -> T:
        container = build_container(_settings())
        async with AsyncImageGen(container=container):  # migrates, and closes the engine
            return await work(build_access(container))

    try:
        return asyncio.run(main())
    except ImageGenError as error:
        err.print(f"error: {error.message}", markup=False)
        raise typer.Exit(exit_code_for(error)) from None


def _tenant_dict(tenant: Any) -> dict[str, Any]:
    return {"id": tenant.id, "name": tenant.name, "created_at": tenant.created_at.isoformat()}


def _key_dict(key: Any, tenant_name: str | None = None) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.public_prefix,
        "tenant_id": key.tenant_id,
        **({"tenant": tenant_name} if tenant_name is not None else {}),
        "role": key.role.value,
        "name": key.name,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "replaces": key.replaces,
    }


def _print_issued(issued: Any, as_json: bool) -> None:
    if as_json:
        _emit_json({**_key_dict(issued.key, issued.tenant.name), "key": issued.secret})
        return
    out.print(
        f"key {issued.key.id} for {issued.tenant.name} ({issued.key.role.value}); "
        "copy it now, it is not shown again:",
        markup=False,
    )
    out.print(issued.secret, markup=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Run the HTTP service (needs pip install 'imagegen[service]')."""
    try:
        import uvicorn

        import imagegen.interfaces.http
    except ImportError:
        err.print("error: the HTTP service needs: pip install 'imagegen[service]'", markup=False)
        raise typer.Exit(EXIT_ERROR) from None
    _settings()  # a bad IMAGEGEN_* value is one sentence, not a traceback in a worker
    from pydantic import ValidationError

    try:
        imagegen.interfaces.http.ServiceSettings()
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]).upper() if first.get("loc") else "*"
        err.print(f"error: IMAGEGEN_HTTP_{field}: {first['msg']}.", markup=False)
        raise typer.Exit(EXIT_ERROR) from None
    err.print(f"imagegen service on http://{host}:{port} (Ctrl-C stops it)", markup=False)
    uvicorn.run(
        "imagegen.interfaces.http:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


@tenants_app.command("create")
def tenants_create(
    name: Annotated[str, typer.Argument(help="A unique name.")],
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant (its credit account opens with the starting credits on first use)."""
    tenant = _access(lambda access: access.create_tenant.execute(name))
    if as_json:
        _emit_json(_tenant_dict(tenant))
    else:
        out.print(f"tenant {tenant.id} ({tenant.name})", markup=False)


@tenants_app.command("list")
def tenants_list(as_json: JsonFlag = False) -> None:
    """List tenants."""
    tenants = _access(lambda access: access.list_tenants.execute())
    if as_json:
        _emit_json({"tenants": [_tenant_dict(t) for t in tenants]})
        return
    table = _table("id", "name", "created")
    for t in tenants:
        _add_row(table, t.id, t.name, f"{t.created_at:%Y-%m-%d %H:%M:%S}")
    out.print(table)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant id or name.")],
    role: Annotated[str, typer.Option(help="admin, creator, reviewer or viewer.")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; the key is printed once and only its hash is kept."""
    issued = _access(lambda access: access.create_key.execute(tenant, role, name))
    _print_issued(issued, as_json)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Tenant id or name (default: all).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List API keys (never the keys themselves: their public prefix)."""
    keys = _access(lambda access: access.list_keys.execute(tenant))
    if as_json:
        _emit_json({"keys": [_key_dict(k) for k in keys]})
        return
    table = _table("id", "tenant", "role", "name", "created", "last used", "revoked")
    for k in keys:
        _add_row(
            table,
            k.id,
            k.tenant_id,
            k.role.value,
            k.name or "-",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "-",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="A key id (key_…).")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    key = _access(lambda access: access.revoke_key.execute(key_id))
    if as_json:
        _emit_json(_key_dict(key))
    else:
        out.print(f"revoked {key.id}", markup=False)


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="A key id (key_…).")],
    as_json: JsonFlag = False,
) -> None:
    """Replace a key by a new one (same tenant, role and name); the old one is revoked."""
    issued = _access(lambda access: access.rotate_key.execute(key_id))
    _print_issued(issued, as_json)
