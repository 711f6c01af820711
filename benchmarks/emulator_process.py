#!/usr/bin/env python
"""One provider emulator in its own process, for ``benchmarks/providers.py``.

A user's provider runs on someone else's servers: it does not share the library's interpreter
(GIL) and event loop. So the benchmark starts each emulator with this script, in a separate
process on a loopback port, and talks to it only over HTTP::

    python benchmarks/emulator_process.py stability --latency 0.3 --api-key KEY

The process binds 127.0.0.1 on a free port and, once uvicorn is serving, prints one JSON line
on stdout: ``{"url": "http://127.0.0.1:<port>", "pid": ...}``. It runs until terminated.

Besides the emulator's own API and its control API (``/_emulator/requests``, faults), a few
benchmark routes under ``/_bench/``:

* ``GET /_bench/spans``: for each API request, when it arrived, when its answer started and
  when it was sent, as ``time.perf_counter()`` values. On Linux (and macOS) that is the
  system-wide monotonic clock, comparable with the benchmark's own ``perf_counter()``; the
  benchmark checks that with ``GET /_bench/clock`` before relying on it.
* ``GET /_bench/stats``: this process's CPU time so far, and the pre-rendered pool's figures.
* ``PUT /_bench/mode`` ``{"prerendered": bool}``: answer from the pool (default) or paint
  every image with the real renderer, as the emulator ships.

The pool: the emulator's renderer (the module global ``render``) is replaced by one that
answers from 8 images per (size, format) rendered at start-up, each answer tagged with a unique
PNG ``tEXt`` chunk (a different file and SHA-256 per call), so a request costs its latency plus
parsing, as the benchmark's ideal assumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from imagegen.domain.values import ImageFormat, Seed

PROMPT: Final = "a red fox in the snow at sunset"
POOL: Final = 8  # distinct pre-rendered images per (size, format)
API_PREFIXES: Final = {"stability": ("/v2beta/",), "openai": ("/v1/images/",)}

_IEND: Final = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def tag_png(data: bytes, tag: int) -> bytes:
    """``data`` with a tEXt chunk before IEND: a different file (and SHA-256) per call, for
    microseconds, whatever the pool image."""
    if not data.endswith(_IEND):
        raise ValueError("not a PNG ending in IEND")
    body = b"tEXt" + b"imagegen-bench\x00" + str(tag).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[: -len(_IEND)] + chunk + _IEND


class EmulatorImages:
    """Stands in for ``render`` in the emulator's module. ``prerendered`` True: a PNG from a
    small pool rendered up front, tagged to be unique. False: the real renderer, which paints
    each 1 MP image (~100 ms of CPU) in the emulator's worker thread."""

    def __init__(self) -> None:
        from imagegen.infrastructure.providers.local import render

        self._render = render
        self.prerendered = True
        self._pool: dict[tuple[tuple[int, int], ImageFormat], list[bytes]] = {}
        self._tags = itertools.count(1)
        self._lock = threading.Lock()
        self.render_cpu_s: list[float] = []  # CPU per real render while building the pool

    def prepare(self, size: tuple[int, int]) -> None:
        from imagegen.domain.values import ImageFormat, Seed

        pool = []
        for i in range(POOL):
            cpu0 = time.thread_time()
            pool.append(self._render(PROMPT, Seed(4242 + i), size, ImageFormat.PNG))
            self.render_cpu_s.append(time.thread_time() - cpu0)
        self._pool[(size, ImageFormat.PNG)] = pool

    def pool_kib(self) -> float:
        sizes = [len(data) for pool in self._pool.values() for data in pool]
        return statistics.fmean(sizes) / 1024 if sizes else 0.0

    def render(self, prompt: str, seed: Seed, size: tuple[int, int], fmt: ImageFormat) -> bytes:
        from imagegen.domain.values import ImageFormat

        size = (int(size[0]), int(size[1]))
        if not self.prerendered or fmt is not ImageFormat.PNG:
            return self._render(prompt, seed, size, fmt)
        with self._lock:
            if (size, fmt) not in self._pool:
                self.prepare(size)
            pool = self._pool[(size, fmt)]
        return tag_png(pool[seed.value % len(pool)], next(self._tags))


class BenchRoutes:
    """ASGI middleware: records when each API request arrived, started its answer and sent it,
    and serves the ``/_bench/`` routes; everything else goes to the emulator."""

    def __init__(self, app: Any, prefixes: tuple[str, ...], images: EmulatorImages) -> None:
        self.app = app
        self._prefixes = prefixes
        self._images = images
        self.spans: list[tuple[float, float, float]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = str(scope.get("path", "")) if scope["type"] == "http" else ""
        if path.startswith("/_bench/"):
            await self._bench(scope, receive, send, path)
            return
        if not path.startswith(self._prefixes):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        answer = [start]

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                answer[0] = time.perf_counter()
            await send(message)

        await self.app(scope, receive, timed_send)
        self.spans.append((start, answer[0], time.perf_counter()))

    async def _bench(self, scope: Any, receive: Any, send: Any, path: str) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = scope["method"]
        payload: Any
        status = 200
        if path == "/_bench/clock" and method == "GET":
            payload = {"perf_counter": time.perf_counter()}
        elif path == "/_bench/spans" and method == "GET":
            payload = self.spans
        elif path == "/_bench/stats" and method == "GET":
            cpu = self._images.render_cpu_s
            payload = {
                "pid": os.getpid(),
                "cpu_s": time.process_time(),
                "render_cpu_ms": statistics.median(cpu) * 1000 if cpu else 0.0,
                "image_kib": self._images.pool_kib(),
                "prerendered": self._images.prerendered,
            }
        elif path == "/_bench/mode" and method == "PUT":
            self._images.prerendered = bool(json.loads(body or b"{}").get("prerendered", True))
            payload = {"prerendered": self._images.prerendered}
        else:
            status, payload = 404, {"error": f"no {method} {path}"}
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def build_app(provider: str, api_key: str, latency_s: float, pool_size: tuple[int, int]) -> Any:
    if provider == "stability":
        from imagegen.testing.emulators import stability as module

        app = module.create_app(api_key=api_key, latency_s=latency_s, credits=1e12)
    elif provider == "openai":
        from imagegen.testing.emulators import openai as module  # type: ignore[no-redef]

        app = module.create_app(api_key=api_key, latency_s=latency_s)
    else:
        raise SystemExit(f"no emulator for {provider!r}")
    images = EmulatorImages()
    images.prepare(pool_size)
    module.render = images.render  # type: ignore[attr-defined]
    return BenchRoutes(app, API_PREFIXES[provider], images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("provider", choices=sorted(API_PREFIXES))
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per request")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--pool-size", default="1024x1024", help="WxH of the pre-rendered pool")
    args = parser.parse_args(argv)

    import uvicorn

    width, height = (int(v) for v in args.pool_size.split("x"))
    app = build_app(args.provider, args.api_key, args.latency, (width, height))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            print(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": os.getpid()}), flush=True)

    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
