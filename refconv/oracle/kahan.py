"""Compensated conv, as accurate as Dot2 (twice the working precision), with a rigorous per-element bound.

Two paths, chosen from the shape like the exact method's (:func:`refconv.oracle.exact.choose_path`):

* **direct** (depthwise, few output channels per group, short sums): Numba Dot2, described below;
  where a product or partial sum of finite terms leaves the float64 range (Dot2 then gives ±inf or NaN), the
  exact sum rounded once instead (as the GEMM path's scaling gives it).
* **gemm** (ordinary convs): the exact method's error-free splitting onto BLAS
  (:mod:`refconv.oracle.exact`): elements its certified levels decide are correctly
  rounded (bound: half an ulp, at least 2^-1074 if nonzero); the others
  get the per-element Dot2 value and bound, where the exact method would go on to
  exact integer arithmetic. Every element is therefore at least as accurate as
  Dot2's result, and the output is bitwise reproducible (BLAS results enter only
  through certified roundings, whatever BLAS's summation order).

NaN and ±inf follow the exact method's semantics (:func:`refconv.oracle.exact.with_nonfinite_semantics`): the
finite conv of the inputs with those values set to 0, then every output with a non-finite term set to NaN or
±inf, as exact arithmetic gives it (padding taps are absent terms: an infinite weight on padding changes
nothing). Non-finite outputs get an infinite bound.

**Dot2**:

Ogita, Rump & Oishi, SIAM J. Sci. Comput. 26(6), 2005, Alg. 5.3 ("Dot2"): the
products are split error-free by TwoProduct (``e = fma(x, w, -x*w)``), the
running sum by TwoSum, and the error terms are summed in float. For n terms
(K products, plus one for the bias) and u = 2^-53, with every p_k, q_k, e_k the
sum, TwoSum error and TwoProduct error at step k:

    |Σq_k| + |Σe_k| ≤ γ_n·Σ|h_k| + u·Σ|h_k| ≤ γ_(n+1)·Σ|h_k|,
    |s - Σ(q_k + e_k)| ≤ γ_(n+1)·Σ|q_k + e_k|            (Higham 2002, eq. 4.4),

so the unevaluated pair (p, s) is within γ_(n+1)²·Σ|h_k| of the exact sum. The
kernel returns y = fl(p + s) and the rigorous bound |lo| + γ_(n+1)²(1+4(n+1)u)·Σ|h|
+ an underflow slack, with lo = p + s - y computed exactly. Never compiled with
fastmath: the compiler would delete the compensation. The kernel lives in
:mod:`refconv.oracle._kernels` (vectorized across output channels, eight taps per
accumulator load, summation in tap order for every thread count).
"""

from __future__ import annotations

import numpy as np

from ..spec import ConvSpec
from ._im2col import DEFAULT_WORKSPACE_BYTES, all_finite, padded_input
from .exact import ExactStats


def conv2d_kahan_nhwc(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    path: str | None = None,
    stats: ExactStats | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Compensated conv of canonical NHWC x, HWIO w; returns (y, rigorous per-element bound on |y - exact|).

    Non-finite results get an infinite bound. ``path`` forces "gemm" or "direct"
    (default: chosen from the shape); ``stats``, if given, receives the path taken and
    the GEMM path's counters. Work buffers: the exact method's tiles (gemm),
    or one output-sized array for the low parts, a batch of images at a time (direct).

    >>> from refconv.spec import ConvSpec
    >>> x = np.array([1e16, 1.0, -1e16]).reshape(1, 1, 3, 1)
    >>> spec = ConvSpec.from_shapes(x.shape, (1, 3, 1, 1))
    >>> y, bound = conv2d_kahan_nhwc(x, np.ones((1, 3, 1, 1)), None, spec)
    >>> float(y[0, 0, 0, 0]), bool(bound[0, 0, 0, 0] < 1e-12)
    (1.0, True)
    """
    from .exact import choose_path, with_nonfinite_semantics

    stats = ExactStats() if stats is None else stats
    path = path or choose_path(spec)

    if path == "direct" or (all_finite(x) and all_finite(b)):  # (the GEMM path checks the weights on its way)
        done = _finite_kahan(x, w, b, spec, workspace_bytes, path, stats)
        if done is not None and all_finite(done[0]):
            return done

    def finite_conv(xf, wf, bf, spec, workspace_bytes, path):  # (of finite inputs, or None: see _finite_kahan)
        done = _finite_kahan(xf, wf, bf, spec, workspace_bytes, path, stats)
        if done is not None and not all_finite(done[0]):
            _exact_where_nonfinite(xf, wf, bf, spec, *done)
        return done

    # Rare: NaN or ±inf in the inputs, or outputs beyond the float64 range (computed again, with their semantics).
    y, bound = with_nonfinite_semantics(finite_conv, x, w, b, spec, workspace_bytes, path)
    bound[~np.isfinite(y)] = np.inf
    return y, bound


def _finite_kahan(x, w, b, spec, workspace_bytes, path, stats) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, bound) by ``path``: Dot2 (direct), or the GEMM path, which needs finite x and b and returns None if it
    finds a weight that is not finite."""
    from ._kernels import kernels
    from .exact import gemm_conv

    oh, ow = spec.out_hw
    y = np.empty((spec.N, oh, ow, spec.O))
    bound = np.empty_like(y)
    wc = np.ascontiguousarray(w)
    stats.elements, stats.path = y.size, path
    with padded_input(x, spec) as xp:
        if path == "gemm":
            return (y, bound) if gemm_conv(xp, wc, b, spec, workspace_bytes, y, stats, bound) else None
        bias = np.zeros(spec.O) if b is None else np.ascontiguousarray(b, dtype=np.float64)
        step = max(1, workspace_bytes // max(1, 8 * oh * ow * spec.O))
        for n0 in range(0, spec.N, step):
            n1 = min(spec.N, n0 + step)
            lo = np.empty((n1 - n0, oh, ow, spec.O))
            yb, bb = y[n0:n1], bound[n0:n1]
            args = (*spec.stride, *spec.dilation, spec.groups, oh, ow)
            kernels().dot2_conv(xp[n0:n1], wc, bias, b is not None, *args, yb, lo, bb)
            bb += np.abs(lo)
            bb *= 1 + 2.0**-51
    return y, bound


def _exact_where_nonfinite(x, w, b, spec, y, bound) -> None:
    """Outputs of finite inputs left non-finite (by Dot2: a product or partial sum beyond the float64 range, which
    the GEMM path's scaling avoids; or a sum that is itself beyond it): the exact sum rounded once, with half an
    ulp (at least 2^-1074: a rounded zero may be inexact) as bound; ±inf, bound inf, where the exact sum overflows."""
    from ._fastpoints import output_points_nhwc
    from .exact import rounding_bound

    bad = ~np.isfinite(y)
    vals = np.array(output_points_nhwc(x, w, b, spec, np.argwhere(bad), None), dtype=np.float64)
    y[bad], bound[bad] = vals, rounding_bound(vals)
