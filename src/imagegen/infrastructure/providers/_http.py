"""What the HTTP adapters share: one TLS context for every httpx client they build.

Building an ``httpx.AsyncClient`` without one loads the CA bundle (~30 ms of CPU, on the
event loop, even for plain http); with 32 one-image calls that alone stalled a batch by a
second in the benchmark. The context is immutable once built, so sharing it is safe."""

from __future__ import annotations

import functools
import ssl


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()
