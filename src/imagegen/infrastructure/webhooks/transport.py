"""Signed webhook requests over httpx, to public addresses only.

Every send resolves the host again and checks every address (a host that resolved to a
public address at registration may resolve to 127.0.0.1 now: DNS rebinding), then connects
to the address it checked — the URL's host is replaced by the IP, with the ``Host`` header
and the TLS server name (SNI and certificate check) kept the original host. Redirects are
not followed (a 3xx is a failed attempt).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from imagegen.application.webhook_ports import SendResult
from imagegen.domain.errors import InvalidParameter
from imagegen.domain.webhooks import check_addresses, check_url, redact_url

log = logging.getLogger("imagegen.webhooks")

USER_AGENT = "imagegen-webhooks/1"


class HttpWebhookTransport:
    def __init__(self, *, timeout_s: float = 10.0, allow_private: bool = False) -> None:
        self._timeout = timeout_s
        self._allow_private = allow_private
        self._client: httpx.AsyncClient | None = None

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return [host]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _pinned(self, url: str) -> tuple[httpx.URL, str]:
        """The URL with its host replaced by a checked address, and the original host."""
        check_url(url)
        parsed = httpx.URL(url)
        host = parsed.host
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self._resolve(host, port)
        check_addresses(host, addresses, self._allow_private)
        return parsed.copy_with(host=addresses[0]), host

    async def check_url(self, url: str) -> None:
        await self._pinned(url)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # No kept-alive connections: a connection is to a checked address and made for one
            # host's TLS name, never reused for another host at the same address. No proxies
            # from the environment (a proxy would reach what the address check refused).
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def send(self, url: str, secret: str, event_id: str, payload: str) -> SendResult:
        try:
            pinned, host = await self._pinned(url)
        except InvalidParameter as refused:
            return SendResult(None, f"refused: {refused.message}")
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": httpx.URL(url).netloc.decode("ascii"),
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(event_id, now, payload),
        }
        client = self._http()
        request = client.build_request("POST", pinned, headers=headers, content=payload.encode())
        if pinned.scheme == "https":
            request.extensions["sni_hostname"] = host
        try:
            async with asyncio.timeout(self._timeout):  # the whole attempt, not each read
                response = await client.send(request, stream=True)  # the body is never read
                await response.aclose()
        except (httpx.TimeoutException, TimeoutError):
            return SendResult(None, "timeout")
        except httpx.HTTPError as error:
            log.info("webhook to %s failed: %s", redact_url(url), type(error).__name__)
            return SendResult(None, f"connection error ({type(error).__name__})")
        if 200 <= response.status_code < 300:
            return SendResult(response.status_code)
        return SendResult(response.status_code, f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
