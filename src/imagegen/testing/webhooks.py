"""A webhook receiver for tests: an ASGI app that verifies each request's Standard Webhooks
signature and records what it received — to test your integration, or ours, over real
sockets (needs ``imagegen[emulators,webhooks]``)::

    from imagegen.testing.webhooks import WebhookReceiver

    receiver = WebhookReceiver()
    with receiver.serve() as url:          # http://127.0.0.1:<port>/hook
        ...                                # register url with its secret: receiver.secret = …
        event = receiver.wait_for("generation.succeeded")

``fail_next(n, status)`` answers the next ``n`` requests with ``status`` (to exercise retries).
A request whose signature does not verify is answered 401 and kept in ``rejected``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs


@attrs.frozen
class Received:
    webhook_id: str
    type: str
    payload: dict[str, Any]
    headers: dict[str, str]


class WebhookReceiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret  # set it once the endpoint is registered (the secret comes back)
        self.received: list[Received] = []  # verified, answered 2xx
        self.attempts: list[str] = []  # webhook-id of every request, in order
        self.rejected: list[dict[str, str]] = []  # headers of requests that did not verify
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    def app(self) -> Any:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            with self._changed:
                self.attempts.append(headers.get("webhook-id", ""))
                self._changed.notify_all()
                if self.secret is None:
                    return Response(status_code=503)
                try:
                    payload = Webhook(self.secret).verify(body, headers)
                except WebhookVerificationError:
                    self.rejected.append(headers)
                    return Response(status_code=401)
                if self._failures:
                    return Response(status_code=self._failures.pop(0))
                self.received.append(
                    Received(headers["webhook-id"], payload["type"], payload, headers)
                )
                self._changed.notify_all()
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve on loopback until the block ends; yields the hook's URL."""
        from imagegen.testing.emulators import serve

        with serve(self.app(), host, port) as base:
            yield f"{base}/hook"

    def wait_for(self, event_type: str, count: int = 1, timeout: float = 15.0) -> list[Received]:
        """Block until ``count`` verified deliveries of ``event_type`` arrived."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self.received if r.type == event_type]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(found)} of {count} {event_type} webhooks after {timeout}s "
                        f"(received {[r.type for r in self.received]}, "
                        f"{len(self.rejected)} rejected)"
                    )
                self._changed.wait(left)

    def of(self, event_type: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.type == event_type]
