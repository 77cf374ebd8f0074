"""Identifiers: a short type prefix and 128 random bits, readable in logs and the UI."""

import uuid


def new_id(prefix: str) -> str:
    """Return ``{prefix}_{32 hex digits}``."""
    return f"{prefix}_{uuid.uuid4().hex}"
