"""The ASGI app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.bootstrap.container import Container, build_container
from imagegen.bootstrap.settings import Settings
from imagegen.domain.errors import ImageGenError
from imagegen.interfaces.http._key_routes import router as key_router
from imagegen.interfaces.http._problems import (
    on_http_error,
    on_library_error,
    on_unexpected_error,
    on_validation_error,
    problem,
)
from imagegen.interfaces.http._routes import router
from imagegen.interfaces.http._runtime import Runtime
from imagegen.interfaces.http._settings import ServiceSettings
from imagegen.interfaces.http._webhook_routes import router as webhook_router


class BodyLimit:
    """413 for a body over ``max_bytes``: at once from Content-Length, else while it streams
    (raised inside the app, so the error handlers answer it)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    response = problem(
                        413, "request_too_large", f"A request body is at most {limit} bytes."
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"A request body is at most {limit} bytes.")
            return message

        await self.app(scope, limited, send)


def create_app(
    source: Settings | Container | None = None, *, service: ServiceSettings | None = None
) -> FastAPI:
    """The HTTP service over the library built from ``source`` (settings, or a container
    whose adapters you replaced; default: ``Settings()`` from the environment).

    Its lifespan migrates the database and closes connections; mounted inside another app
    (whose lifespan does not run it), it starts on the first request, and
    ``app.state.imagegen.aclose()`` closes it."""
    container: Any = (
        build_container(source or Settings())
        if source is None or isinstance(source, Settings)
        else source
    )
    runtime = Runtime(container, service or ServiceSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.aclose()

    from imagegen import __version__

    app = FastAPI(
        title="imagegen",
        version=__version__,
        description="Image generation, the asset library and credits, per tenant. "
        "Authenticate with `Authorization: Bearer <API key>`; errors are RFC 9457 "
        "problem details.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.imagegen = runtime
    app.add_exception_handler(ImageGenError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    app.include_router(router, prefix="/v1")
    app.include_router(webhook_router, prefix="/v1")
    app.include_router(key_router, prefix="/v1")
    app.add_middleware(BodyLimit, max_bytes=runtime.service.max_body_bytes)
    return app
