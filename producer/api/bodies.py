"""Reading a request body at the edge: its type and size checked before it is parsed, as JSON or as a form."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from producer.errors import MalformedRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

__all__ = ["json_object", "read_limited"]


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes: by its Content-Length, or while
    streaming it in."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise PayloadTooLargeError(f"the body is over the limit of {limit} bytes")
    return bytes(body)


async def json_object(request: Request, limit: int) -> dict[str, Any]:
    """A JSON object body (application/json, at most `limit` bytes)."""
    if media_type(request) != "application/json":
        raise UnsupportedMediaTypeError(f"send application/json, not {media_type(request) or 'no content type'}")
    raw = await read_limited(request, limit)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedRequestError(f"the body is not valid UTF-8 JSON: {e}", [("body", "not JSON")]) from e
    if not isinstance(data, dict):
        raise MalformedRequestError(f"the body must be a JSON object, not {type(data).__name__}",
                                    [("body", "not an object")])
    return data
