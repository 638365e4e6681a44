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
* ``split_im2col`` / ``split_cols``: fused im2col (or weight columns) + per-row power-of-two scaling +
  one β-bit digit split (Ozaki et al. 2012) with the row statistics the
  certified bound needs; ``split2_rows`` / ``split2_cols`` split the remainders once more.
* ``predict_undecided``, ``combine_level1``, ``combine_level2``: certified decisions (exact.py).
* ``dot2_pairs``: Dot2 with certified decision for selected (row, column) pairs.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
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
def half_gap(hi):
    """Half the distance from a normal, finite hi to its nearer float64 neighbour."""
    m, e = math.frexp(hi)
    if abs(m) == 0.5:
        return math.ldexp(1.0, e - 55)
    return math.ldexp(1.0, e - 54)


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
                for ci in range(0, c8, 8):
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


@pjit
def split_im2col(xp, n, r0, ow, kh, kw, c0, cg, sh, sw, dh, dw, beta, xs, a1, r1, stats):
    """Rows of the im2col tile (output rows r0.., all columns), scaled and split.

    xs = A·2^-e (exact unless below 2^-1022), a1 = its first β bits, r1 = xs - a1.
    stats columns: e, Σ|r1|, max|r1|, Σ|xs|, lossy (scaling rounded something).
    """
    rows = xs.shape[0]
    up = 2.0**beta
    down = 2.0**-beta
    for mrow in prange(rows):
        i = r0 + mrow // ow
        j = mrow % ow
        amax = 0.0
        for a in range(kh):
            for bb in range(kw):
                for ci in range(cg):
                    amax = max(amax, abs(xp[n, i * sh + a * dh, j * sw + bb * dw, c0 + ci]))
        e = math.frexp(amax)[1]
        direct = -1000 <= e <= 1000
        scale = math.ldexp(1.0, -e) if direct else 0.0
        rsum = 0.0
        rmax = 0.0
        asum = 0.0
        lossy = 0.0
        k = 0
        for a in range(kh):
            for bb in range(kw):
                for ci in range(cg):
                    v = xp[n, i * sh + a * dh, j * sw + bb * dw, c0 + ci]
                    vs = v * scale if direct else math.ldexp(v, -e)
                    if abs(vs) < 2.0**-1022 and math.ldexp(vs, e) != v:
                        lossy = 1.0
                    d = math.trunc(vs * up) * down
                    rr = vs - d
                    xs[mrow, k] = vs
                    a1[mrow, k] = d
                    r1[mrow, k] = rr
                    rsum += abs(rr)
                    rmax = max(rmax, abs(rr))
                    asum += abs(vs)
                    k += 1
        stats[mrow, 0] = e
        stats[mrow, 1] = rsum
        stats[mrow, 2] = rmax
        stats[mrow, 3] = asum
        stats[mrow, 4] = lossy


@pjit
def split_cols(mat, beta, xs, a1, r1, stats):
    """Column-wise split of a (K, N) matrix into (K, N) arrays; stats rows are per column.

    Threads take fixed chunks of rows (whole rows: contiguous, vectorized, no TLB
    thrashing) and keep partial column statistics, reduced at the end.
    """
    k, ncols = mat.shape
    up = 2.0**beta
    down = 2.0**-beta
    amax = np.zeros(ncols)
    for kk in range(k):
        for j in range(ncols):
            amax[j] = max(amax[j], abs(mat[kk, j]))
    ee = np.zeros(ncols, dtype=np.int64)
    scale = np.zeros(ncols)
    unscale = np.zeros(ncols)
    direct = True
    for j in range(ncols):
        e = math.frexp(amax[j])[1]
        ee[j] = e
        if -1000 <= e <= 1000:
            scale[j] = math.ldexp(1.0, -e)
            unscale[j] = math.ldexp(1.0, e)
        else:
            direct = False
    nch = 16
    part = np.zeros((nch, 4, ncols))
    for ch in prange(nch):
        for kk in range(ch * k // nch, (ch + 1) * k // nch):  # branch-free: vectorizes
            for j in range(ncols):
                v = mat[kk, j]
                vs = v * scale[j]
                d = math.trunc(vs * up) * down
                rr = vs - d
                xs[kk, j] = vs
                a1[kk, j] = d
                r1[kk, j] = rr
                part[ch, 0, j] += abs(rr)
                part[ch, 1, j] = max(part[ch, 1, j], abs(rr))
                part[ch, 2, j] += abs(vs)
                part[ch, 3, j] = max(part[ch, 3, j], abs(vs * unscale[j] - v))  # > 0 iff scaling rounded
    for j in range(ncols):
        stats[j, 0] = ee[j]
        stats[j, 1] = 0.0
        stats[j, 2] = 0.0
        stats[j, 3] = 0.0
        stats[j, 4] = 0.0
        for ch in range(nch):
            stats[j, 1] += part[ch, 0, j]
            stats[j, 2] = max(stats[j, 2], part[ch, 1, j])
            stats[j, 3] += part[ch, 2, j]
            stats[j, 4] = max(stats[j, 4], part[ch, 3, j])
    if not direct:  # exponents beyond ±1000: scale with ldexp (2^-e alone would over/underflow)
        for j in range(ncols):
            e = ee[j]
            if -1000 <= e <= 1000:
                continue
            rsum = 0.0
            rmax = 0.0
            asum = 0.0
            lossy = 0.0
            for kk in range(k):
                v = mat[kk, j]
                vs = math.ldexp(v, -e)
                d = math.trunc(vs * up) * down
                rr = vs - d
                xs[kk, j] = vs
                a1[kk, j] = d
                r1[kk, j] = rr
                rsum += abs(rr)
                rmax = max(rmax, abs(rr))
                asum += abs(vs)
                if math.ldexp(vs, e) != v:
                    lossy = 1.0
            stats[j, 1] = rsum
            stats[j, 2] = rmax
            stats[j, 3] = asum
            stats[j, 4] = lossy


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


@pjit
def combine_level1(p1, t, sa, sb, bias, has_bias, k, t_gamma, y, decided):
    """Decide y = round(p1 + T_exact + bias) per element (scaled units 2^(eA+eB)).

    p1 = a1·b1ᵀ is exact; |T - T_exact| ≤ t_gamma·Mij + slack with
    Mij ≥ Σ|xs_A||r1_B| + Σ|r1_A||a1_B| built from the row statistics
    (|xs|, |a1| < 1). Rows of sa/sb: e, Σ|r1|, max|r1|, Σ|xs|, lossy.
    """
    mrows, ncols = p1.shape
    infl = 1.0 + 8.0 * k * 2.0**-53
    slack = 16.0 * k * 2.0**-1022
    for i in prange(mrows):
        ea = int(sa[i, 0])
        for j in range(ncols):
            eb = int(sb[j, 0])
            ex = ea + eb
            mag = min(sb[j, 1], sb[j, 2] * sa[i, 3]) + min(sa[i, 1], sa[i, 2] * sb[j, 3])
            bs = 0.0
            ok = True
            if has_bias:
                bs = math.ldexp(bias[j], -ex)
                ok = math.isfinite(bs) and math.ldexp(bs, ex) == bias[j]
            pv = p1[i, j]
            tv = t[i, j]
            s1 = pv + tv
            z = s1 - pv
            e1 = (pv - (s1 - z)) + (tv - z)
            s2 = s1 + bs
            z = s2 - s1
            e2 = (s1 - (s2 - z)) + (bs - z)
            corr = e1 + e2
            hi = s2 + corr
            z = hi - s2
            lo = (s2 - (hi - z)) + (corr - z)
            if hi == 0.0 and lo == 0.0 and mag == 0.0 and ok and sa[i, 4] == 0.0 and sb[j, 4] == 0.0:
                y[i, j] = 0.0
                decided[i, j] = True
                continue
            y[i, j] = hi
            decided[i, j] = False
            if not ok or not math.isfinite(hi) or abs(hi) < 2.0**-1022:
                continue
            err = (abs(lo) + t_gamma * mag * infl + slack + 2.0**-53 * (abs(e1) + abs(e2))) * (1.0 + 2.0**-50)
            if err < half_gap(hi):
                yv = math.ldexp(hi, ex)
                if math.isfinite(yv) and abs(yv) >= 2.0**-1022:
                    y[i, j] = yv
                    decided[i, j] = True


@pjit
def predict_undecided(p1, sa, sb, bias, has_bias, k, t_gamma):
    """Expected number of elements level 1 leaves undecided: Σ min(1, tail bound / half gap of p1 + bias)."""
    mrows, ncols = p1.shape
    tot = np.zeros(mrows)
    for i in prange(mrows):
        ea = int(sa[i, 0])
        acc = 0.0
        for j in range(ncols):
            mag = min(sb[j, 1], sb[j, 2] * sa[i, 3]) + min(sa[i, 1], sa[i, 2] * sb[j, 3])
            v = p1[i, j]
            if has_bias:
                v += math.ldexp(bias[j], -(ea + int(sb[j, 0])))
            if v == 0.0 or not math.isfinite(v):
                acc += 1.0 if mag > 0.0 else 0.0
                continue
            acc += min(1.0, t_gamma * mag / half_gap(v))
        tot[i] = acc
    return tot.sum()


@pjit
def split2_rows(r1, beta, a2, r2, st2):
    """Second digit of row-split remainders: r1 = a2 + r2, |a2·2^(2β)| < 2^β; st2 = Σ|r2|, max|r2| per row."""
    rows, k = r1.shape
    up = 2.0 ** (2 * beta)
    down = 2.0 ** (-2 * beta)
    for i in prange(rows):
        rs = 0.0
        rm = 0.0
        for kk in range(k):
            v = r1[i, kk]
            d = math.trunc(v * up) * down
            rr = v - d
            a2[i, kk] = d
            r2[i, kk] = rr
            rs += abs(rr)
            rm = max(rm, abs(rr))
        st2[i, 0] = rs
        st2[i, 1] = rm


@pjit
def split2_cols(r1, beta, a2, r2, st2):
    """split2_rows for (K, N) column-split remainders; st2 rows are per column."""
    k, ncols = r1.shape
    up = 2.0 ** (2 * beta)
    down = 2.0 ** (-2 * beta)
    nch = 16
    part = np.zeros((nch, 2, ncols))
    for ch in prange(nch):
        for kk in range(ch * k // nch, (ch + 1) * k // nch):
            for j in range(ncols):
                v = r1[kk, j]
                d = math.trunc(v * up) * down
                rr = v - d
                a2[kk, j] = d
                r2[kk, j] = rr
                part[ch, 0, j] += abs(rr)
                part[ch, 1, j] = max(part[ch, 1, j], abs(rr))
    for j in range(ncols):
        st2[j, 0] = 0.0
        st2[j, 1] = 0.0
        for ch in range(nch):
            st2[j, 0] += part[ch, 0, j]
            st2[j, 1] = max(st2[j, 1], part[ch, 1, j])


@pjit
def combine_level2(p1, x12, x21, t2, sa, sb, s2a, s2b, bias, has_bias, k, t_gamma, y, decided):
    """Decide round(a1b1 + a1b2 + a2b1 (exact GEMMs) + T2 (float) + bias), scaled units.

    T2 = a1·r2_Bᵀ + r1_A·r1_Bᵀ + r2_A·b1ᵀ with |T2 - exact| ≤ t_gamma·M2 + slack,
    M2 ≥ Σ|a1||r2_B| + Σ|r1_A||r1_B| + Σ|r2_A||b1| from the row statistics.
    The exact terms are added by TwoSum; their float-summed errors cost ≤ γ_4·Σ|err|.
    """
    mrows, ncols = p1.shape
    infl = 1.0 + 8.0 * k * 2.0**-53
    slack = 24.0 * k * 2.0**-1022
    g4 = 4.0 * 2.0**-53 / (1.0 - 4.0 * 2.0**-53)
    for i in prange(mrows):
        ea = int(sa[i, 0])
        for j in range(ncols):
            ex = ea + int(sb[j, 0])
            mag = (min(s2b[j, 0], s2b[j, 1] * sa[i, 3]) + min(sa[i, 1] * sb[j, 2], sa[i, 2] * sb[j, 1])
                   + min(s2a[i, 0], s2a[i, 1] * sb[j, 3]))
            bs = 0.0
            ok = True
            if has_bias:
                bs = math.ldexp(bias[j], -ex)
                ok = math.isfinite(bs) and math.ldexp(bs, ex) == bias[j]
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
            if not ok or not math.isfinite(hi) or abs(hi) < 2.0**-1022:
                continue
            err = (abs(lo) + t_gamma * mag * infl + slack + g4 * esum) * (1.0 + 2.0**-50)
            if err < half_gap(hi):
                yv = math.ldexp(hi, ex)
                if math.isfinite(yv) and abs(yv) >= 2.0**-1022:
                    y[i, j] = yv
                    decided[i, j] = True


@pjit
def dot2_pairs(xs, b1, r1b, sa, sb, bias, has_bias, ii, jj, out, decided):
    """Dot2 of scaled rows xs[i] and columns b1[:, j] + r1b[:, j] (+ scaled bias) at pairs (ii, jj), certified."""
    k = xs.shape[1]
    nterms = k + (1 if has_bias else 0)
    nu = (nterms + 1) * 2.0**-53
    gamma = nu / (1.0 - nu)
    g2 = gamma * gamma * (1.0 + 4.0 * nu) / (1.0 - 2.0**-52)
    slack = 16.0 * nterms * 2.0**-1074
    for q in prange(ii.shape[0]):
        i = ii[q]
        j = jj[q]
        ex = int(sa[i, 0]) + int(sb[j, 0])
        decided[q] = False
        out[q] = 0.0
        p = 0.0
        if has_bias:
            p = math.ldexp(bias[j], -ex)
            if not (math.isfinite(p) and math.ldexp(p, ex) == bias[j]):
                continue
        s = 0.0
        mag = abs(p)
        for kk in range(k):
            xv = xs[i, kk]
            wv = b1[kk, j] + r1b[kk, j]
            p, s, mag = dot2_step(p, s, mag, xv, wv)
        hi = p + s
        z = hi - p
        lo = (p - (hi - z)) + (s - z)
        if not math.isfinite(hi) or abs(hi) < 2.0**-1022:
            continue
        err = (abs(lo) + g2 * mag + slack) * (1.0 + 2.0**-50)
        if err < half_gap(hi):
            yv = math.ldexp(hi, ex)
            if math.isfinite(yv) and abs(yv) >= 2.0**-1022:
                out[q] = yv
                decided[q] = True


@pjit
def certify_direct(hi, lo, bound, y, decided):
    """Decide round(exact) from dot2_conv's (hi, lo, bound), flattened arrays."""
    for q in prange(hi.shape[0]):
        h = hi[q]
        decided[q] = False
        y[q] = h
        if not math.isfinite(h) or abs(h) < 2.0**-1022:
            continue
        if (abs(lo[q]) + bound[q]) * (1.0 + 2.0**-50) < half_gap(h):
            decided[q] = True


_NAMESPACE = SimpleNamespace(
    fma=fma, half_gap=half_gap, dot2_conv=dot2_any, dot2_general=dot2_conv, dot2_depthwise=dot2_depthwise,
    split_im2col=split_im2col,
    combine_level1=combine_level1, split_cols=split_cols,
    any_nonzero_term=any_nonzero_term, predict_undecided=predict_undecided, split2_rows=split2_rows,
    split2_cols=split2_cols, combine_level2=combine_level2, dot2_pairs=dot2_pairs, certify_direct=certify_direct,
)


def kernels() -> SimpleNamespace:
    """The kernels by name (each compiles, or loads from the on-disk cache, on first call)."""
    return _NAMESPACE
