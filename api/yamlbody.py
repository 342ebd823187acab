"""YAML request bodies: a route of a router with ``route_class=YamlBodyRoute`` takes the same
document as YAML (``Content-Type: application/yaml``, ``application/x-yaml`` or ``text/yaml``)
as it takes as JSON.

The YAML is read with :func:`cssl_core.configfile.load_yaml` (safe_load, JSON's values only,
no aliases) and handed on as the JSON it amounts to, so the route's one pydantic model checks
both and a bad field is the same 422. :class:`api.bodylimit.BodyLimit` has counted the YAML's
bytes before it gets here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from api.problems import field_error, invalid
from cssl_core.configfile import YamlSyntaxError, load_yaml
from cssl_core.errors import ConfigError

YAML_MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


def yaml_request_body(schema_ref: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that takes its body model as YAML too: documented under
    application/yaml (RFC 9512), its registered name; the older names work as well."""
    return {"requestBody": {"content": {"application/yaml": {"schema": {"$ref": schema_ref}}}}}


class YamlBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle  # a route without a body reads none, YAML or not

        async def handle_yaml_too(request: Request) -> Response:
            media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
            if media_type in YAML_MEDIA_TYPES:
                request = _AsJson(request, await _json_of_yaml(await request.body()))
            return await handle(request)

        return handle_yaml_too


async def _json_of_yaml(body: bytes) -> bytes:
    if not body:
        return body  # no body at all: the same answer as an empty JSON body
    try:
        # A megabyte of YAML takes a while to parse; not on the event loop.
        return await run_in_threadpool(_yaml_to_json, body)
    except YamlSyntaxError as exc:
        raise invalid([field_error(["body"], f"YAML syntax error: {exc}", "yaml_invalid")]) from None
    except ConfigError as exc:
        raise invalid([field_error(["body"], str(exc), "yaml_invalid")]) from None


def _yaml_to_json(body: bytes) -> bytes:
    document = load_yaml(body)
    try:
        return json.dumps(document).encode()
    except RecursionError:  # a few hundred levels can be too many for the encoder's stack
        raise YamlSyntaxError("nested too deeply") from None


class _AsJson(Request):
    """The request with its YAML body replaced by the same document in JSON."""

    def __init__(self, request: Request, body: bytes):
        super().__init__(request.scope, request.receive)
        self._json_body = body
        kept = [
            (name, value) for name, value in request.headers.raw if name not in (b"content-type", b"content-length")
        ]
        self._json_headers = Headers(
            raw=[*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        )

    @property
    def headers(self) -> Headers:
        return self._json_headers

    async def body(self) -> bytes:
        return self._json_body
