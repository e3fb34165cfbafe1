"""Refuse request bodies over MAX_UPLOAD_MB before they reach the disk.

Starlette spools a multipart upload to a temporary file before the route runs, so the limit in
`save_stream` alone would let a huge upload fill the disk first. A declared Content-Length over
the limit is answered 413 at once; a chunked body is counted as it streams and cut off.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whisper_api.api.errors import error_body
from whisper_api.errors import MediaTooLargeError

FORM_SLACK_BYTES = 1 << 20  # multipart boundaries and the small form fields around the file


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.limit = app, max_bytes + FORM_SLACK_BYTES
        self.message = f"the upload exceeds {max_bytes // (1024 * 1024)} MB (MAX_UPLOAD_MB)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            response = error_body(413, MediaTooLargeError.code, self.message,
                                  Connection="close")
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            # An HTTPException, so that FastAPI's own form parsing (the OpenAI routes) passes
            # it on as the 413 it is: any other exception there becomes a 400.
            if received > self.limit:
                raise HTTPException(413, self.message)
            return message

        return counted
