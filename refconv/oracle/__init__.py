"""The oracle: ground-truth 2-D cross-correlation, one module per method.

Methods (the registry :data:`METHODS` is the single source of truth):

* ``"exact"`` (default): every element is the float64 nearest to the exact real
  sum of products plus bias (ties to even); certified BLAS splitting with an
  exact integer fallback (:mod:`refconv.oracle.exact`).
* ``"kahan"``: compensated, at least as accurate as Dot2 (twice the working
  precision), with a rigorous per-element error bound: the exact method's BLAS
  splitting for ordinary convs, Numba Dot2 (FMA TwoProduct) for depthwise and
  small convs (:mod:`refconv.oracle.kahan`).
* ``"mpmath"``: exact mpmath products and sums rounded once, at ``dps`` digits or
  to float64; can evaluate selected positions only (:func:`conv2d_points`).

Threads: "exact" and "kahan" run on up to ``numba.get_num_threads()`` threads (BLAS single-threaded in each), in
at most ``workspace_bytes`` of scratch memory. Where those threads are as many as the CPUs the process may run on,
each is pinned to one CPU for the call and released after it (on Linux; set the environment variable
``REFCONV_PIN_THREADS=0`` to leave them to the scheduler). The results do not depend on the thread count.

``import refconv.oracle`` imports numpy only; numba and mpmath load on first use.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ShapeError, unknown_name
from ..spec import ConvSpec, Padding, prepare
from ._im2col import DEFAULT_WORKSPACE_BYTES

__all__ = ["conv2d", "conv2d_with_info", "conv2d_points", "release_workspace", "OracleResult", "PointValues", "METHODS"]


@dataclasses.dataclass
class OracleResult:
    """Output of one oracle evaluation (``y`` is float64 in the spec's data_format).

    ``bound`` is a rigorous per-element bound on |y - exact| (zero for "exact"
    except where the exact value overflows), ``fallbacks`` counts elements the
    exact method had to finish in exact integer arithmetic. ``stats`` holds the
    method's own counters (for "exact" and "kahan": the path taken, the elements
    re-checked by the per-element Dot2, the tiles refined to two digits).
    """

    y: np.ndarray
    spec: ConvSpec
    method: str
    bound: np.ndarray | None = None
    fallbacks: int = 0
    elapsed_s: float = 0.0
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "spec": self.spec.to_dict(),
            "fallbacks": self.fallbacks,
            "elements": int(self.y.size),
            "elapsed_s": self.elapsed_s,
            "stats": dict(self.stats),
            "max_bound": None if self.bound is None else float(np.max(self.bound, initial=0.0)),
        }


def _exact(x, w, b, spec, **opts) -> OracleResult:
    from .exact import conv2d_exact_nhwc

    y, stats = conv2d_exact_nhwc(x, w, b, spec, workspace_bytes=opts.get("workspace_bytes", DEFAULT_WORKSPACE_BYTES))
    counters = {"path": stats.path, "pair_checks": stats.pair_checks, "refined_tiles": stats.refined_tiles}
    return OracleResult(y, spec, "exact", bound=np.zeros_like(y), fallbacks=stats.fallbacks, stats=counters)


def _kahan(x, w, b, spec, **opts) -> OracleResult:
    from .exact import ExactStats
    from .kahan import conv2d_kahan_nhwc

    stats = ExactStats()
    y, bound = conv2d_kahan_nhwc(x, w, b, spec, workspace_bytes=opts.get("workspace_bytes", DEFAULT_WORKSPACE_BYTES),
                                 stats=stats)
    counters = {"path": stats.path, "pair_checks": stats.pair_checks, "refined_tiles": stats.refined_tiles}
    return OracleResult(y, spec, "kahan", bound=bound, stats=counters)


def _mpmath(x, w, b, spec, **opts) -> OracleResult:
    from .mp import conv2d_mpmath_nhwc

    return OracleResult(conv2d_mpmath_nhwc(x, w, b, spec, dps=None), spec, "mpmath", bound=None)


METHODS: dict[str, Callable[..., OracleResult]] = {"exact": _exact, "kahan": _kahan, "mpmath": _mpmath}


def conv2d_with_info(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
    method: str = "exact",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> OracleResult:
    """Like :func:`conv2d` but returns an :class:`OracleResult` (bounds, fallback count, time).

    >>> import numpy as np
    >>> r = conv2d_with_info(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1)), method="kahan")
    >>> r.y[0, :, :, 0].tolist(), bool(r.bound.max() < 1e-12)
    ([[18.0, 18.0], [18.0, 18.0]], True)
    """
    if method not in METHODS:
        raise unknown_name("oracle method", method, tuple(METHODS))
    xf, wf, bf, spec = prepare(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        data_format=data_format, kernel_format=kernel_format,
    )
    t0 = time.perf_counter()
    res = METHODS[method](spec.x_to_nhwc(xf), spec.w_to_hwio(wf), bf, spec, workspace_bytes=workspace_bytes)
    res.y = spec.y_from_nhwc(res.y)
    if res.bound is not None:
        res.bound = spec.y_from_nhwc(res.bound)
    res.elapsed_s = time.perf_counter() - t0
    return res


def conv2d(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
    method: str = "exact",
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> np.ndarray:
    """Ground-truth 2-D cross-correlation (no kernel flip, as in every framework).

    ``x`` is (N, H, W, C) for data_format "NHWC" or (N, C, H, W) for "NCHW";
    ``w`` is (KH, KW, C/groups, O) for kernel_format "HWIO" or (O, C/groups, KH, KW)
    for "OIHW" (default: HWIO with NHWC, OIHW with NCHW); ``b`` is (O,) or None.
    Inputs of any real dtype (float16, bfloat16, float32, float64, integers) are
    converted to float64 exactly. Padding: "SAME" (TensorFlow, extra pad at
    bottom/right), "SAME_LOWER", "VALID", int, (ph, pw) or ((top, bottom), (left, right)).

    With the default ``method="exact"`` each element of the float64 result is the
    exact sum of products plus bias, correctly rounded (nearest, ties to even); an
    exact zero is +0.0 and an exact value beyond the float64 range is ±inf.
    NaN/inf follow exact-arithmetic semantics: NaN if any term is NaN, inf·0 or
    +inf + -inf occurs, else ±inf if any term is infinite. Padding taps are
    *absent* terms, not zeros: an inf next to the border does not meet a padded 0
    (frameworks, which multiply by explicit zeros, give NaN there). See
    :data:`METHODS` for the other methods.

    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> w = np.ones((2, 2, 1, 1))
    >>> conv2d(x, w, stride=2)[0, :, :, 0]
    array([[10., 18.],
           [42., 50.]])
    >>> conv2d(np.array([[[[1e300], [1.0], [-1e300]]]]), np.ones((1, 3, 1, 1)))[0, 0, 0, 0]
    np.float64(1.0)
    """
    return conv2d_with_info(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        data_format=data_format, kernel_format=kernel_format, method=method, workspace_bytes=workspace_bytes,
    ).y


@dataclasses.dataclass
class PointValues:
    """Oracle values at selected output positions.

    ``positions`` is (M, 4) int, indices into the output in the spec's
    data_format; ``values`` is float64 (M,) or, with ``dps`` set, an object
    array of mpmath ``mpf`` at that precision.
    """

    positions: np.ndarray
    values: np.ndarray
    spec: ConvSpec
    dps: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; values as strings with all ``dps`` digits (``str(mpf)`` would show only mp.dps digits)."""
        if self.dps is None:
            values = [repr(float(v)) for v in self.values]
        else:
            import mpmath

            values = [mpmath.nstr(v, self.dps) for v in self.values]
        return {"positions": self.positions.tolist(), "values": values, "dps": self.dps}


def conv2d_points(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    positions: Any = None,
    sample: int | None = None,
    seed: int = 0,
    dps: int | None = None,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
) -> PointValues:
    """Exact oracle at chosen output positions: spot-check a large conv.

    Give ``positions`` ((M, 4) indices in the output's data_format) or ``sample``
    (M positions drawn uniformly without replacement, reproducible by ``seed``).
    The sum is exact (an error-free integer evaluator, :mod:`refconv.oracle._fastpoints`,
    with mpmath, :mod:`refconv.oracle.mp`, for the terms it does not cover:
    non-finite values, extreme exponents); ``dps=None`` returns float64 correctly rounded from it,
    ``dps=40`` returns mpf values rounded once to 40 digits (about 133 bits; print
    them with ``mpmath.nstr(v, 40)``: ``str(v)`` shows only ``mpmath.mp.dps`` digits).
    Rounding that mpf to float64 again rounds twice, which can differ from the
    ``dps=None`` value within ~10^-40 relative of a float64 midpoint.

    >>> import numpy as np, mpmath
    >>> p = conv2d_points(np.ones((1, 3, 3, 1)), np.full((3, 3, 1, 1), 0.1), positions=[(0, 0, 0, 0)], dps=30)
    >>> mpmath.nstr(p.values[0], 30), p.to_dict()["values"]
    ('0.900000000000000049960036108132', ['0.900000000000000049960036108132'])
    >>> conv2d_points(np.ones((1, 3, 3, 1)), np.full((3, 3, 1, 1), 0.1), positions=[(0, 0, 0, 0)]).values
    array([0.9])
    """
    from ._fastpoints import output_points_nhwc

    xf, wf, bf, spec = prepare(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        data_format=data_format, kernel_format=kernel_format,
    )
    shape = spec.output_shape
    if positions is None:
        if sample is None:
            raise ShapeError("conv2d_points: give positions=(M, 4) indices or sample=M")
        total = int(np.prod(shape))
        flat = np.random.default_rng(seed).choice(total, size=min(int(sample), total), replace=False)
        pos = np.stack(np.unravel_index(np.sort(flat), shape), axis=1)
    else:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1, 4)
        bad = ((pos < 0) | (pos >= np.array(shape))).any(axis=1)
        if bad.any():
            raise ShapeError(f"positions out of range for output shape {shape}: {pos[bad][:5].tolist()}")
    nhwc = pos if spec.data_format == "NHWC" else pos[:, [0, 2, 3, 1]]
    vals = output_points_nhwc(spec.x_to_nhwc(xf), spec.w_to_hwio(wf), bf, spec, nhwc, dps)
    arr = np.array(vals, dtype=np.float64) if dps is None else np.array(vals + [None], dtype=object)[:-1]
    return PointValues(pos, arr, spec, dps)


def release_workspace() -> None:
    """Free the scratch buffers that the "exact" and "kahan" methods keep between calls.

    Fresh memory costs a page fault per 4 KiB on first touch (≈ 15 % of a seed-shape call
    on a 2-core VM), so the GEMM path reuses its chunk buffers and tile arrays across
    calls: at most 128 MiB stay allocated in all. They are allocated again when needed.

    >>> release_workspace()
    """
    from . import _scratch

    _scratch.release()
