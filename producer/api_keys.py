"""API keys: Bearer tokens bound to a tenant and scopes, stored only as a hash; and each tenant's webhook secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis

from producer import keys
from producer.errors import InvalidRequestError, JobNotFoundError, UnauthorizedError

__all__ = ["SCOPES", "ApiKey", "ApiKeyStore", "check_tenant"]

SCOPES = ("narrations:read", "narrations:write", "voices:read", "voices:write", "admin")
TOKEN_PREFIX = "ef_"
_TOKEN = re.compile(r"^ef_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise InvalidRequestError(f"tenant {tenant!r}: use 1-63 lowercase letters, digits, '-' or '_'",
                                  [("tenant", "invalid name")])
    return tenant


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant: str
    scopes: tuple[str, ...]
    created_at: float
    revoked_at: float | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def to_public(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "scopes": list(self.scopes), "created_at": self.created_at,
                "revoked_at": self.revoked_at}


class ApiKeyStore:
    """Keys in Redis: `ef_<id>.<secret>` is shown once at creation; Redis keeps only the secret's SHA-256 (the
    secret has 256 bits of entropy, so a plain hash cannot be brute-forced)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, tenant: str, scopes: list[str] | None = None) -> tuple[ApiKey, str]:
        """A new key for `tenant` (all scopes but admin by default) and its token, which is never stored."""
        check_tenant(tenant)
        wanted = tuple(dict.fromkeys(scopes or [s for s in SCOPES if s != "admin"]))
        unknown = [s for s in wanted if s not in SCOPES]
        if unknown:
            raise InvalidRequestError(f"unknown scope {unknown[0]!r}; scopes: {', '.join(SCOPES)}",
                                      [("scope", "unknown")])
        key = ApiKey(secrets.token_hex(8), tenant, wanted, time.time())
        secret = secrets.token_urlsafe(32)
        self.redis.hset(keys.api_key_key(key.id), mapping={
            "tenant": tenant, "scopes": ",".join(wanted), "secret_sha256": _digest(secret),
            "created_at": repr(key.created_at)})
        self.redis.zadd(keys.API_KEYS_INDEX, {key.id: key.created_at})
        self.webhook_secret(tenant)  # every tenant with a key has one
        return key, f"{TOKEN_PREFIX}{key.id}.{secret}"

    def verify(self, token: str) -> ApiKey:
        """The live key a Bearer token names; UnauthorizedError for anything else (checked on every request, so a
        revoked key is refused at once)."""
        match = _TOKEN.match(token)
        data: Any = self.redis.hgetall(keys.api_key_key(match.group(1))) if match else {}
        if not match or not data or not hmac.compare_digest(data[b"secret_sha256"].decode(), _digest(match.group(2))):
            raise UnauthorizedError("unknown API key")
        key = _key(match.group(1), data)
        if key.revoked_at is not None:
            raise UnauthorizedError(f"API key {key.id} was revoked")
        return key

    def get(self, key_id: str) -> ApiKey:
        data: Any = self.redis.hgetall(keys.api_key_key(key_id)) if re.fullmatch(r"[0-9a-f]{16}", key_id) else {}
        if not data:
            raise JobNotFoundError(f"no API key {key_id!r}")
        return _key(key_id, data)

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        ids: Any = self.redis.zrange(keys.API_KEYS_INDEX, 0, -1)
        found = [self.get(i.decode()) for i in ids if self.redis.exists(keys.api_key_key(i.decode()))]
        return [k for k in found if tenant is None or k.tenant == tenant]

    def revoke(self, key_id: str) -> ApiKey:
        self.get(key_id)
        self.redis.hsetnx(keys.api_key_key(key_id), "revoked_at", repr(time.time()))
        return self.get(key_id)

    def webhook_secret(self, tenant: str, rotate: bool = False) -> str:
        """The tenant's Standard Webhooks signing secret (`whsec_` + base64 of 32 random bytes), made on first use."""
        key = keys.tenant_webhook_secret_key(check_tenant(tenant))
        fresh = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        if rotate:
            self.redis.set(key, fresh)
        else:
            self.redis.set(key, fresh, nx=True)
        return str(self.redis.get(key).decode())  # type: ignore[union-attr]


def _key(key_id: str, data: dict[bytes, bytes]) -> ApiKey:
    revoked = data.get(b"revoked_at")
    return ApiKey(key_id, data[b"tenant"].decode(), tuple(filter(None, data[b"scopes"].decode().split(","))),
                  float(data[b"created_at"]), float(revoked) if revoked else None)
