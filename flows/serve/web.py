"""The HTTP side of the service: the token, body limits, images out of a request, errors as JSON.

Bad input is the client's error (4xx with one line saying what and how to fix it), never the
server's: this module turns every way a request can be wrong into an :class:`HTTPProblem`
before any image reaches a model. Plain Starlette (what Ray Serve hands a deployment), no
Ray, so it is tested on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

TOKEN_ENV = "MRKD_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
MULTIPART = "multipart/form-data"
FILE_FIELD = "file"
MAX_FILES = 1000  # parts of one multipart request


class HTTPProblem(Exception):
    """A request the service refuses: status code, one-line message, extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": self.message, **self.extra}, status_code=self.status, headers=headers)


def token_digest(token: str) -> str:
    """What the service keeps of a token: its sha256 (hex), never the token itself."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def check_token(token: str, where: str) -> str:
    """``token`` stripped; a ``ValueError`` naming ``where`` when it is too short to be a secret."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{where}: the token must have at least {MIN_TOKEN_CHARS} characters (e.g. "
                         "`openssl rand -hex 32`)")
    return token


def env_token_digest() -> str | None:
    """The digest of ``MRKD_SERVE_TOKEN`` in this process's environment (a KubeRay Secret), or None."""
    token = os.environ.get(TOKEN_ENV)
    return token_digest(check_token(token, TOKEN_ENV)) if token else None


def authorize(headers: Headers, digest: str | None) -> None:
    """Refuse (401) a request without ``Authorization: Bearer <token>`` when the service has a token."""
    if digest is None:
        return
    scheme, _, presented = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise HTTPProblem(401, "this service requires a token: send the header 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(token_digest(presented), digest):
        raise HTTPProblem(401, "the token is not this service's")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    mb = limit / 2**20
    too_large = HTTPProblem(413, f"the body is over the service's limit of {mb:g} MB (--max-body-mb): send "
                                 "smaller images, or fewer per request")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def image_parts(headers: Headers, body: bytes) -> list[tuple[str | None, bytes]]:
    """(file name or None, encoded image) of each image a request carries.

    A body of content type ``multipart/form-data`` gives its ``file`` parts in order (other
    fields are refused, so a misspelt field name is not silently dropped); any other body
    is one image, decoded by its content whatever the declared type.
    """
    from starlette.formparsers import MultiPartException, MultiPartParser

    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != MULTIPART:
        if not body:
            raise HTTPProblem(400, "the body is empty: send one image (Content-Type image/png, image/jpeg, image/bmp "
                                   "or image/tiff) or multipart/form-data with 'file' parts")
        return [(None, body)]
    try:
        form = await MultiPartParser(headers, _once(body), max_files=MAX_FILES, max_fields=MAX_FILES).parse()
    except MultiPartException as exc:
        raise HTTPProblem(400, f"unreadable multipart/form-data body ({exc.message})") from None
    parts: list[tuple[str | None, bytes]] = []
    try:
        for field, value in form.multi_items():
            if field != FILE_FIELD or not isinstance(value, UploadFile):
                raise HTTPProblem(400, f"multipart field {field!r}: only '{FILE_FIELD}' parts holding images are "
                                       f"accepted (curl -F '{FILE_FIELD}=@part.png')")
            parts.append((value.filename or None, await value.read()))
    finally:
        await form.close()
    if not parts:
        raise HTTPProblem(400, f"multipart/form-data without a '{FILE_FIELD}' part: send at least one image")
    return parts


__all__ = ["HTTPProblem", "MIN_TOKEN_CHARS", "TOKEN_ENV", "authorize", "check_token", "env_token_digest",
           "image_parts", "read_body", "token_digest"]
