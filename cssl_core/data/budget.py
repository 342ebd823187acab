"""A limit on the memory a data set's decoded images may take, checked before they are decoded.

Every image is held decoded in memory (``N x 3 x H x W`` bytes), so a large folder or a large
``image_size`` could take all of a machine's memory. A process that runs other people's jobs
sets a limit around its work with :func:`decoded_bytes_limit`; without one nothing is checked.
The same limit (or, without one, half the machine's memory: :func:`memory_limit`) decides
whether ``data_mode auto`` streams an image folder rather than decode it
(:mod:`cssl_core.data.stream`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from cssl_core.errors import DataError

# (limit in bytes, what the user may change to raise it)
_LIMIT: ContextVar[tuple[int, str] | None] = ContextVar("decoded_bytes_limit", default=None)


@contextmanager
def decoded_bytes_limit(limit: int | None, setting: str = "the limit") -> Iterator[None]:
    """Within the block, loading a data set whose decoded images take more than ``limit`` bytes
    raises :class:`DataError` before decoding; ``setting`` names where the limit is set."""
    token = _LIMIT.set((limit, setting) if limit is not None else None)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def memory_limit() -> tuple[int, str]:
    """The decoded bytes a data set may take in memory and where that is set: the limit in
    effect, else half of this machine's physical memory."""
    current = _LIMIT.get()
    if current is not None:
        return current
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2, "half of this machine's memory"


def check_decoded_bytes(num_images: int, image_size: int, where: object) -> None:
    """Refuse ``num_images`` RGB images of ``image_size`` x ``image_size`` from ``where`` if their
    decoded size is over the limit in effect."""
    need = num_images * image_size * image_size * 3
    _check(need, f"{num_images:,} images of {image_size}x{image_size} take {need:,} bytes decoded in memory", where)


def check_cached_bytes(nbytes: int, where: object) -> None:
    """Refuse a cache entry of ``nbytes`` (the decoded arrays as stored) if it is over the limit."""
    _check(nbytes, f"the decoded images take {nbytes:,} bytes in memory", where)


def _check(need: int, what: str, where: object) -> None:
    current = _LIMIT.get()
    if current is None or need <= current[0]:
        return
    limit, setting = current
    raise DataError(
        f"{where}: {what}, more than the {limit:,} bytes allowed ({setting}); use fewer images or a "
        f"smaller image size, or raise {setting}"
    )
