"""Compensated conv, as accurate as Dot2 (twice the working precision), with a rigorous per-element bound.

Two paths, chosen from the shape like the exact method's (:func:`refconv.oracle.exact.choose_path`):

* **direct** (depthwise, few output channels per group, short sums, and any input with
  NaN or ±inf): Numba Dot2, described below.
* **gemm** (ordinary convs): the exact method's error-free splitting onto BLAS
  (:mod:`refconv.oracle.exact`): elements its certified levels decide are correctly
  rounded (bound: half an ulp, at least 2^-1074 if nonzero); the others
  get the per-element Dot2 value and bound, where the exact method would go on to
  exact integer arithmetic. Every element is therefore at least as accurate as
  Dot2's result, and the output is bitwise reproducible (BLAS results enter only
  through certified roundings, whatever BLAS's summation order).

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
    from ._kernels import kernels
    from .exact import choose_path, gemm_conv

    kern = kernels()
    oh, ow = spec.out_hw
    y = np.empty((spec.N, oh, ow, spec.O))
    bound = np.empty_like(y)
    wc = np.ascontiguousarray(w)
    stats = ExactStats() if stats is None else stats
    stats.elements = y.size
    stats.path = "gemm" if (path or choose_path(spec)) == "gemm" and all_finite(x) and all_finite(b) else "direct"
    with padded_input(x, spec) as xp:
        if stats.path == "gemm" and gemm_conv(xp, wc, b, spec, workspace_bytes, y, stats, bound):
            return y, bound  # (False: a weight is not finite; those go the direct way)
        stats.path = "direct"
        bias = np.zeros(spec.O) if b is None else np.ascontiguousarray(b, dtype=np.float64)
        step = max(1, workspace_bytes // max(1, 8 * oh * ow * spec.O))
        for n0 in range(0, spec.N, step):
            n1 = min(spec.N, n0 + step)
            lo = np.empty((n1 - n0, oh, ow, spec.O))
            yb, bb = y[n0:n1], bound[n0:n1]
            args = (*spec.stride, *spec.dilation, spec.groups, oh, ow)
            kern.dot2_conv(xp[n0:n1], wc, bias, b is not None, *args, yb, lo, bb)
            bb += np.abs(lo)
            bb *= 1 + 2.0**-51
    bound[~np.isfinite(y)] = np.inf
    return y, bound
