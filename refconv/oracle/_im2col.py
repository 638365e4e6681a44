"""Padding, strided window views and tiling shared by the oracle methods.

All functions take canonical NHWC inputs and HWIO weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..spec import ConvSpec
from . import _scratch

DEFAULT_WORKSPACE_BYTES = 256 * 2**20


def all_finite(a: np.ndarray | None) -> bool:
    """True for None or an array without NaN and ±inf (one pass, no temporary array).

    >>> all_finite(np.array([1.0, -np.inf])), all_finite(np.ones(3)), all_finite(None)
    (False, True, True)
    """
    if a is None or a.size == 0:
        return True
    if a.dtype == np.float64 and a.flags.c_contiguous:
        from ._kernels import kernels

        return not kernels().any_nonfinite_bits(a.reshape(-1).view(np.int64))
    return bool(np.isfinite(np.min(a)) and np.isfinite(np.max(a)))


def pad_nhwc(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Zero-pad the spatial axes of an NHWC array by the spec's resolved pads."""
    (t, b), (left, r) = spec.pads
    if t == b == left == r == 0:
        return x
    return np.pad(x, ((0, 0), (t, b), (left, r), (0, 0)))


@contextlib.contextmanager
def padded_input(x: np.ndarray, spec: ConvSpec) -> Iterator[np.ndarray]:
    """A contiguous zero-padded copy of NHWC x for the duration of the block, in a buffer pooled across calls
    (a fresh one faults in a page per 4 KiB: ≈ 1 ms for the seed's 1.4 MB); x itself if contiguous and unpadded.

    >>> spec = ConvSpec.from_shapes((1, 2, 2, 1), (3, 3, 1, 1), padding="SAME")
    >>> with padded_input(np.ones((1, 2, 2, 1)), spec) as xp:
    ...     xp[0, :, :, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    (t, b), (left, r) = spec.pads
    if t == b == left == r == 0 and x.flags.c_contiguous:
        yield x
        return
    n, h, w, c = x.shape
    with _scratch.arena("input") as ar:
        xp = ar.array("xp", (n, t + h + b, left + w + r, c))
        xp[:, :t] = 0.0
        xp[:, t + h :] = 0.0
        xp[:, t : t + h, :left] = 0.0
        xp[:, t : t + h, left + w :] = 0.0
        xp[:, t : t + h, left : left + w] = x
        yield xp


def window_view(xp: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Read-only (N, OH, OW, KH, KW, C) view of a padded NHWC array: its im2col rows."""
    oh, ow = spec.out_hw
    sn, sh, sw, sc = xp.strides
    return as_strided(
        xp,
        shape=(xp.shape[0], oh, ow, spec.KH, spec.KW, xp.shape[3]),
        strides=(sn, sh * spec.stride[0], sw * spec.stride[1], sh * spec.dilation[0], sw * spec.dilation[1], sc),
        writeable=False,
    )


def row_tiles(spec: ConvSpec, bytes_per_row: int, workspace_bytes: int) -> Iterator[tuple[int, int, int]]:
    """Yield (n, oh0, oh1): blocks of output rows whose work buffers fit the workspace.

    A block always holds at least one output row, so tiny workspaces still work.
    """
    oh, ow = spec.out_hw
    rows = max(1, workspace_bytes // max(1, bytes_per_row * ow))
    for n in range(spec.N):
        for r0 in range(0, oh, rows):
            yield n, r0, min(oh, r0 + rows)


def group_slices(spec: ConvSpec) -> Iterator[tuple[int, slice, slice]]:
    """(g, input-channel slice, output-channel slice) for each group."""
    cg, og = spec.C // spec.groups, spec.O // spec.groups
    for g in range(spec.groups):
        yield g, slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)


def float_conv_nhwc(
    x: np.ndarray, w: np.ndarray, spec: ConvSpec, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
) -> np.ndarray:
    """Plain float64 im2col-GEMM conv (rounded arithmetic; exact for small integer data).

    Used for indicator counts (non-finite semantics) and for Σ|x·w| magnitudes.
    """
    oh, ow = spec.out_hw
    y = np.empty((spec.N, oh, ow, spec.O), dtype=np.float64)
    xp = pad_nhwc(x.astype(np.float64, copy=False), spec)
    k = spec.n_terms
    for _, cs, os_ in group_slices(spec):
        win = window_view(xp[..., cs], spec)
        wmat = np.ascontiguousarray(w[..., os_]).reshape(k, -1)
        for n, r0, r1 in row_tiles(spec, 8 * k, workspace_bytes):
            a = win[n, r0:r1].reshape(-1, k)
            y[n, r0:r1, :, os_] = (a @ wmat).reshape(r1 - r0, ow, -1)
    return y
