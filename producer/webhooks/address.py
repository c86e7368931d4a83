"""Where a webhook may go: its host must resolve to public addresses only (no SSRF into the deployment), unless
ECHOFORGE_WEBHOOK_ALLOW_PRIVATE. Checked when a job is submitted and again at every attempt (DNS may change), and
an attempt connects to the very address it checked (a second lookup could answer otherwise)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

import httpx

from producer.errors import WebhookAddressError, WebhookAddressRefusedError

__all__ = ["WebhookTarget", "check_webhook_url", "refusal", "webhook_target"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services (most are link-local or private anyway; named so the rule does not depend on that).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))


def refusal(address: IPAddress) -> str | None:
    """Why a webhook may not go to this address, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            return refusal(embedded)
    checks = ((address in METADATA_ADDRESSES, "a metadata"), (address.is_loopback, "a loopback"),
              (address.is_link_local, "a link-local"), (address.is_multicast, "a multicast"),
              (address.is_unspecified, "an unspecified"), (address.is_reserved, "a reserved"),
              (address.is_private, "a private"), (not address.is_global, "a non-public"))
    return next((f"{what} address" for hit, what in checks if hit), None)


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise WebhookAddressError(f"webhook_url: its host {host} does not resolve ({type(e).__name__})") from e
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found))


def _public_addresses(url: httpx.URL) -> list[IPAddress]:
    """Every address the URL's host resolves to, each of them public; else WebhookAddressRefusedError."""
    addresses = _resolve(url.host, url.port or (443 if url.scheme == "https" else 80))
    for address in addresses:
        reason = refusal(address)
        if reason:  # the address itself is not named: callers must not learn the deployment's internal layout
            raise WebhookAddressRefusedError(
                f"webhook_url: its host {url.host} resolves to {reason}; webhooks go only to public addresses")
    return addresses


def check_webhook_url(url: str, allow_private: bool) -> None:
    """At submit: refuse a URL that resolves to a private address (WebhookAddressError names webhook_url)."""
    if not allow_private:
        _public_addresses(httpx.URL(url))


@dataclass(frozen=True)
class WebhookTarget:
    """What one attempt sends to: the URL (its host replaced by the checked address), and the Host header and TLS
    server name of the original host."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def webhook_target(url: str, allow_private: bool) -> WebhookTarget:
    """At each attempt: resolve and check again, then pin the connection to the first checked address."""
    parsed = httpx.URL(url)
    if allow_private:
        return WebhookTarget(parsed)
    address = _public_addresses(parsed)[0]
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return WebhookTarget(parsed.copy_with(host=str(address)), {"Host": parsed.netloc.decode("ascii")}, extensions)
