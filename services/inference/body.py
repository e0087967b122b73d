"""Reading request bodies within limits, and finding the image in them.

The size limit is enforced while streaming, so an oversized or lying upload never sits in
memory (uvicorn discards whatever the app left unread, so the client still gets the 413).
Multipart bodies are parsed with Starlette's parser from the bytes already read, so the limit
covers them too and a malformed body becomes a 400 of our own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from shared.errors import (
    EmptyBody,
    MalformedMultipart,
    MissingImage,
    PayloadTooLarge,
    UnsupportedMediaType,
)

RAW_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "application/octet-stream"})
"""Raw bodies are sniffed (JPEG or PNG); octet-stream is what generic clients send."""
MULTIPART = "multipart/form-data"
IMAGE_FIELD = "image"


def media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) more than `limit` bytes, declared or actual."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image(request: Request, limit: int) -> bytes:
    """The encoded image of a /v1/segment request: the raw body or the `image` file part."""
    kind = media_type(request.headers)
    if kind not in RAW_IMAGE_TYPES and kind != MULTIPART:
        raise UnsupportedMediaType(
            f"content type {kind or '(none)'!r} is not accepted; send image/jpeg, image/png "
            f"or multipart/form-data with an `{IMAGE_FIELD}` file")
    body = await read_body(request, limit)
    if kind == MULTIPART:
        body = await _image_part(request.headers, body)
    if not body:
        raise EmptyBody("the image is empty (0 bytes)")
    return body


async def parse_multipart(headers: Headers, body: bytes, *, max_files: int,
                          max_fields: int) -> FormData:
    """Starlette's multipart parser over bytes already read within the size limit."""
    async def once() -> AsyncIterator[bytes]:
        yield body

    if not body:
        raise EmptyBody("the multipart body is empty")
    parser = MultiPartParser(headers, once(),  # type: ignore[arg-type]
                             max_files=max_files, max_fields=max_fields)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise MalformedMultipart(str(exc)) from None


async def _image_part(headers: Headers, body: bytes) -> bytes:
    form = await parse_multipart(headers, body, max_files=8, max_fields=32)
    try:
        part = form.get(IMAGE_FIELD)
        if not isinstance(part, UploadFile):
            raise MissingImage(f"send the image as a file part named `{IMAGE_FIELD}` "
                               f"(e.g. curl -F {IMAGE_FIELD}=@cat.jpg)")
        return await part.read()
    finally:
        await form.close()
