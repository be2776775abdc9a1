"""KV-cache rollback. HF's ``Cache.crop`` takes a negative count; the engine thinks in absolute lengths."""

from __future__ import annotations

from transformers import Cache


def cache_length(cache: Cache) -> int:
    return int(cache.get_seq_length())


def crop_to(cache: Cache, length: int) -> None:
    """Drop every slot at index >= ``length`` (no-op when the cache is already that short)."""
    extra = cache_length(cache) - length
    if extra > 0:
        cache.crop(-extra)
