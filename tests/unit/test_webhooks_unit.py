"""Webhooks without I/O: signatures as the `standardwebhooks` library (which we did not write) verifies them, the
address rule, the retry schedule, the request's webhook fields."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from producer.request import NarrationRequest
from producer.webhooks.address import refusal
from producer.webhooks.delivery import RETRY_STEPS, retry_delays
from producer.webhooks.signing import sign, signed_headers, webhook_id

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
BODY = json.dumps({"type": "narration.succeeded", "timestamp": "2025-01-01T00:00:00.000+00:00",
                   "data": {"id": "0" * 32, "state": "succeeded", "note": "ünïcode"}}).encode()


def test_our_signature_verifies_with_the_standardwebhooks_library() -> None:
    message_id = webhook_id("a" * 32, "1700000000000-0")
    headers = signed_headers(SECRET, message_id, int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers)["data"]["note"] == "ünïcode"
    when = datetime.fromtimestamp(int(headers["webhook-timestamp"]), UTC)
    assert headers["webhook-signature"] == Webhook(SECRET).sign(message_id, when, BODY.decode())


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "secret"])
def test_any_change_fails_verification(tamper: str) -> None:
    now = int(time.time())
    headers = signed_headers(SECRET, "msg_x", now, BODY)
    body, secret = BODY, SECRET
    if tamper == "body":
        body = BODY.replace(b"succeeded", b"failed")
    elif tamper == "id":
        headers["webhook-id"] = "msg_y"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_the_signature_is_v1_base64_hmac_sha256() -> None:
    signature = sign(SECRET, "msg_1", 1700000000, b"{}")
    assert signature.startswith("v1,") and len(base64.b64decode(signature[3:])) == 32
    assert webhook_id("b" * 32, "1-0") == webhook_id("b" * 32, "1-0") != webhook_id("b" * 32, "1-1")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
                                     "169.254.1.1", "100.100.100.200", "100.64.0.1", "0.0.0.0", "224.0.0.1",
                                     "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254",
                                     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:a00:1::1", "ff02::1"])
def test_loopback_private_link_local_reserved_multicast_and_metadata_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_retries_back_off_exponentially_for_over_a_day() -> None:
    delays = retry_delays(5.0)
    assert delays[:3] == [5.0, 30.0, 120.0] and delays == sorted(delays)
    assert sum(delays) >= 24 * 3600 and len(delays) == len(RETRY_STEPS)
    assert sum(retry_delays(0.2)) == pytest.approx(sum(delays) / 25)


def test_webhook_fields_of_a_request() -> None:
    plain = NarrationRequest.parse({"text": "Hi."})
    assert plain.webhook_url is None and "progress" not in plain.webhook_events
    asked = NarrationRequest.parse({"text": "Hi.", "webhook_url": "https://hooks.example.com/a?b=c",
                                    "webhook_events": ["progress", "succeeded", "progress"]})
    assert asked.webhook_events == ["progress", "succeeded"] and NarrationRequest.parse(asked.model_dump()) == asked
