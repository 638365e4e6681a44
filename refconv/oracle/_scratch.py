"""Work arrays that outlive a call of the GEMM path.

Fresh memory costs a page fault per 4 KiB page on first touch (measured ≈ 3 µs per
page on the project's VM, so a call of the seed shape spent ≈ 12 ms of its ≈ 80 ms
faulting in ≈ 3,900 pages of buffers). The GEMM path therefore takes its chunk
buffers and tile arrays from an :class:`Arena` borrowed from a small process-wide
pool and returned after the call; at most :data:`KEEP_BYTES` stay allocated between
calls (larger arenas are dropped), and :func:`release` frees them all.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import numpy as np

KEEP_BYTES = 128 * 2**20  # kept between calls, all pooled arenas together


class Arena:
    """Named, growable byte buffers; ``array`` hands out typed views (contents undefined).

    Each name is one buffer: a caller must not use a name again while it still needs
    the array it got for it.

    >>> a = Arena()
    >>> x = a.array("x", (2, 3))
    >>> x.shape, x.dtype, a.nbytes
    ((2, 3), dtype('float64'), 48)
    """

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self._last: dict[str, tuple] = {}  # name -> (shape, dtype, view): the view asked for last, handed out again

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bufs.values())

    def array(self, name: str, shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
        last = self._last.get(name)
        if last is not None and last[0] == shape and last[1] is dtype:
            return last[2]  # (a GEMM path call asks for the same arrays again and again)
        size = math.prod(shape) * np.dtype(dtype).itemsize
        buf = self._bufs.get(name)
        if buf is None or buf.nbytes < size:
            buf = self._bufs[name] = np.empty(max(size, 8), dtype=np.uint8)
        view = buf[:size].view(dtype).reshape(shape)
        self._last[name] = (shape, dtype, view)
        return view


_free: dict[str, list[Arena]] = {}
_lock = threading.Lock()


@contextlib.contextmanager
def arena(role: str = "") -> Iterator[Arena]:
    """Borrow an arena of this ``role`` from the pool (a new one if none is free) for the duration of the block.

    Roles keep differently used arenas apart (a worker handed the caller's arena would
    find none of its buffers there and fault all of them in anew).

    >>> with arena("doc") as a:
    ...     a.array("buf", (4,)).size
    4
    """
    with _lock:
        free = _free.setdefault(role, [])
        a = free.pop() if free else Arena()
    try:
        yield a
    finally:
        with _lock:
            if a.nbytes + sum(f.nbytes for fs in _free.values() for f in fs) <= KEEP_BYTES:
                _free[role].append(a)


def release() -> None:
    """Free the pooled arenas (they are re-created on the next call)."""
    with _lock:
        _free.clear()
