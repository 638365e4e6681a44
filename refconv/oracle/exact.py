"""Correctly rounded conv: error-free splitting onto BLAS, certified, exact fallback.

Each im2col tile A (rows = output positions) and the weight matrix B (rows =
output channels) are scaled per row by a power of two and split into two
integer digits and a remainder (Ozaki, Ogita, Oishi, Rump, Numer. Algorithms
59, 2012):

    A·2^-e = d1·2^-β + d2·2^-2β + r2,   |d1|, |d2| < 2^β,   β = ⌊(53 - ⌈log2 K⌉) / 2⌋

A digit product d_A @ d_Bᵀ is a sum of K integers below 2^(2β), so float64 GEMM
computes it *exactly* in any summation order. The pairs with s + t ≤ 3 are done
exactly; the small tail is one float GEMM whose error is bounded rigorously.
All terms (and the bias) are summed error-free with TwoSum into a
double-double. An element is *decided* when its whole uncertainty interval
rounds to one float64; the rest (near a rounding midpoint, huge cancellation,
subnormal or overflowing results) go to the exact integer fallback.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..spec import ConvSpec
from ._exactsum import exact_dot
from ._im2col import DEFAULT_WORKSPACE_BYTES, float_conv_nhwc, group_slices, pad_nhwc, row_tiles, window_view

_TINY = 2.0**-1074
_MIN_NORMAL = 2.0**-1022


def digit_bits(k: int) -> int:
    """β: bits per digit so that K products of two β-bit digits sum exactly in float64."""
    return (53 - max(0, int(k - 1).bit_length())) // 2


@dataclasses.dataclass
class Split:
    """Row-wise split of a finite matrix M, scaled per row by 2^-exp (|M_row| < 2^exp).

    M·2^-exp = d1·2^-β + r1,  r1 = d2·2^-2β + r2,  with integer |d1|, |d2| < 2^β.
    """

    exp: np.ndarray  # (R,) int64
    d1: np.ndarray
    d2: np.ndarray
    r1: np.ndarray
    r2: np.ndarray
    a1_sum: np.ndarray  # Σ|d1·2^-β| per row
    r1_max: np.ndarray
    r1_sum: np.ndarray
    r2_max: np.ndarray
    src: np.ndarray  # M itself (a reference), to re-check the scaling where it matters


def split_rows(m: np.ndarray, beta: int) -> Split:
    """Split each row of a finite float64 matrix into two β-bit integer digits and a remainder.

    Scaling by 2^-exp is exact except below 2^-1022, which the absolute slack
    of :func:`certified_product` covers; the digit/remainder steps are exact.
    """
    amax = np.max(np.abs(m), axis=1)
    exp = np.frexp(amax)[1].astype(np.int64)
    ms = np.ldexp(m, -exp[:, None])
    d1 = np.trunc(ms * 2.0**beta)
    r1 = ms - d1 * 2.0**-beta
    d2 = np.trunc(r1 * 2.0 ** (2 * beta))
    r2 = r1 - d2 * 2.0 ** (-2 * beta)
    ar1 = np.abs(r1)
    return Split(
        exp, d1, d2, r1, r2,
        a1_sum=np.sum(np.abs(d1), axis=1) * 2.0**-beta,
        r1_max=np.max(ar1, axis=1),
        r1_sum=np.sum(ar1, axis=1),
        r2_max=np.max(np.abs(r2), axis=1),
        src=m,
    )


def _scaling_exact(s: Split, rows: np.ndarray) -> np.ndarray:
    """Per row: True where M·2^-exp lost no bits to underflow (checked only for ``rows``, a bool mask)."""
    ok = np.zeros(rows.shape, dtype=bool)
    m, e = s.src[rows], s.exp[rows, None]
    ok[rows] = np.all(np.ldexp(np.ldexp(m, -e), e) == m, axis=1)
    return ok


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def certified_product(
    sa: Split, sb: Split, k: int, beta: int, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_k A_ik B_jk (+ bias_j), correctly rounded where decidable.

    Exact GEMMs: d1·d1, d1·d2, d2·d1 (digit pairs with s + t ≤ 3). The rest,
    T = r1_A·r1_Bᵀ + A1·r2_Bᵀ + r2_A·B1ᵀ, is one float GEMM bounded by
    γ_3K·|X||Y| (Higham 2002, eq. 3.5, any summation order). The terms are
    summed with TwoSum into a double-double. Returns (values, decided).
    """
    b1 = sb.d1 * 2.0**-beta
    terms = [
        (sa.d1 @ sb.d1.T) * 2.0 ** (-2 * beta),
        (sa.d1 @ sb.d2.T) * 2.0 ** (-3 * beta),
        (sa.d2 @ sb.d1.T) * 2.0 ** (-3 * beta),
    ]
    xs, ys = [sa.r1], [sb.r1]
    if sb.r2.any():
        xs.append(sa.d1 * 2.0**-beta)
        ys.append(sb.r2)
    if sa.r2.any():
        xs.append(sa.r2)
        ys.append(b1)
    kt = k * len(xs)
    terms.append(np.hstack(xs) @ np.hstack(ys).T if len(xs) > 1 else sa.r1 @ sb.r1.T)

    ea, eb = sa.exp[:, None], sb.exp[None, :]
    scale_exp = ea + eb
    bias_ok = np.ones(terms[0].shape, dtype=bool)
    if bias is not None:
        bscaled = np.ldexp(np.broadcast_to(bias[None, :], bias_ok.shape), -scale_exp)
        bias_ok = np.isfinite(bscaled) & (np.ldexp(bscaled, scale_exp) == bias[None, :])
        terms.append(np.where(bias_ok, bscaled, 0.0))

    acc, corr, errsum = terms[0], np.zeros_like(terms[0]), np.zeros_like(terms[0])
    for t in terms[1:]:
        acc, err = _two_sum(acc, t)
        corr += err
        errsum += np.abs(err)

    # Rigorous bound, in units of 2^(e_i + f_j), of the float tail GEMM and the sums above.
    nu = kt * 2.0**-53
    gamma = nu / (1 - nu)
    mag = np.multiply.outer(sa.r1_max, sb.r1_sum)
    if len(xs) > 1:
        mag += np.multiply.outer(sa.a1_sum, sb.r2_max) + np.multiply.outer(sa.r2_max, sb.a1_sum + sb.r1_sum)
    n = len(terms)
    bound = gamma * mag * (1 + 2.0**-40) + (n + 2) * 2.0**-52 * errsum + 8 * kt * 2.0**-1022

    hi, lo = _two_sum(acc, corr)
    with np.errstate(over="ignore", invalid="ignore"):
        gap = np.minimum(np.nextafter(hi, np.inf) - hi, hi - np.nextafter(hi, -np.inf))
        decided = (np.abs(lo) + bound) * (1 + 2.0**-50) < 0.5 * gap
        y = np.ldexp(hi, scale_exp)
        decided &= bias_ok & np.isfinite(y) & (np.abs(hi) >= _MIN_NORMAL) & (np.abs(y) >= _MIN_NORMAL)
    exact_zero = (acc == 0) & (corr == 0) & (errsum == 0) & (mag == 0) & bias_ok
    if exact_zero.any():  # rare: only trust it where the row scaling lost nothing to underflow
        exact_zero &= _scaling_exact(sa, exact_zero.any(axis=1))[:, None] & _scaling_exact(sb, exact_zero.any(axis=0))
    y[exact_zero] = 0.0
    return y, decided | exact_zero


@dataclasses.dataclass
class ExactStats:
    """What the exact method did: how many elements needed the integer fallback."""

    elements: int = 0
    fallbacks: int = 0


def conv2d_exact_nhwc(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> tuple[np.ndarray, ExactStats]:
    """Correctly rounded conv of canonical float64 NHWC x, HWIO w, bias (O,)."""
    finite = [a is None or bool(np.isfinite(a).all()) for a in (x, w, b)]
    xf, wf, bf = (a if ok or a is None else np.where(np.isfinite(a), a, 0.0) for a, ok in zip((x, w, b), finite))
    y, stats = _finite_exact(xf, wf, bf, spec, workspace_bytes)
    if not all(finite):
        _apply_nonfinite(y, x, w, b, spec, workspace_bytes)
    return y, stats


def _finite_exact(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, workspace_bytes: int
) -> tuple[np.ndarray, ExactStats]:
    oh, ow = spec.out_hw
    k = spec.n_terms
    beta = digit_bits(k)
    y = np.empty((spec.N, oh, ow, spec.O), dtype=np.float64)
    stats = ExactStats(elements=y.size)
    xp = pad_nhwc(x, spec)
    for _, cs, os_ in group_slices(spec):
        bt = np.ascontiguousarray(w[..., os_].reshape(k, -1).T)  # (Og, K)
        sb = split_rows(bt, beta)
        bias = None if b is None else b[os_]
        win = window_view(xp[..., cs], spec)
        for n, r0, r1 in row_tiles(spec, 8 * k * 10, workspace_bytes):
            a = win[n, r0:r1].reshape(-1, k)
            vals, decided = certified_product(split_rows(a, beta), sb, k, beta, bias)
            rows, cols = np.nonzero(~decided)
            for i, j in zip(rows.tolist(), cols.tolist()):
                vals[i, j] = exact_dot(a[i], bt[j], 0.0 if bias is None else float(bias[j]))
            stats.fallbacks += len(rows)
            y[n, r0:r1, :, os_] = vals.reshape(r1 - r0, ow, -1)
    return y, stats


def _apply_nonfinite(
    y: np.ndarray, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, workspace_bytes: int
) -> None:
    """Overwrite outputs whose terms include NaN or ±inf with exact-arithmetic semantics.

    A term x·w is NaN if either factor is NaN or inf meets 0; ±inf if an infinite
    factor meets a nonzero one. The sum is NaN if any term is NaN or +inf meets
    -inf, else ±inf if any term is infinite. Padding taps are absent, not zeros.
    """

    def conv(xi: np.ndarray, wi: np.ndarray) -> np.ndarray:
        return float_conv_nhwc(xi.astype(np.float64), wi.astype(np.float64), spec, workspace_bytes)

    fin_x, fin_w = np.isfinite(x), np.isfinite(w)
    x_nan, w_nan = np.isnan(x), np.isnan(w)
    x_pinf, x_ninf = x == np.inf, x == -np.inf
    w_pinf, w_ninf = w == np.inf, w == -np.inf
    x_pos, x_neg, x_zero = fin_x & (x > 0), fin_x & (x < 0), x == 0
    w_pos, w_neg, w_zero = fin_w & (w > 0), fin_w & (w < 0), w == 0
    ones_w = np.ones_like(w)
    nan = conv(x_nan, ones_w) + conv(~x_nan, w_nan) + conv(x_pinf | x_ninf, w_zero) + conv(x_zero, w_pinf | w_ninf)
    pinf = conv(x_pinf, w_pos | w_pinf) + conv(x_ninf, w_neg | w_ninf) + conv(x_pos, w_pinf) + conv(x_neg, w_ninf)
    ninf = conv(x_pinf, w_neg | w_ninf) + conv(x_ninf, w_pos | w_pinf) + conv(x_pos, w_ninf) + conv(x_neg, w_pinf)
    if b is not None:
        nan = nan + np.isnan(b)
        pinf = pinf + (b == np.inf)
        ninf = ninf + (b == -np.inf)
    is_nan = (nan > 0) | ((pinf > 0) & (ninf > 0))
    y[pinf > 0] = np.inf
    y[ninf > 0] = -np.inf
    y[is_nan] = np.nan
