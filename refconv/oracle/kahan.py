"""Numba compensated conv: Dot2 (TwoProduct via FMA + Neumaier/TwoSum), float64.

Ogita, Rump & Oishi, SIAM J. Sci. Comput. 26(6), 2005, Prop. 5.5 ("Dot2"):

    |res - xᵀy| ≤ u·|xᵀy| + γ_n²·Σ|x_i·y_i|,   γ_n = n·u/(1 - n·u),  u = 2^-53

with n the number of products (K, plus one for the bias). The kernel returns
that bound per element (inflated for the rounding of the bound itself and for
underflow in TwoProduct's error term). Never compiled with fastmath: the
compiler would delete the compensation.
"""

from __future__ import annotations

import numpy as np

from ..spec import ConvSpec
from ._im2col import pad_nhwc

_U = 2.0**-53
_kernel = None


def _build_kernel():  # imported lazily: numba is heavy
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    @intrinsic
    def fma(typingctx, a, b, c):
        sig = types.float64(types.float64, types.float64, types.float64)

        def codegen(context, builder, signature, args):
            d = ir.DoubleType()
            fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
            return builder.call(fn, args)

        return sig, codegen

    @njit(parallel=True, fastmath=False, cache=True)
    def dot2_conv(xp, w, b, has_bias, sh, sw, dh, dw, groups, oh, ow, y, bound):
        n_, _, _, c = xp.shape
        kh, kw, cg, o = w.shape
        og = o // groups
        nterms = kh * kw * cg + (1 if has_bias else 0)
        nu = nterms * 2.0**-53
        gamma = nu / (1.0 - nu)
        for row in prange(n_ * oh):
            n = row // oh
            i = row % oh
            for j in range(ow):
                for oc in range(o):
                    g = oc // og
                    p = 0.0
                    s = 0.0
                    mag = 0.0
                    if has_bias:
                        p = b[oc]
                        mag = abs(p)
                    for a in range(kh):
                        for bb in range(kw):
                            for ci in range(cg):
                                xv = xp[n, i * sh + a * dh, j * sw + bb * dw, g * cg + ci]
                                wv = w[a, bb, ci, oc]
                                h = xv * wv
                                r = fma(xv, wv, -h)
                                t = p + h
                                z = t - p
                                q = (p - (t - z)) + (h - z)
                                p = t
                                s += q + r
                                mag += abs(h)
                    res = p + s
                    y[n, i, j, oc] = res
                    bound[n, i, j, oc] = (
                        (2.0**-53 * abs(res) + gamma * gamma * mag * (1.0 + 4.0 * nu)) / (1.0 - 2.0**-52)
                        + 8.0 * nterms * 2.0**-1074
                    )

    return dot2_conv


def conv2d_kahan_nhwc(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Compensated conv of canonical NHWC x, HWIO w; returns (y, per-element error bound)."""
    global _kernel
    if _kernel is None:
        _kernel = _build_kernel()
    oh, ow = spec.out_hw
    y = np.empty((spec.N, oh, ow, spec.O))
    bound = np.empty_like(y)
    xp = np.ascontiguousarray(pad_nhwc(x, spec))
    bias = np.zeros(spec.O) if b is None else np.ascontiguousarray(b)
    _kernel(
        xp, np.ascontiguousarray(w), bias, b is not None, *spec.stride, *spec.dilation, spec.groups, oh, ow, y, bound
    )
    bound[~np.isfinite(y)] = np.inf
    return y, bound
