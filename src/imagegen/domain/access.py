"""Tenants, API keys, roles and what each role may do.

A **tenant** owns everything (generations, assets, credits); every read and write is scoped
to one. An **API key** belongs to one tenant and carries one **role**; the role's
permissions (``PERMISSIONS``) are checked by the application before any use case runs.

An API key is ``ig_live_<key id>_<secret>``: the key id (a ULID) is public (it is how the key is
found and how it is shown in lists), the secret is 32 random bytes. Only the SHA-256 of the
whole key is stored: the key has 256 bits of entropy, so a fast hash is as safe as a slow
one (no dictionary or brute force can reach it), and it costs microseconds on every
request. A leaked table gives no usable key.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from datetime import datetime, timedelta

import attrs

from imagegen.domain.errors import AuthenticationRequired, InvalidParameter

KEY_PREFIX = "ig_live_"
KEY_ID_PREFIX = "key_"
SECRET_BYTES = 32
# last_used_at is written at most this often per key: not one write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Role(enum.StrEnum):
    ADMIN = "admin"
    CREATOR = "creator"
    REVIEWER = "reviewer"
    VIEWER = "viewer"


class Permission(enum.StrEnum):
    MODELS_READ = "models:read"  # the catalog with prices, and estimates
    GENERATIONS_READ = "generations:read"  # a generation, the history, image bytes
    GENERATIONS_CREATE = "generations:create"  # generate and edit: spends credits
    ASSETS_READ = "assets:read"  # assets and their bytes
    ASSETS_CREATE = "assets:create"  # save a generated image to the DAM (or tag it again)
    CREDITS_READ = "credits:read"  # the balance
    CREDITS_GRANT = "credits:grant"  # add credits
    WEBHOOKS_MANAGE = "webhooks:manage"  # webhook endpoints, their delivery log, redelivery
    USAGE_READ = "usage:read"  # the tenant's usage report: who spent what, revenue and margin
    KEYS_MANAGE = "keys:manage"  # the tenant's API keys: create, list, rotate, revoke (admin only)


_READ = frozenset(
    {
        Permission.MODELS_READ,
        Permission.GENERATIONS_READ,
        Permission.ASSETS_READ,
        Permission.CREDITS_READ,
    }
)

# ``usage:read`` is not one of the everyday reads: the report shows every user's and
# project's spend, and the provider cost and margin behind the prices. Admins and reviewers
# (the finance and approval side) see it; creators and viewers see their balance only.
PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.CREATOR: _READ | {Permission.GENERATIONS_CREATE, Permission.ASSETS_CREATE},
    Role.REVIEWER: _READ | {Permission.ASSETS_CREATE, Permission.USAGE_READ},
    Role.VIEWER: _READ,
}


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidParameter(f"Role {value!r} is not one of {allowed}.", role=value) from None


@attrs.frozen
class Principal:
    """Who is calling: a key of a tenant, with a role. Every guarded call takes one."""

    tenant_id: str
    key_id: str
    role: Role

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]


@attrs.define
class Tenant:
    id: str
    name: str
    created_at: datetime


def check_tenant_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 100 or any(not c.isprintable() for c in name):
        raise InvalidParameter("A tenant name is 1-100 printable characters.")
    return name


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def format_key(key_id: str, secret: str) -> str:
    """``ig_live_<the key id without "key_">_<secret>``."""
    return f"{KEY_PREFIX}{key_id.removeprefix(KEY_ID_PREFIX)}_{secret}"


def key_id_of(key: str) -> str:
    """The key id inside a presented key; ``AuthenticationRequired`` if it is not one of
    ours (the message never repeats the key)."""
    public, sep, secret = key.removeprefix(KEY_PREFIX).partition("_")
    if not (key.startswith(KEY_PREFIX) and public and sep and secret and public.isalnum()):
        raise AuthenticationRequired("The API key is not valid.")
    return KEY_ID_PREFIX + public


@attrs.define
class ApiKey:
    id: str
    tenant_id: str
    role: Role
    name: str
    key_hash: str = attrs.field(repr=False)
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    replaces: str | None = None  # the key this one rotated

    @property
    def public_prefix(self) -> str:
        """What lists show, and what a user can match in their configuration."""
        return f"{KEY_PREFIX}{self.id.removeprefix(KEY_ID_PREFIX)}"

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(key))

    def revoke(self, now: datetime) -> None:
        if self.revoked_at is None:
            self.revoked_at = now

    def needs_touch(self, now: datetime) -> bool:
        """Whether ``last_used_at`` is stale enough to be written again."""
        return self.last_used_at is None or now - self.last_used_at >= LAST_USED_RESOLUTION
