"""Numba kernels shared by the "exact" and "kahan" oracles (compiled lazily, cached on disk).

Everything here is compiled with ``fastmath=False``: the compensated kernels rely
on IEEE rounding of every operation, and reassociation would delete the
compensation. The FMA comes from LLVM's ``llvm.fma.f64`` intrinsic (Numba has no
``math.fma``); it is exact to one rounding on every target, in hardware or libm.

Kernels (all take arrays and ints, return nothing, write into output arrays):

* ``dot2_conv``: direct conv with Dot2 (TwoProduct by FMA + TwoSum, Ogita, Rump &
  Oishi 2005), vectorized across output channels with eight taps per
  accumulator load. Writes ``hi = fl(p + s)``, ``lo = (p + s) - hi`` (exact) and a
  rigorous bound on ``|p + s - exact|``. Summation order is the tap order for
  every thread count, so results are bitwise reproducible.
* ``row_exponents`` / ``col_exponents``, ``split_rows`` / ``split_cols``, ``finish_stats``: one
  K-chunk at a time, fused im2col (or weight columns) + per-row power-of-two scaling +
  digit split (Ozaki et al. 2012) into one or two digits, with the row statistics the
  certified bounds need.
* ``predict_undecided``, ``combine_level1``, ``combine_level2``: certified decisions (exact.py).
* ``pairs_start`` / ``pairs_chunks`` / ``pairs_finish``: Dot2 with certified decision and error bound for
  selected (row, column) pairs, streamed over the same K-chunks as the GEMM levels.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def fma(typingctx, a, b, c):
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [d], ir.FunctionType(d, [d, d, d]))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Ask the cache for the line of arr[idx] (a 1-D array): a hint, which changes no value."""
    sig = types.none(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        # (address, read, keep in all cache levels, data cache)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


jit = njit(fastmath=False, cache=True, nogil=True)
pjit = njit(parallel=True, fastmath=False, cache=True, nogil=True)


@jit
def dot2_step(p, s, m, x, w):
    """One Dot2 step: p + x·w by TwoProduct (FMA) and TwoSum; both errors go to s, |fl(x·w)| to m."""
    h = x * w
    e = fma(x, w, -h)
    t = p + h
    z = t - p
    return t, s + (((p - (t - z)) + (h - z)) + e), m + abs(h)


@jit
def rounds_to(hi, err):
    """Whether every real x with |x - hi| ≤ err rounds to hi (to nearest, ties to even); hi normal and finite.

    hi ± err round to hi exactly when err is below the half gap to the neighbour on
    that side, or equal to it with hi even; a real x no farther than err rounds to hi
    then too. Two adds, no frexp/ldexp in the hot loops.
    """
    return hi + err == hi and hi - err == hi


@jit
def any_nonfinite_bits(u):
    """Whether any float64 (given as its int64 bits) is NaN or ±inf: all exponent bits set (vectorizes)."""
    mask = 0x7FF0000000000000
    bad = 0
    for i in range(u.shape[0]):
        bad |= (u[i] & mask) == mask
    return bad != 0


@jit
def pow2_or_zero(e):
    """2^e when |e| ≤ 500 (products of two such factors are then exact and normal), else 0: use ldexp."""
    return math.ldexp(1.0, e) if -500 <= e <= 500 else 0.0


@jit
def column_powers(sb):
    """pow2_or_zero(e) and pow2_or_zero(-e) for the exponents e = sb[:, 0] of the columns."""
    n = sb.shape[0]
    pb = np.empty(n)
    pbi = np.empty(n)
    for j in range(n):
        e = int(sb[j, 0])
        pb[j] = pow2_or_zero(e)
        pbi[j] = pow2_or_zero(-e)
    return pb, pbi


@jit
def scaled_bias(bj, ex, pab, pabi):
    """(bj·2^-ex, whether that is exact); by multiplication with pabi = 2^-ex when pab = 2^ex != 0."""
    if pab != 0.0:
        bs = bj * pabi
        return bs, math.isfinite(bs) and bs * pab == bj
    bs = math.ldexp(bj, -ex)
    return bs, math.isfinite(bs) and math.ldexp(bs, ex) == bj


@jit
def unscaled(v, ex, pab):
    """v·2^ex (exact when the result is normal); by multiplication when pab = 2^ex != 0."""
    return v * pab if pab != 0.0 else math.ldexp(v, ex)


@pjit
def dot2_conv(xp, w, b, has_bias, sh, sw, dh, dw, groups, oh, ow, hi_out, lo_out, bound_out):
    """Dot2 over the taps of every output, in tap order (bitwise reproducible for any thread count).

    Tasks are (image, output row, group, block of <= 32 output channels, block of <= 16 output
    columns); the accumulators of a task stay in L1 and each weight vector is reused by 16
    output columns, so the kernel is not bound by memory bandwidth.
    """
    n_ = xp.shape[0]
    kh, kw, cg, o = w.shape
    og = o // groups
    nterms = kh * kw * cg + (1 if has_bias else 0)
    nu = (nterms + 1) * 2.0**-53
    gamma = nu / (1.0 - nu)
    g2 = gamma * gamma * (1.0 + 4.0 * nu) / (1.0 - 2.0**-52)
    slack = 8.0 * nterms * 2.0**-1074
    c8 = cg - cg % 8
    ob = min(og, 32)
    nob = (og + ob - 1) // ob
    jb = 16
    njb = (ow + jb - 1) // jb
    for task in prange(n_ * oh * groups * nob * njb):
        jblk = task % njb
        t1 = task // njb
        oblk = t1 % nob
        t2 = t1 // nob
        g = t2 % groups
        t3 = t2 // groups
        i = t3 % oh
        n = t3 // oh
        j0 = jblk * jb
        nj = min(ow, j0 + jb) - j0
        oc0 = g * og + oblk * ob
        no = min(g * og + og, oc0 + ob) - oc0
        xc = g * cg
        p = np.empty((jb, ob))
        s = np.zeros((jb, ob))
        m = np.empty((jb, ob))
        for jj in range(nj):
            for oc in range(no):
                v = b[oc0 + oc] if has_bias else 0.0
                p[jj, oc] = v
                m[jj, oc] = abs(v)
        for a in range(kh):
            r = i * sh + a * dh
            for bb in range(kw):
                for ci in range(0, c8, 8):  # unrolled by hand: a loop over the 8 taps (array or tuple)
                    # measured 1.4-1.5x slower, the 8 inputs no longer stay in registers
                    for jj in range(nj):
                        c = (j0 + jj) * sw + bb * dw
                        x0 = xp[n, r, c, xc + ci]
                        x1 = xp[n, r, c, xc + ci + 1]
                        x2 = xp[n, r, c, xc + ci + 2]
                        x3 = xp[n, r, c, xc + ci + 3]
                        x4 = xp[n, r, c, xc + ci + 4]
                        x5 = xp[n, r, c, xc + ci + 5]
                        x6 = xp[n, r, c, xc + ci + 6]
                        x7 = xp[n, r, c, xc + ci + 7]
                        for oc in range(no):
                            pp = p[jj, oc]
                            ss = s[jj, oc]
                            mm = m[jj, oc]
                            wv = w[a, bb, ci, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x0, wv)
                            wv = w[a, bb, ci + 1, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x1, wv)
                            wv = w[a, bb, ci + 2, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x2, wv)
                            wv = w[a, bb, ci + 3, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x3, wv)
                            wv = w[a, bb, ci + 4, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x4, wv)
                            wv = w[a, bb, ci + 5, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x5, wv)
                            wv = w[a, bb, ci + 6, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x6, wv)
                            wv = w[a, bb, ci + 7, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x7, wv)
                            p[jj, oc] = pp
                            s[jj, oc] = ss
                            m[jj, oc] = mm
                for ci in range(c8, cg):
                    for jj in range(nj):
                        x0 = xp[n, r, (j0 + jj) * sw + bb * dw, xc + ci]
                        for oc in range(no):
                            pp = p[jj, oc]
                            ss = s[jj, oc]
                            mm = m[jj, oc]
                            wv = w[a, bb, ci, oc0 + oc]
                            pp, ss, mm = dot2_step(pp, ss, mm, x0, wv)
                            p[jj, oc] = pp
                            s[jj, oc] = ss
                            m[jj, oc] = mm
        for jj in range(nj):
            for oc in range(no):
                pp = p[jj, oc]
                ss = s[jj, oc]
                hi = pp + ss
                z = hi - pp
                hi_out[n, i, j0 + jj, oc0 + oc] = hi
                lo_out[n, i, j0 + jj, oc0 + oc] = (pp - (hi - z)) + (ss - z)
                bound_out[n, i, j0 + jj, oc0 + oc] = g2 * m[jj, oc] + slack


@pjit
def dot2_depthwise(xp, w, b, has_bias, sh, sw, dh, dw, oh, ow, hi_out, lo_out, bound_out):
    """dot2_conv for groups = C = O (one input and one output channel per group), vectorized across channels.

    Same operations in the same (tap) order per output as dot2_conv, so the results are identical.
    """
    n_, _, _, c = xp.shape
    kh, kw = w.shape[0], w.shape[1]
    nterms = kh * kw + (1 if has_bias else 0)
    nu = (nterms + 1) * 2.0**-53
    gamma = nu / (1.0 - nu)
    g2 = gamma * gamma * (1.0 + 4.0 * nu) / (1.0 - 2.0**-52)
    slack = 8.0 * nterms * 2.0**-1074
    for task in prange(n_ * oh):
        n = task // oh
        i = task % oh
        p = np.empty(c)
        s = np.empty(c)
        m = np.empty(c)
        for j in range(ow):
            for ch in range(c):
                v = b[ch] if has_bias else 0.0
                p[ch] = v
                s[ch] = 0.0
                m[ch] = abs(v)
            for a in range(kh):
                r = i * sh + a * dh
                for bb in range(kw):
                    col = j * sw + bb * dw
                    for ch in range(c):
                        xv = xp[n, r, col, ch]
                        wv = w[a, bb, 0, ch]
                        pp = p[ch]
                        p[ch], s[ch], m[ch] = dot2_step(pp, s[ch], m[ch], xv, wv)
            for ch in range(c):
                pp = p[ch]
                ss = s[ch]
                hi = pp + ss
                z = hi - pp
                hi_out[n, i, j, ch] = hi
                lo_out[n, i, j, ch] = (pp - (hi - z)) + (ss - z)
                bound_out[n, i, j, ch] = g2 * m[ch] + slack


def dot2_any(xp, w, b, has_bias, sh, sw, dh, dw, groups, oh, ow, hi_out, lo_out, bound_out):
    """dot2_conv, or its depthwise specialization when every group has one input and one output channel."""
    if groups > 1 and w.shape[2] == 1 and w.shape[3] == groups:
        dot2_depthwise(xp, w, b, has_bias, sh, sw, dh, dw, oh, ow, hi_out, lo_out, bound_out)
    else:
        dot2_conv(xp, w, b, has_bias, sh, sw, dh, dw, groups, oh, ow, hi_out, lo_out, bound_out)


@jit
def digit(v, c):
    """v rounded to the nearest multiple of ulp(c) (c = 1.5·2^(52-β) gives β fractional bits); |v| < 2^(51-β).

    Two adds instead of trunc(v·2^β)·2^-β: no float-to-int conversion, so loops vectorize,
    and the remainder v - digit is at most half a unit of the digit (a tighter tail).
    """
    return (v + c) - c


@jit
def square_sum_upper(sq, k):
    """Upper bound of an exact sum of k squares from its float sum ``sq`` (rounding and underflow)."""
    nu = (k + 2) * 2.0**-53
    return (sq + k * 2.0**-1074) * (1.0 + 2.0 * nu / (1.0 - nu))


_LANES = 16  # partial results per row statistic (loops over them vectorize, a single running value would not)


@jit
def row_exponents(xp, m0, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, st):
    """Per im2col row m0 + r: st[r, 0] = exponent e of its largest |value| (max|row|·2^-e in [0.5, 1)),
    st[r, 2] = 1 if some nonzero value scales below 2^-1022 (scaling may round it), else 0."""
    nl = cg - cg % _LANES
    hi, lo = np.empty(_LANES), np.empty(_LANES)  # (in lanes, so that the loops vectorize)
    for r in range(st.shape[0]):
        m = m0 + r
        n = m // (oh * ow)
        i = (m // ow) % oh
        j = m % ow
        hi[:] = 0.0
        lo[:] = math.inf
        for a in range(kh):
            for bb in range(kw):
                src = xp[n, i * sh + a * dh, j * sw + bb * dw, c0 : c0 + cg]
                for q0 in range(0, nl, _LANES):
                    for q in range(_LANES):
                        v = abs(src[q0 + q])
                        hi[q] = max(hi[q], v)
                        lo[q] = min(lo[q], nonzero_or_inf(v))
                for q in range(nl, cg):
                    v = abs(src[q])
                    hi[0] = max(hi[0], v)
                    lo[0] = min(lo[0], nonzero_or_inf(v))
        amax, amin = hi.max(), lo.min()
        e = math.frexp(amax)[1]
        st[r, 0] = e
        st[r, 2] = 1.0 if amin < math.inf and math.ldexp(amin, -e) < 2.0**-1022 else 0.0


@jit
def nonzero_or_inf(v):
    return v if v != 0.0 else math.inf


_AHEAD = 8  # rows of the weights prefetched ahead of a pass down their columns


@jit
def _prefetch_rows(mat, k, k_end, j0, ncols):
    """Prefetch the start of rows k .. min(k + 4, k_end) - 1 of mat at column j0 (each row is on a new page,
    where the hardware's prefetcher does not follow a pass down the columns)."""
    for ahead in range(k, min(k_end, k + 4)):
        _prefetch(mat[ahead], j0)
        _prefetch(mat[ahead], j0 + min(ncols, 8) - 1)


@jit
def _stats4(mat, k, j0, amax, amin, zero, sq):
    """Rows k .. k + 3 of mat, columns j0 .. j0 + len(amax), into :func:`column_stats`'s running values (branch-free:
    vectorizes; the running values are loaded and stored once per four rows)."""
    x0, x1, x2, x3 = mat[k, j0:], mat[k + 1, j0:], mat[k + 2, j0:], mat[k + 3, j0:]
    for j in range(amax.shape[0]):
        v0, v1, v2, v3 = abs(x0[j]), abs(x1[j]), abs(x2[j]), abs(x3[j])
        amax[j] = max(amax[j], max(max(v0, v1), max(v2, v3)))
        lo = min(min(nonzero_or_inf(v0), nonzero_or_inf(v1)), min(nonzero_or_inf(v2), nonzero_or_inf(v3)))
        amin[j] = min(amin[j], lo)
        zero[j] += (v0 * 0.0 + v1 * 0.0) + (v2 * 0.0 + v3 * 0.0)
        sq[j] += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)


@jit
def _digits4(mat, k, j0, scale, cc, a1, r1, q, s1, sums, s6, s7):
    """Rows k .. k + 3 of mat, columns j0 .. j0 + len(scale), scaled by ``scale`` and split into digits
    (:func:`digit`, constant cc) a1[q .. q + 3] and remainders r1[q .. q + 3]; Σ|r1| into s1, with ``sums``
    Σr1² into s6 and Σa1² into s7 (branch-free: vectorizes)."""
    x0, x1, x2, x3 = mat[k, j0:], mat[k + 1, j0:], mat[k + 2, j0:], mat[k + 3, j0:]
    for j in range(scale.shape[0]):
        sj = scale[j]
        v0, v1, v2, v3 = x0[j] * sj, x1[j] * sj, x2[j] * sj, x3[j] * sj
        d0, d1, d2, d3 = digit(v0, cc), digit(v1, cc), digit(v2, cc), digit(v3, cc)
        e0, e1, e2, e3 = v0 - d0, v1 - d1, v2 - d2, v3 - d3
        a1[q, j], a1[q + 1, j], a1[q + 2, j], a1[q + 3, j] = d0, d1, d2, d3
        r1[q, j], r1[q + 1, j], r1[q + 2, j], r1[q + 3, j] = e0, e1, e2, e3
        s1[j] += (abs(e0) + abs(e1)) + (abs(e2) + abs(e3))
        if sums:
            s6[j] += (e0 * e0 + e1 * e1) + (e2 * e2 + e3 * e3)
            s7[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)


@jit
def column_stats(mat, k0, k1, j0, ncols, copy):
    """Per column j0 .. j0 + ncols of rows k0 .. k1 of mat (K, N): max |w|, the smallest nonzero |w|, Σ w·0 (NaN
    exactly if a value is NaN or ±inf) and Σw²; copies the first copy.shape[1] of those columns into ``copy`` on
    the way (while the rows are in cache). Four rows at a time, so that the running values are loaded and stored
    once per four."""
    ncopy = copy.shape[1]
    amax = np.zeros(ncols)
    amin = np.full(ncols, math.inf)
    zero = np.zeros(ncols)
    sq = np.zeros(ncols)
    k4 = k1 - (k1 - k0) % 4
    for kk in range(k0, k4, 4):
        _prefetch_rows(mat, kk + _AHEAD, k1, j0, ncols)
        _stats4(mat, kk, j0, amax, amin, zero, sq)
        q = kk - k0
        for j in range(ncopy):
            copy[q, j], copy[q + 1, j], copy[q + 2, j], copy[q + 3, j] = (
                mat[kk, j0 + j], mat[kk + 1, j0 + j], mat[kk + 2, j0 + j], mat[kk + 3, j0 + j])
    for kk in range(k4, k1):
        for j in range(ncols):
            v = abs(mat[kk, j0 + j])
            amax[j] = max(amax[j], v)
            amin[j] = min(amin[j], nonzero_or_inf(v))
            zero[j] += v * 0.0
            sq[j] += v * v
        for j in range(ncopy):
            copy[kk - k0, j] = mat[kk, j0 + j]
    return amax, amin, zero, sq


@jit
def col_exponents(mat, j0, st, copy):
    """:func:`row_exponents` for the columns j0 .. j0 + st.shape[1] of mat (K, N), column-major: st[0, j], st[2, j];
    also st[3, j] = the float sum Σw² of the unscaled column (see :func:`level1_col_bounds`).

    Also copies the first copy.shape[1] of those columns into ``copy`` (K, ·) on the way (the
    prediction sample's weights, which a strided read would fetch a cache line per row for).
    Returns whether all those values are finite (:func:`column_stats`).
    """
    ncols = st.shape[1]
    amax, amin, zero, sq = column_stats(mat, 0, mat.shape[0], j0, ncols, copy)
    for j in range(ncols):
        e = math.frexp(amax[j])[1]
        st[0, j] = e
        st[2, j] = 1.0 if amin[j] < math.inf and math.ldexp(amin[j], -e) < 2.0**-1022 else 0.0
        st[3, j] = sq[j]
    finite = True
    for j in range(ncols):
        finite &= zero[j] == 0.0
    return finite


@jit
def im2col_chunk(xp, m, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, c, e, out):
    """out[:] = im2col row m, terms c .. c + len(out), scaled by 2^-e (by multiplication when 2^-e is normal).

    Walks one contiguous run of input channels per (tap row, tap column).
    """
    n = m // (oh * ow)
    i = (m // ow) % oh
    j = m % ow
    scale = math.ldexp(1.0, -e) if -1000 <= e <= 1000 else 0.0
    kc = out.shape[0]
    q = 0
    kk = c
    while q < kc:
        a = kk // (kw * cg)
        bb = (kk // cg) % kw
        ci = kk % cg
        run = min(cg - ci, kc - q)
        src = xp[n, i * sh + a * dh, j * sw + bb * dw, c0 + ci : c0 + ci + run]
        for u in range(run):
            out[q + u] = src[u] * scale if scale != 0.0 else math.ldexp(src[u], -e)
        q += run
        kk += run


@jit
def split_rows(xp, m0, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, beta, c, two, xs, a1, r1, a2, r2, st, st2):
    """Split the im2col columns c .. c + xs.shape[1] of rows m0 .. of the tile (one K-chunk).

    Row r is scaled by 2^-e (e = st[r, 0], from :func:`row_exponents`; exact unless
    below 2^-1022) to xs, rounded to β fractional bits a1 = digit(xs) (|a1| ≤ 1, so
    2^(53-2β) products of two such digits sum exactly in float64) and r1 = xs - a1
    (|r1| ≤ 2^-β-1). Accumulates the statistics st[r, 1] = Σ|r1|, st[r, 3] = Σxs² and
    st[r, 4] = Σr1² (finish with :func:`finish_stats`). With ``two`` also the second
    digit a2 = digit(r1) at 2β bits, r2 = r1 - a2, and st2[r, 0] = Σ|r2|.
    """
    cc = 1.5 * 2.0 ** (52 - beta)
    cc2 = 1.5 * 2.0 ** (52 - 2 * beta)
    nq = xs.shape[1]
    nl = nq - nq % _LANES
    # Partial sums in _LANES lanes (their order is covered by finish_stats): loops without a loop-carried
    # float sum, which vectorize (a single running sum would not).
    sums = np.zeros((3, _LANES))
    for r in range(xs.shape[0]):
        im2col_chunk(xp, m0 + r, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, c, int(st[r, 0]), xs[r])
        xr, ar, er = xs[r], a1[r], r1[r]
        sums[:] = 0.0
        s1, s5, s6 = sums[0], sums[1], sums[2]
        for q0 in range(0, nl, _LANES):
            for q in range(_LANES):
                vs = xr[q0 + q]
                d = digit(vs, cc)
                e = vs - d
                ar[q0 + q] = d
                er[q0 + q] = e
                s1[q] += abs(e)
                s5[q] += vs * vs
                s6[q] += e * e
        for q in range(nl, nq):
            vs = xr[q]
            d = digit(vs, cc)
            e = vs - d
            ar[q] = d
            er[q] = e
            s1[0] += abs(e)
            s5[0] += vs * vs
            s6[0] += e * e
        # (the rows' Σa1² is not needed: see tail_mag1)
        for q in range(_LANES):
            st[r, 1] += s1[q]
            st[r, 3] += s5[q]
            st[r, 4] += s6[q]
        if two:
            t1 = st2[r, 0]
            for q in range(nq):
                d2 = digit(er[q], cc2)
                a2[r, q] = d2
                r2[r, q] = er[q] - d2
                t1 += abs(er[q] - d2)
            st2[r, 0] = t1


@jit
def split_cols(mat, beta, c, j0, two, sums, a1, r1, a2, r2, stc, st2c):
    """:func:`split_rows` for rows c .. c + a1.shape[0], columns j0 .. j0 + a1.shape[1] of a (K, N) matrix
    (one K-chunk of a column block).

    Same digits; the statistics are Σ|r1|, and with ``sums`` Σr1² and Σa1² (stc[1], stc[4], stc[5]:
    the bounds of :func:`tail_mag1` pair the rows' Σxs² with the columns' Σr1², and the rows'
    Σr1² with the columns' Σa1²; without, level 1 bounds them by :func:`level1_col_bounds`: the
    two squares cost a third of this kernel's time), column-major (stc[q, j], st2c[0, j];
    stc[0] = the exponents from :func:`col_exponents`) so that the loops over columns vectorize.
    """
    ncols = a1.shape[1]
    cc = 1.5 * 2.0 ** (52 - beta)
    cc2 = 1.5 * 2.0 ** (52 - 2 * beta)
    scale = np.zeros(ncols)  # 0 where 2^-e is not representable; those columns are redone with ldexp below
    slow = False
    for j in range(ncols):
        e = int(stc[0, j])
        if -1000 <= e <= 1000:
            scale[j] = math.ldexp(1.0, -e)
        else:
            slow = True
    s1, s6, s7 = stc[1], stc[4], stc[5]  # (the columns' Σxs² is not needed: see tail_mag1)
    t1 = st2c[0]
    nq = a1.shape[0]
    n4 = nq - nq % 4
    for q in range(0, n4, 4):  # four rows at a time: the column sums are loaded and stored once per four values
        _digits4(mat, c + q, j0, scale, cc, a1, r1, q, s1, sums, s6, s7)
    for q in range(n4, nq):
        src = mat[c + q]
        for j in range(ncols):
            vs = src[j0 + j] * scale[j]
            d = digit(vs, cc)
            rr = vs - d
            a1[q, j] = d
            r1[q, j] = rr
            s1[j] += abs(rr)
            if sums:
                s6[j] += rr * rr
                s7[j] += d * d
    if two:
        for q in range(nq):
            rd, a2d, r2d = r1[q], a2[q], r2[q]
            for j in range(ncols):
                d2 = digit(rd[j], cc2)
                a2d[j] = d2
                r2d[j] = rd[j] - d2
                t1[j] += abs(rd[j] - d2)
    if slow:  # exponents beyond ±1000: scale with ldexp (2^-e alone would overflow or underflow)
        for j in range(ncols):
            if scale[j] != 0.0:
                continue
            e = int(stc[0, j])
            for q in range(a1.shape[0]):
                vs = math.ldexp(mat[c + q, j0 + j], -e)
                d = digit(vs, cc)
                rr = vs - d
                a1[q, j] = d
                r1[q, j] = rr
                s1[j] += abs(rr)
                if sums:
                    s6[j] += rr * rr
                    s7[j] += d * d
                if two:
                    d2 = digit(rr, cc2)
                    a2[q, j] = d2
                    r2[q, j] = rr - d2
                    t1[j] += abs(rr - d2)


@jit
def finish_stats(st, k, abs_cols):
    """Turn float sums of k terms into rigorous upper bounds: st[:, 3:6] sums of squares (rounding and
    underflow), st[:, abs_cols] sums of absolute values (rounding only: adding floats cannot underflow).

    Any summation order or tree: the computed sum ŝ of k nonnegative terms satisfies
    s ≤ ŝ / (1 - γ_(k-1)) (Higham 2002, §4.2).
    """
    nu = (k + 2) * 2.0**-53
    up = 1.0 + 2.0 * nu / (1.0 - nu)
    for r in range(st.shape[0]):
        for q in abs_cols:
            st[r, q] *= up
        if st.shape[1] == 6:
            for q in range(3, 6):
                st[r, q] = square_sum_upper(st[r, q], k)


@jit
def level1_col_bounds(sb, k, beta):
    """Level 1's bounds of the columns' Σr1² and Σa1² (sb[:, 4], sb[:, 5]; rows of :func:`finish_stats`-ed column
    statistics), which :func:`split_cols` does not sum for it.

    |r1| ≤ 2^(-β-1) gives Σr1² ≤ k·2^(-2β-2). a1 = xs - r1 gives √Σa1² ≤ √Σxs² + √(k)·2^(-β-1) (Minkowski), with
    Σxs² = 2^-2e·Σw² from sb[:, 3] (the upper bound of the unscaled columns' Σw² from :func:`col_exponents`);
    |a1| ≤ 1 gives Σa1² ≤ k, which stands alone where 2^-2e would overflow or magnify Σw²'s underflow slack
    (|e| > 450). Each rounding is covered by a factor (1 + 2^-50).
    """
    up = 1.0 + 2.0**-50
    r_sq = k * 2.0 ** (-2 * beta - 2)
    r_norm = math.sqrt(r_sq) * up
    for j in range(sb.shape[0]):
        sb[j, 4] = r_sq
        e = int(sb[j, 0])
        a_sq = float(k)
        if -450 <= e <= 450:
            xs_norm = math.sqrt(math.ldexp(sb[j, 3], -2 * e)) * up
            a_sq = min(a_sq, (xs_norm + r_norm) * up * (xs_norm + r_norm) * up * up)
        sb[j, 5] = a_sq


@pjit
def any_nonzero_term(xp, w, sh, sw, dh, dw, groups, oh, ow, idx, out):
    """For flat output indices idx (into (N, oh, ow, O)): does any tap have x != 0 and w != 0?"""
    kh, kw, cg, o = w.shape
    og = o // groups
    for q in prange(idx.shape[0]):
        f = idx[q]
        oc = f % o
        j = (f // o) % ow
        i = (f // (o * ow)) % oh
        n = f // (o * ow * oh)
        g = oc // og
        hit = False
        for a in range(kh):
            for bb in range(kw):
                for ci in range(cg):
                    if xp[n, i * sh + a * dh, j * sw + bb * dw, g * cg + ci] != 0 and w[a, bb, ci, oc] != 0:
                        hit = True
        out[q] = hit


@jit
def root_stats(st):
    """Per row of st: Σ|r1|, √Σxs², √Σr1², √Σa1² (for :func:`tail_mag1`; each square root once, not per element)."""
    out = np.empty((st.shape[0], 4))
    for r in range(st.shape[0]):
        out[r, 0] = st[r, 1]
        out[r, 1] = math.sqrt(st[r, 3])
        out[r, 2] = math.sqrt(st[r, 4])
        out[r, 3] = math.sqrt(st[r, 5])
    return out


@jit
def tail_mag1(ra, rb, i, j):
    """Upper bound of Σ|xs_A||r1_B| + Σ|r1_A||a1_B| for row i, column j, from :func:`root_stats` of both sides.

    Each sum is bounded two ways (|xs|, |a1| ≤ 1; Cauchy–Schwarz on the sums of
    squares; (1 + 2^-50) covers the roundings of the roots and the product) and the
    smaller bound is taken.
    """
    cs1 = ra[i, 1] * rb[j, 2] * (1.0 + 2.0**-50)
    cs2 = ra[i, 2] * rb[j, 3] * (1.0 + 2.0**-50)
    return min(rb[j, 0], cs1) + min(ra[i, 0], cs2)


@jit
def unscaled_bound(err, ex, pab):
    """err·2^ex rounded up (the scaling may round a subnormal result down)."""
    return unscaled(err, ex, pab) * (1.0 + 2.0**-52) + 2.0**-1074


@jit
def accumulate_level1(first, p1, p1lo, t, prod, t1, t2, rel):
    """One K-chunk of level 1 in one pass: (p1, p1lo) += prod·rel and t += (t1 + t2)·rel (``first``: start the
    sums), with rel[j] = 2^(e_c - ref) per column (the chunk's column units to the sums' units; all ones when the
    columns are scaled by their exponents over all of K).

    p1 by float addition and its exact error (TwoSum, Knuth) into p1lo: the chunks' digit products
    are exact and so are their power-of-two rescalings (|e_c - ref| ≤ 12: :func:`split_cols_chunk`); every
    error is a multiple of the finest chunk's digit unit 2^(-2β-12), p1 is below 4K·2^12 units of 2^ref (a chunk's
    Σ|digit| < 2^(53-2β) ≤ 4·kc), so p1lo (at most 2⌈K/kc⌉ errors of at most half an ulp of p1) stays below 2^53
    finest units and sums them exactly: p1 + p1lo is the exact sum. The tail's chunk results are summed as a tree,
    which the bound of :func:`refconv.oracle.exact.tail_gamma` covers (any order of the 2⌈K/kc⌉ chunk results); a
    rescaling that underflows errs by at most 2^-1075, inside the certification's underflow slack.
    """
    for i in range(p1.shape[0]):
        for j in range(p1.shape[1]):
            tt = (t1[i, j] + t2[i, j]) * rel[j]
            b = prod[i, j] * rel[j]
            if first:
                p1[i, j] = b
                p1lo[i, j] = 0.0
                t[i, j] = tt
                continue
            a = p1[i, j]
            s = a + b
            z = s - a
            p1lo[i, j] += (a - (s - z)) + (b - z)
            p1[i, j] = s
            t[i, j] += tt


_CHUNK_SPREAD = 12  # most binades a K-chunk's column exponent may differ from the column's reference


@jit
def split_cols_chunk(mat, beta, c, j0, ref, a1, r1, cst, rel):
    """Level 1's weight split of one K-chunk with per-chunk column exponents e_c, in one pass over the chunk for
    most columns: rows c .. c + a1.shape[0], columns j0 .. j0 + a1.shape[1] of mat (K, N).

    The digits are made at the column's reference exponent ref[j] while the chunk's statistics are gathered
    (:func:`_chunk_stats_and_digits`), and kept (e_c = ref[j]) where the chunk's own exponent e (max|w| in
    [2^(e-1), 2^e)) is ref[j] or ref[j] - 1 (|digit| ≤ 1, at most a bit lost), or ref[j] + 1 > -399 (so that
    the float Σw² cannot lose to underflow) with √(n·Σw²)·2^-ref below 2^(52-2β): then Σ|digit| ≤
    √(n·Σ(w·2^-ref)²) + n·2^(-β-1) < 2^(53-2β), so with row digits of at most 1 the chunk's digit products and
    every partial sum of them are below 2^53 units 2^-2β: exact, as :func:`accumulate_level1` needs. Any other
    column is split again at e_c = e (:func:`split_cols`, from cache). rel[j] = 2^(e_c - ref[j]) takes the
    digits to the units of ref[j]. Accumulates into cst (column-major): [0] the largest e of a chunk with a
    nonzero value, [1] Σ|r1|·rel, [2] the smallest nonzero |w|, [3] Σw² (unscaled, as :func:`col_exponents`),
    [4] 1 where some e is more than _CHUNK_SPREAD binades from ref or beyond ±960 (the exactness argument of
    the sums does not cover it: the caller redoes the block with exponents over all of K). Returns whether the
    chunk's values are all finite.
    """
    nq, ncols = a1.shape
    s1 = np.zeros(ncols)
    amax, amin, zero, sq = _chunk_stats_and_digits(mat, beta, c, j0, ref, a1, r1, s1)
    finite = True
    for j in range(ncols):
        finite &= zero[j] == 0.0
    if not finite:
        return False
    st = np.zeros((6, ncols))
    none2 = np.empty((1, 1))
    lim = 2.0 ** (52 - 2 * beta)
    for j in range(ncols):
        e = math.frexp(amax[j])[1] if amax[j] > 0.0 else int(ref[j])
        if amax[j] > 0.0:
            cst[0, j] = max(cst[0, j], e)
        cst[2, j] = min(cst[2, j], amin[j])
        cst[3, j] += sq[j]
        if abs(e - ref[j]) > _CHUNK_SPREAD or abs(e) > 960 or abs(ref[j]) > 960:
            cst[4, j] = 1.0  # (the block is redone)
        if cst[4, j] != 0.0 or ref[j] - 1 <= e <= ref[j] or (  # (Σw² would underflow below 2^-400: no)
                e == ref[j] + 1 and ref[j] > -400 and math.ldexp(math.sqrt(nq * sq[j]), -int(ref[j])) < lim):
            rel[j] = 1.0
            cst[1, j] += s1[j]
            continue
        st[0, j] = e
        rel[j] = math.ldexp(1.0, e - int(ref[j]))
        split_cols(mat, beta, c, j0 + j, False, False, a1[:, j : j + 1], r1[:, j : j + 1], none2, none2,
                   st[:, j : j + 1], none2)
        cst[1, j] += st[1, j] * rel[j]
    return True


@jit
def _chunk_stats_and_digits(mat, beta, c, j0, ref, a1, r1, s1):
    """One pass over a chunk (as :func:`split_cols_chunk`): the digits of every column at its reference exponent
    (scaled by 1 where |ref| > 960: such a block is redone), Σ|r1| into s1, and the statistics of
    :func:`column_stats` (max |w|, smallest nonzero |w|, Σw·0, Σw²), four rows at a time so that the running
    values are loaded and stored once per four."""
    nq, ncols = a1.shape
    cc = 1.5 * 2.0 ** (52 - beta)
    scale = np.empty(ncols)
    for j in range(ncols):
        scale[j] = math.ldexp(1.0, -int(ref[j])) if abs(ref[j]) <= 960 else 1.0
    amax = np.zeros(ncols)
    amin = np.full(ncols, math.inf)
    zero = np.zeros(ncols)
    sq = np.zeros(ncols)
    n4 = nq - nq % 4
    for q in range(0, n4, 4):  # (the statistics, then the digits from L1: one loop would not vectorize)
        _prefetch_rows(mat, c + q + _AHEAD, c + nq, j0, ncols)
        _stats4(mat, c + q, j0, amax, amin, zero, sq)
        _digits4(mat, c + q, j0, scale, cc, a1, r1, q, s1, False, s1, s1)
    for q in range(n4, nq):
        src = mat[c + q, j0 : j0 + ncols]
        for j in range(ncols):
            u = abs(src[j])
            amax[j] = max(amax[j], u)
            amin[j] = min(amin[j], nonzero_or_inf(u))
            zero[j] += u * 0.0
            sq[j] += u * u
            vs = src[j] * scale[j]
            d = digit(vs, cc)
            rr = vs - d
            a1[q, j] = d
            r1[q, j] = rr
            s1[j] += abs(rr)
    return amax, amin, zero, sq


@jit
def chunk_units_to_column(p1, p1lo, t, cst, ref, eb):
    """After level 1 by :func:`split_cols_chunk`: the exponent E = max e_c of each column over all of K, the sums
    rescaled from units 2^ref to 2^E (exact: E - ref ≤ _CHUNK_SPREAD, the sums' grids lie far above the
    subnormals; a tail value that underflows errs by at most 2^-1075), and eb, the column statistics in the
    format of :func:`col_exponents` with level 1's Σ|r1| (rounded up) in eb[1].
    """
    ncols = eb.shape[1]
    f = np.empty(ncols)
    for j in range(ncols):
        e = int(cst[0, j]) if cst[0, j] > -1e9 else 0
        f[j] = math.ldexp(1.0, int(ref[j]) - e)
        eb[0, j] = e
        eb[1, j] = cst[1, j] * f[j] * (1.0 + 2.0**-52) + 2.0**-1074
        eb[2, j] = 1.0 if cst[2, j] < math.inf and math.ldexp(cst[2, j], -e) < 2.0**-1022 else 0.0
        eb[3, j] = cst[3, j]
        eb[4, j] = 0.0
        eb[5, j] = 0.0
    for i in range(p1.shape[0]):  # (row by row: the arrays are row-major)
        for j in range(ncols):
            p1[i, j] *= f[j]
            p1lo[i, j] *= f[j]
            t[i, j] *= f[j]


@jit
def merge_level1(p1, p1lo, t, q1, q1lo, qt):
    """(p1, p1lo) += (q1, q1lo) and t += qt: level-1 sums of disjoint sets of K-chunks (by several workers).

    Exact like :func:`accumulate_level1`: p1, q1 and the TwoSum error are multiples of the
    digit unit 2^-2β, and p1lo + q1lo + error (each far below 2^53 units) sums exactly. The
    tails' partial sums join the tree that :func:`refconv.oracle.exact.tail_gamma` bounds.
    """
    for i in range(p1.shape[0]):
        for j in range(p1.shape[1]):
            a = p1[i, j]
            b = q1[i, j]
            s = a + b
            z = s - a
            p1lo[i, j] += q1lo[i, j] + ((a - (s - z)) + (b - z))
            p1[i, j] = s
            t[i, j] += qt[i, j]


@jit
def combine_level1(p1, p1lo, t, sa, sb, bias, has_bias, k, t_gamma, y, decided, bound):
    """Decide y = round(p1 + p1lo + T_exact + bias) per element (scaled units 2^(eA+eB)).

    p1 + p1lo = a1·b1ᵀ exactly (:func:`accumulate_level1`); |T - T_exact| ≤ t_gamma·Mij + slack with
    Mij ≥ Σ|xs_A||r1_B| + Σ|r1_A||a1_B| (:func:`tail_mag1`).
    Writes, in the caller's units: ``decided`` and the correctly rounded ``y`` where the
    uncertainty interval rounds to one float64; else y = the level-1 value and
    ``bound`` ≥ |y - exact| (inf where the scaled computation cannot be trusted:
    bias that does not scale exactly, results out of the normal range).
    """
    mrows, ncols = p1.shape
    infl = 1.0 + 8.0 * k * 2.0**-53
    slack = 16.0 * k * 2.0**-1022
    pb, pbi = column_powers(sb)
    ra, rb = root_stats(sa), root_stats(sb)
    for i in range(mrows):
        ea = int(sa[i, 0])
        pa, pai = pow2_or_zero(ea), pow2_or_zero(-ea)
        for j in range(ncols):
            ex = ea + int(sb[j, 0])
            pab, pabi = pa * pb[j], pai * pbi[j]
            mag = tail_mag1(ra, rb, i, j)
            bs = 0.0
            ok = True
            if has_bias:
                bs, ok = scaled_bias(bias[j], ex, pab, pabi)
            pv = p1[i, j]
            pl = p1lo[i, j]
            tv = t[i, j]
            s1 = pv + tv
            z = s1 - pv
            e1 = (pv - (s1 - z)) + (tv - z)
            s2 = s1 + bs
            z = s2 - s1
            e2 = (s1 - (s2 - z)) + (bs - z)
            corr = (e1 + e2) + pl  # two roundings: at most 2u(1 + u)(|e1| + |e2| + |pl|)
            hi = s2 + corr
            z = hi - s2
            lo = (s2 - (hi - z)) + (corr - z)
            if hi == 0.0 and lo == 0.0 and mag == 0.0 and ok and sa[i, 2] == 0.0 and sb[j, 2] == 0.0:
                y[i, j] = 0.0
                decided[i, j] = True
                bound[i, j] = 0.0
                continue
            y[i, j] = hi
            decided[i, j] = False
            bound[i, j] = math.inf
            if not ok or not math.isfinite(hi) or abs(hi) < 2.0**-1022:
                continue
            yv = unscaled(hi, ex, pab)
            if not math.isfinite(yv) or abs(yv) < 2.0**-1022:
                continue
            err = (abs(lo) + t_gamma * mag * infl + slack + 2.0**-52 * (abs(e1) + abs(e2) + abs(pl))) * (1.0 + 2.0**-50)
            y[i, j] = yv
            bound[i, j] = unscaled_bound(err, ex, pab)
            decided[i, j] = rounds_to(hi, err)


@jit
def predict_undecided(p1, sa, sb, bias, has_bias, k, t_gamma):
    """Expected number of elements level 1 leaves undecided: Σ min(1, tail bound / half gap of p1 + bias)."""
    mrows, ncols = p1.shape
    tot = np.zeros(mrows)
    _, pbi = column_powers(sb)
    ra, rb = root_stats(sa), root_stats(sb)
    for i in range(mrows):
        ea = int(sa[i, 0])
        pai = pow2_or_zero(-ea)
        acc = 0.0
        for j in range(ncols):
            mag = tail_mag1(ra, rb, i, j)
            v = p1[i, j]
            if has_bias:  # a prediction only: extreme exponents (factor 0) just drop the bias
                v += bias[j] * pai * pbi[j]
            half = abs(v) * 2.0**-54  # ≈ the half gap at v (a prediction); 0 where v is below 2^-1020 (and for v = 0)
            if half == 0.0 or not math.isfinite(v):
                acc += 1.0 if mag > 0.0 else 0.0
                continue
            acc += min(1.0, t_gamma * mag / half)
        tot[i] = acc
    return tot.sum()


@jit
def combine_level2(p1, x12, x21, t2, sa, sb, s2a, s2b, bias, has_bias, k, t_gamma, y, decided, bound):
    """Decide round(a1b1 + a1b2 + a2b1 (exact GEMMs) + T2 (float) + bias), scaled units.

    T2 = a1·r2_B + r1_A·r1_B + r2_A·b1 with |T2 - exact| ≤ t_gamma·M2 + slack,
    M2 = Σ|r2_B| + ‖r1_A‖‖r1_B‖ + Σ|r2_A| ≥ Σ|a1||r2_B| + Σ|r1_A||r1_B| + Σ|r2_A||b1| (digits ≤ 1).
    The exact terms are added by TwoSum; their float-summed errors cost ≤ γ_4·Σ|err|.
    Outputs as :func:`combine_level1`'s.
    """
    mrows, ncols = p1.shape
    infl = 1.0 + 8.0 * k * 2.0**-53
    slack = 24.0 * k * 2.0**-1022
    g4 = 4.0 * 2.0**-53 / (1.0 - 4.0 * 2.0**-53)
    pb, pbi = column_powers(sb)
    ra, rb = root_stats(sa), root_stats(sb)
    for i in range(mrows):
        ea = int(sa[i, 0])
        pa, pai = pow2_or_zero(ea), pow2_or_zero(-ea)
        for j in range(ncols):
            ex = ea + int(sb[j, 0])
            pab, pabi = pa * pb[j], pai * pbi[j]
            rr = ra[i, 2] * rb[j, 2] * (1.0 + 2.0**-50)  # Cauchy–Schwarz
            mag = s2b[j, 0] + rr + s2a[i, 0]
            bs = 0.0
            ok = True
            if has_bias:
                bs, ok = scaled_bias(bias[j], ex, pab, pabi)
            acc = p1[i, j]
            corr = 0.0
            esum = 0.0
            for tv in (x12[i, j], x21[i, j], t2[i, j], bs):
                sn = acc + tv
                z = sn - acc
                er = (acc - (sn - z)) + (tv - z)
                acc = sn
                corr += er
                esum += abs(er)
            hi = acc + corr
            z = hi - acc
            lo = (acc - (hi - z)) + (corr - z)
            y[i, j] = hi
            decided[i, j] = False
            bound[i, j] = math.inf
            if not ok or not math.isfinite(hi) or abs(hi) < 2.0**-1022:
                continue
            yv = unscaled(hi, ex, pab)
            if not math.isfinite(yv) or abs(yv) < 2.0**-1022:
                continue
            err = (abs(lo) + t_gamma * mag * infl + slack + g4 * esum) * (1.0 + 2.0**-50)
            y[i, j] = yv
            bound[i, j] = unscaled_bound(err, ex, pab)
            decided[i, j] = rounds_to(hi, err)


@jit
def pairs_start(sa, sb, bias, has_bias, ii, jj, state):
    """Start the per-element Dot2 of pairs (ii, jj): state[q] = (p, s, m, ok) with p = the scaled bias.

    ok = 0 where the bias does not scale exactly (such an element goes to the exact fallback).
    """
    for q in range(ii.shape[0]):
        i = ii[q]
        j = jj[q]
        ea = int(sa[i, 0])
        eb = int(sb[j, 0])
        p = 0.0
        ok = True
        if has_bias:
            p, ok = scaled_bias(bias[j], ea + eb, pow2_or_zero(ea) * pow2_or_zero(eb),
                                pow2_or_zero(-ea) * pow2_or_zero(-eb))
        state[q, 0] = p
        state[q, 1] = 0.0
        state[q, 2] = abs(p)
        state[q, 3] = 1.0 if ok else 0.0


@jit
def pairs_chunk(xp, m0, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, src, c, sa, sb, ii, jj, uniq, slot, state):
    """Continue the Dot2 of the pairs over the terms c .. c + len(src) (one K-chunk, in K order).

    ``src`` holds rows c .. of the weight columns (contiguous); the columns ``uniq``
    that pairs need are first copied out of it, row by row (pair q uses column
    ``slot[q]`` of them). Rows and columns are scaled exactly as :func:`split_rows` /
    :func:`split_cols` scale them, so the Dot2 runs on the same scaled values as the GEMM levels.
    """
    kc = src.shape[0]
    cols = np.empty((uniq.shape[0], kc))
    for t in range(kc):
        if t + _AHEAD < kc:
            for g in range(uniq.shape[0]):
                _prefetch(src[t + _AHEAD], uniq[g])
        row = src[t]
        for g in range(uniq.shape[0]):
            cols[g, t] = row[uniq[g]]
    xs = np.empty((4, kc))
    ws = np.empty((4, kc))
    npairs = ii.shape[0]
    for q0 in range(0, npairs, 4):  # four pairs at a time: four independent Dot2 chains hide the add latency
        qs = (q0, min(q0 + 1, npairs - 1), min(q0 + 2, npairs - 1), min(q0 + 3, npairs - 1))
        for u in range(4):
            q = qs[u]
            im2col_chunk(xp, m0 + ii[q], oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, c, int(sa[ii[q], 0]), xs[u])
            eb = int(sb[jj[q], 0])
            rb = math.ldexp(1.0, -eb) if -1000 <= eb <= 1000 else 0.0
            col = cols[slot[q]]
            for t in range(kc):
                ws[u, t] = col[t] * rb if rb != 0.0 else math.ldexp(col[t], -eb)
        p0, s0, g0 = state[qs[0], 0], state[qs[0], 1], state[qs[0], 2]
        p1, s1, g1 = state[qs[1], 0], state[qs[1], 1], state[qs[1], 2]
        p2, s2, g2 = state[qs[2], 0], state[qs[2], 1], state[qs[2], 2]
        p3, s3, g3 = state[qs[3], 0], state[qs[3], 1], state[qs[3], 2]
        for t in range(kc):
            p0, s0, g0 = dot2_step(p0, s0, g0, xs[0, t], ws[0, t])
            p1, s1, g1 = dot2_step(p1, s1, g1, xs[1, t], ws[1, t])
            p2, s2, g2 = dot2_step(p2, s2, g2, xs[2, t], ws[2, t])
            p3, s3, g3 = dot2_step(p3, s3, g3, xs[3, t], ws[3, t])
        # (padding slots repeat the last pair, so they write back the same values)
        state[qs[3], 0], state[qs[3], 1], state[qs[3], 2] = p3, s3, g3
        state[qs[2], 0], state[qs[2], 1], state[qs[2], 2] = p2, s2, g2
        state[qs[1], 0], state[qs[1], 1], state[qs[1], 2] = p1, s1, g1
        state[qs[0], 0], state[qs[0], 1], state[qs[0], 2] = p0, s0, g0


@jit
def pairs_chunks(xp, m0, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, wmat, kc, sa, sb, ii, jj, uniq, slot, state):
    """:func:`pairs_chunk` over all of K in K-chunks of kc rows of wmat (one call: a dispatch per chunk from Python
    costs more than the chunk's Dot2 steps)."""
    for c in range(0, wmat.shape[0], kc):
        pairs_chunk(xp, m0, oh, ow, kh, kw, c0, cg, sh, sw, dh, dw, wmat[c : c + kc], c, sa, sb, ii, jj, uniq, slot,
                    state)


@jit
def pairs_finish(sa, sb, k, has_bias, ii, jj, state, out, bound, decided):
    """Decide the pairs from their Dot2 state: the correctly rounded value where certified, else the Dot2
    value; ``bound`` is the rigorous Dot2 error bound in the caller's units (inf where the scaled computation
    cannot be trusted: bias that does not scale exactly, results out of the normal range)."""
    nterms = k + (1 if has_bias else 0)
    nu = (nterms + 1) * 2.0**-53
    gamma = nu / (1.0 - nu)
    g2 = gamma * gamma * (1.0 + 4.0 * nu) / (1.0 - 2.0**-52)
    slack = 16.0 * nterms * 2.0**-1074
    for q in range(ii.shape[0]):
        ea = int(sa[ii[q], 0])
        eb = int(sb[jj[q], 0])
        ex = ea + eb
        pab = pow2_or_zero(ea) * pow2_or_zero(eb)
        decided[q] = False
        out[q] = 0.0
        bound[q] = math.inf
        if state[q, 3] == 0.0:
            continue
        p = state[q, 0]
        s = state[q, 1]
        hi = p + s
        z = hi - p
        lo = (p - (hi - z)) + (s - z)
        if not math.isfinite(hi) or abs(hi) < 2.0**-1022:
            continue
        yv = unscaled(hi, ex, pab)
        if not math.isfinite(yv) or abs(yv) < 2.0**-1022:
            continue
        err = (abs(lo) + g2 * state[q, 2] + slack) * (1.0 + 2.0**-50)
        out[q] = yv
        bound[q] = unscaled_bound(err, ex, pab)
        decided[q] = rounds_to(hi, err)


@pjit
def certify_direct(hi, lo, bound, y, decided):
    """Decide round(exact) from dot2_conv's (hi, lo, bound), flattened arrays."""
    for q in prange(hi.shape[0]):
        h = hi[q]
        decided[q] = False
        y[q] = h
        if not math.isfinite(h) or abs(h) < 2.0**-1022:
            continue
        if rounds_to(h, (abs(lo[q]) + bound[q]) * (1.0 + 2.0**-50)):
            decided[q] = True


def _half_ulp_table() -> np.ndarray:
    """Half an ulp of a float64 by its biased exponent, rounded up to a float64: 2^(e - 1076) for e ≥ 2, 2^-1074 below
    (where half an ulp, 2^-1075, is not a float64: np.spacing(v) / 2 rounds it to 0), inf for inf and NaN."""
    table = np.ldexp(1.0, np.arange(2048) - 1076)
    table[:2] = 2.0**-1074
    table[2047] = np.inf
    return table


_HALF_ULP = _half_ulp_table()


@jit
def half_ulp_where(y, decided, bound):
    """bound = the bound of a correctly rounded y (:func:`_half_ulp_table`; 0 for y = 0: decided zeros are exact)
    where decided (contiguous 1-D arrays), a bound that does not depend on the stage (and so on BLAS's summation
    order) that decided the element. A table lookup by exponent bits: frexp / ldexp per element cost ≈ 0.6 ms per
    32,768 elements."""
    bits = y.view(np.int64)
    for q in range(y.shape[0]):
        if decided[q]:
            bound[q] = _HALF_ULP[(bits[q] >> 52) & 0x7FF] if y[q] != 0.0 else 0.0


_NAMESPACE = SimpleNamespace(
    fma=fma, rounds_to=rounds_to, any_nonfinite_bits=any_nonfinite_bits,
    dot2_conv=dot2_any, dot2_general=dot2_conv, dot2_depthwise=dot2_depthwise,
    row_exponents=row_exponents, col_exponents=col_exponents, split_rows=split_rows, split_cols=split_cols,
    finish_stats=finish_stats, accumulate_level1=accumulate_level1, combine_level1=combine_level1,
    any_nonzero_term=any_nonzero_term, predict_undecided=predict_undecided, combine_level2=combine_level2,
    merge_level1=merge_level1, level1_col_bounds=level1_col_bounds, split_cols_chunk=split_cols_chunk,
    chunk_units_to_column=chunk_units_to_column,
    pairs_start=pairs_start, pairs_chunks=pairs_chunks, pairs_finish=pairs_finish, certify_direct=certify_direct,
    half_ulp_where=half_ulp_where,
)


def kernels() -> SimpleNamespace:
    """The kernels by name (each compiles, or loads from the on-disk cache, on first call)."""
    return _NAMESPACE
