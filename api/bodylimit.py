"""A ceiling on request bodies: a job submission is a few kilobytes of JSON, so a body of
megabytes is refused (413) before it is read whole into memory. Uploads have their own limit
(``CSSL_MAX_UPLOAD_BYTES``) and stream to disk, so their path is left alone."""

from __future__ import annotations

import json

from api.problems import PROBLEM_JSON

MAX_JSON_BODY = 1024 * 1024
UNLIMITED_PREFIXES = ("/v1/datasets/uploads",)


class BodyLimit:
    def __init__(self, app, max_bytes: int = MAX_JSON_BODY, unlimited: tuple[str, ...] = UNLIMITED_PREFIXES):
        self.app, self.max_bytes, self.unlimited = app, max_bytes, unlimited

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(self.unlimited):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        received, started, refused = 0, False, False

        async def counted_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not refused:
                    # A chunked body with no length, or one that lied: answer now and tell the
                    # app the client went away, so that it stops reading and answers no one.
                    refused = True
                    if not started:
                        await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, tracked_send)

    async def _refuse(self, scope, send) -> None:
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Content Too Large",
                "status": 413,
                "detail": f"request bodies are limited to {self.max_bytes} bytes; a job's config is a few kilobytes "
                "(data sets go to POST /v1/datasets/uploads)",
                "instance": scope["path"],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
