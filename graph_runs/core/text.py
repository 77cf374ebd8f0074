"""Bounding text that comes from outside before it is stored, logged or shown.

An error message from the execution API, an exception's text or a field of a row another
application wrote can be megabytes long, or carry newlines and terminal escapes that fake a
line of ``schedules describe``. What graph-runs keeps of such text is bounded in length,
with every control character escaped, so one line stays one line.
"""

MAX_ERROR_MESSAGE = 2000
MAX_ERROR_CODE = 100


def escaped(text: str) -> str:
    r"""``text`` with control characters and lone surrogates written as escapes.

    Newlines, ANSI escapes and NUL become ``\n``, ``\x1b`` and ``\x00``. A backslash is
    left as it is, so escaping twice (an outcome passed between ops and rebuilt) changes
    nothing more.
    """
    out = []
    for char in text:
        point = ord(char)
        if point < 0x20 or point == 0x7F or 0x80 <= point < 0xA0 or 0xD800 <= point < 0xE000:
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def bounded(text: object, limit: int = MAX_ERROR_MESSAGE) -> str | None:
    """Escaped ``text`` cut to ``limit`` characters, saying how much was cut; None stays None."""
    if text is None:
        return None
    clean = escaped(text if isinstance(text, str) else str(text))
    if len(clean) <= limit:
        return clean
    note = f"... ({len(clean) - limit} more characters)"
    return clean[: max(0, limit - len(note))] + note
