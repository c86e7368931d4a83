"""Reading a request body at the edge: its type and size checked before it is parsed, as JSON or as a form."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

from producer.errors import InvalidRequestError, MalformedRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from producer.settings import Settings

__all__ = ["json_object", "multipart_route", "page_cursor", "read_limited"]


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


def page_cursor(cursor: str | None) -> float | None:
    """A listing's `?cursor=` (a `next_cursor` it answered before) as the creation time to page on from."""
    if cursor is None:
        return None
    try:
        return float(cursor)
    except ValueError as e:
        raise InvalidRequestError("cursor: not a cursor from next_cursor", [("cursor", "invalid")]) from e


def multipart_route(limit: Callable[[Settings], int]) -> type[APIRoute]:
    """A route class for endpoints whose parameters are a multipart form (FastAPI's UploadFile/Form parse it).

    Before FastAPI parses the form, the body's type (multipart/form-data, else 415) and size (at most
    `limit(settings)` bytes, else 413, by its Content-Length or while it streams in) are checked, and refused as
    problems like every other error. Routes without a body are left alone.
    """

    class MultipartRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            parse_and_run = super().get_route_handler()
            if self.body_field is None:
                return parse_and_run

            async def checked(request: Request) -> Response:
                if media_type(request) != "multipart/form-data":
                    raise UnsupportedMediaTypeError(
                        f"send multipart/form-data, not {media_type(request) or 'no content type'}")
                body = await read_limited(request, limit(request.app.state.settings))
                return await parse_and_run(Request(request.scope, _replay(body, request.receive)))

            return checked

    return MultipartRoute


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands out the body already read, then the client's own (its disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
