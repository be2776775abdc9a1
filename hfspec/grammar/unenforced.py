"""JSON Schema keywords xgrammar's mask does not enforce (being written; see issue 3)."""

from __future__ import annotations


def unenforced_keywords(schema: dict) -> list[tuple[str, str]]:
    """(JSON-pointer path, keyword) of every keyword in ``schema`` the token mask cannot enforce."""
    return []
