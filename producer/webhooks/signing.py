"""Standard Webhooks signatures (https://www.standardwebhooks.com): `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed by the base64-decoded part of a tenant's
`whsec_…` secret. The secret never leaves this module in any form but the signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["SECRET_PREFIX", "sign", "signed_headers", "webhook_id"]

SECRET_PREFIX = "whsec_"


def webhook_id(job_id: str, outbox_entry_id: str) -> str:
    """The id of one event's message, the same on every attempt (receivers deduplicate by it); made from the outbox
    entry, so a relay that reads an entry twice sends the same message."""
    return f"msg_{job_id}_{outbox_entry_id.replace('-', '_')}"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body)}
