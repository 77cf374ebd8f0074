"""Reading a request body no further than a cap, for the webhook and the management API."""

from starlette.requests import Request


async def body_within(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes: never read whole first.

    A declared length over the cap is refused before a byte is read; a chunked body is
    counted as it arrives.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
