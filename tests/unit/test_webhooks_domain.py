"""The webhook domain: the address policy (property tests over IP ranges), URL checks, the
backoff schedule, delivery states and event-type subscriptions."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegen.domain.errors import InvalidParameter
from imagegen.domain.webhooks import (
    DEFAULT_SCHEDULE,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    backoff,
    check_addresses,
    check_event_types,
    check_url,
    is_public,
    redact_url,
)

NOT_PUBLIC = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "192.0.2.0/24",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "::/128",
    "2001:db8::/32",
]


def _in(network: str) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    net = ipaddress.ip_network(network)
    return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])


@given(st.sampled_from(NOT_PUBLIC).flatmap(_in))
def test_no_address_of_a_private_or_reserved_range_is_public(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert not is_public(address)
    with pytest.raises(InvalidParameter):
        check_addresses("h", [str(address)], allow_private=False)
    check_addresses("h", [str(address)], allow_private=True)


@given(st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16"]).flatmap(_in))
def test_an_ipv4_mapped_ipv6_address_is_judged_as_its_ipv4(
    address: ipaddress.IPv4Address,
) -> None:
    assert not is_public(ipaddress.IPv6Address(f"::ffff:{address}"))


@given(st.ip_addresses(v=4))
def test_public_is_global_and_unicast(address: ipaddress.IPv4Address) -> None:
    if is_public(address):
        assert address.is_global
        assert not address.is_multicast
        assert not address.is_private


def test_one_private_address_among_public_ones_refuses_the_host() -> None:
    check_addresses(
        "example.com", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"], False
    )
    with pytest.raises(InvalidParameter):
        check_addresses("rebind.example", ["93.184.215.14", "127.0.0.1"], False)
    with pytest.raises(InvalidParameter):
        check_addresses("nowhere.example", [], True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://a.example/",
        "https://",
        "https://u:p@a.example/",
        "https://a.example:99999/",
        "x" * 3000,
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidParameter):
        check_url(url)


def test_the_query_is_redacted() -> None:
    assert redact_url("https://a.example/in?token=s3cret") == "https://a.example/in?…"
    assert "s3cret" not in redact_url("https://a.example/in?token=s3cret#x")


def test_the_backoff_schedule_then_none() -> None:
    assert [backoff(n, DEFAULT_SCHEDULE) for n in range(1, 4)] == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
    ]
    assert backoff(len(DEFAULT_SCHEDULE) + 1, DEFAULT_SCHEDULE) is None
    for _ in range(50):
        delay = backoff(2, DEFAULT_SCHEDULE, jitter=0.1)
        assert delay is not None
        assert timedelta(minutes=4.5) <= delay <= timedelta(minutes=5.5)


def test_a_delivery_fails_until_dead_and_is_redelivered() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    schedule = (timedelta(seconds=1), timedelta(seconds=2))
    d = WebhookDelivery(
        "whd_1", "whe_1", "t", "evt_1", "generation.succeeded", "{}",
        DeliveryStatus.PENDING, 0, now, now, now,
    )  # fmt: skip
    d.failed(500, "HTTP 500", now, schedule)
    assert (d.status, d.attempts, d.next_attempt_at) == (
        DeliveryStatus.FAILED, 1, now + timedelta(seconds=1)
    )  # fmt: skip
    d.failed(None, "timeout", now, schedule)
    d.failed(502, "HTTP 502", now, schedule)
    assert (d.status, d.attempts, d.next_attempt_at) == (DeliveryStatus.DEAD, 3, None)
    d.redeliver(now)
    assert (d.status, d.attempts) == (DeliveryStatus.PENDING, 0)
    d.succeeded(200, now)
    assert (d.status, d.attempts, d.last_error) == (DeliveryStatus.SUCCEEDED, 1, None)


def test_subscriptions() -> None:
    assert check_event_types(["generation.succeeded", " generation.succeeded", "*"]) == (
        "generation.succeeded",
        "*",
    )
    with pytest.raises(InvalidParameter):
        check_event_types([])
    with pytest.raises(InvalidParameter):
        check_event_types(["usage.recorded"])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    endpoint = WebhookEndpoint("whe_1", "t", "https://a.example/", ("*",), "whsec_x", True, now)
    assert endpoint.wants("asset.created")
    assert "whsec_x" not in repr(endpoint)
    endpoint.enabled = False
    assert not endpoint.wants("asset.created")
