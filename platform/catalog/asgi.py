"""The upload size limit at the ASGI edge.

Django's ASGI handler reads a request's whole body into a temporary file before any view
(or upload handler) runs, so under Daphne a 50 GB upload would land on the web server's
disk before `catalog.uploads` could refuse it. This wrapper counts the body of an upload
request as it arrives and answers 413 the moment it passes ROLLYARD_MAX_UPLOAD_BYTES (plus
the multipart framing), or at once when Content-Length already says so.
"""

import json

from django.conf import settings

from catalog.uploads import MULTIPART_OVERHEAD_BYTES, UploadTooLarge

# POSTs to these paths carry dataset files (the API and the upload page).
UPLOAD_PATHS = frozenset({"/api/datasets/", "/datasets/"})


class _BodyTooLarge(Exception):
    pass


class UploadSizeLimit:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            return await self.app(scope, receive, send)
        limit = settings.ROLLYARD_MAX_UPLOAD_BYTES
        allowed = limit + MULTIPART_OVERHEAD_BYTES
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > allowed:
            return await _refuse(send, limit)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > allowed:
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _BodyTooLarge:
            # Raised while Django was still reading the body: nothing was sent yet.
            await _refuse(send, limit)


async def _refuse(send, limit: int) -> None:
    body = json.dumps(
        {"error": {"code": "too_large", "message": str(UploadTooLarge(limit)), "fields": {}, "limit_bytes": limit}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
