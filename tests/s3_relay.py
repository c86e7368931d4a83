"""A relay in front of a real S3 server (moto's) that can act as other S3-compatible servers do.

Strict: as strict as the servers that predate AWS's flexible checksums (Backblaze B2, GCS's XML API, older MinIO
and Ceph): it refuses a request that carries a CRC checksum header, a checksum trailer or aws-chunked encoding, and
a multi-object delete without Content-MD5. Stalling: it holds every upload (PUT) for a while before relaying it.
A fake of third-party behaviour we cannot run here; the objects live in the real server."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["S3Relay"]

_REFUSED_PREFIXES = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm", "x-amz-trailer", "x-amz-decoded-content")


class S3Relay:
    """Listens on a free port; `refused` lists what a strict relay turned away (method, path, reason); uploads wait
    `put_hold_s` seconds (set it at any time) before they are relayed."""

    def __init__(self, target_url: str, strict: bool = False) -> None:
        self.strict, self.put_hold_s = strict, 0.0
        self.refused: list[tuple[str, str, str]] = []
        target = urlsplit(target_url)
        handler = type("Handler", (_Relay,), {"target": (target.hostname, target.port), "relay": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Relay(BaseHTTPRequestHandler):
    target: tuple[str, int]
    relay: S3Relay
    protocol_version = "HTTP/1.1"

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "PUT":
            time.sleep(self.relay.put_hold_s)
        if self.relay.strict and (reason := self._refusal()):
            self.relay.refused.append((self.command, self.path, reason))
            self._answer(400, {"Content-Type": "application/xml"},
                         f"<Error><Code>InvalidArgument</Code><Message>{reason}</Message></Error>".encode())
            return
        upstream = http.client.HTTPConnection(*self.target, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self._answer(response.status, dict(response.getheaders()), response.read())
        finally:
            upstream.close()

    def _refusal(self) -> str | None:
        names = [name.lower() for name in self.headers]
        if found := [n for n in names if n.startswith(_REFUSED_PREFIXES)]:
            return f"Unsupported header '{found[0]}' received for this API call."
        if "aws-chunked" in self.headers.get("Content-Encoding", "") or "chunked" in self.headers.get(
                "Transfer-Encoding", ""):
            return "chunked uploads are not supported"
        if self.command == "POST" and "delete" in urlsplit(self.path).query and "content-md5" not in names:
            return "Missing required header for this request: Content-MD5"
        return None

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                self.send_header(name, value)
        if self.command == "HEAD":  # the object's length, and no body
            self.send_header("Content-Length", headers.get("Content-Length", headers.get("content-length", "0")))
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    def log_message(self, format: str, *args: object) -> None:
        pass
