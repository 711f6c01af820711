"""Running an emulator (any ASGI app) on a real loopback socket, in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal


@contextlib.contextmanager
def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    lifespan: Literal["auto", "on", "off"] = "off",
) -> Iterator[str]:
    """Serve ``app`` with uvicorn until the block ends; yields its base URL
    (``http://127.0.0.1:<port>``). ``port=0`` picks a free port; ``lifespan="on"`` runs the
    app's start-up and shut-down (the imagegen HTTP service needs it)."""
    import uvicorn

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan=lifespan, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="imagegen-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def sleep_or_disconnect(seconds: float) -> None:
    """Hold a request (a simulated hang) without blocking the server."""
    await asyncio.sleep(seconds)
