"""Correctly rounded conv: error-free splitting onto BLAS, certified per element, exact fallback.

**GEMM path** (:func:`choose_path` picks it for ordinary convs). The im2col rows A
(output positions x K terms, built on the fly by Numba, never stored whole) and the
weight columns B (K x output channels) are scaled per row / column by a power of
two (max |·| in [0.5, 1)) and split (Ozaki, Ogita, Oishi, Rump, Numer. Algorithms
59, 2012) into digits rounded to β fractional bits:

    A·2^-e = a1 + r1,   a1 = round(A·2^-e, β bits),  |a1| ≤ 1,  |r1| ≤ 2^-β-1,
    β = ⌊(53 - ⌈log2 K⌉) / 2⌋,

so a1 @ b1 is a sum of K integers of magnitude ≤ 2^(2β) (units 2^-2β) and float64
GEMM computes it *exactly* in any summation order, also when accumulated over
K-chunks. Everything streams over K-chunks of 512 (:data:`_CHUNK`): each chunk of
A and B is split into small buffers that stay in cache and fed to BLAS at once, so
no K x N copy of the weights is made.

* Level 1 (3 GEMMs): the exact p1 = a1 @ b1 plus the float tail
  T = A_s @ r1_B + r1_A @ a1_B (relative size 2^-β), whose rigorous bound is
  γ_(512 + 2K/512)·M (:func:`tail_gamma`, Higham 2002 eq. 3.5 and §4.2) with
  M ≥ Σ|A_s||r1_B| + Σ|r1_A||a1_B| from per-row and per-column sums (Σ|r1|, and
  Cauchy–Schwarz on Σxs², Σr1², Σa1²). p1, T and the bias are added by TwoSum; an
  element is *decided* when its whole uncertainty interval rounds to one float64.
* Level 2 (6 GEMMs): the remainders are split once more (a2 with 2β bits);
  exact a1@b1, a1@b2, a2@b1 plus a float tail of relative size 2^-2β. A tile goes
  straight to level 2 when p1 of a 16 x 32 sample predicts that level 1 would leave
  more than 5 % undecided (cancelling sums: normal data at K ≈ 6400 leaves ≈ 40 %),
  and after level 1 when it actually did.
* What the levels leave undecided is re-checked by a certified Numba Dot2 of the
  scaled row and column, and only what that cannot decide (near a rounding
  midpoint, extreme cancellation, subnormal or overflowing results, bias that does
  not scale exactly) goes to the exact integer dot product
  (:func:`refconv.oracle._exactsum.exact_dot`). Rows or columns whose scaling may
  round (values 2^1022 below their maximum) are flagged and never read as an exact zero.

**Direct path** (depthwise and other convs with < 16 output channels per group
or < 16 terms): the vectorized Numba Dot2 kernel of the "kahan" method gives
(hi, lo, rigorous bound) per element; decided as above, else the exact integer
dot product. All-zero windows are recognized exactly.

Both paths are correctly rounded (so bitwise reproducible for any thread count);
they differ only in speed. Memory: the inputs, weights and output plus at most
``workspace_bytes`` (chunk buffers and tiles of output rows of at most 32 MiB).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..spec import ConvSpec
from ._exactsum import exact_dot
from ._im2col import DEFAULT_WORKSPACE_BYTES, all_finite, float_conv_nhwc, group_slices, pad_nhwc, window_view


def digit_bits(k: int) -> int:
    """β: bits per digit so that K products of two β-bit digits sum exactly in float64."""
    return (53 - max(0, int(k - 1).bit_length())) // 2


@dataclasses.dataclass
class ExactStats:
    """What the exact method did.

    ``fallbacks`` counts elements the certified float path could not decide and
    that were finished by the exact integer dot product; ``pair_checks`` counts
    elements re-examined by the per-element Dot2 check (most of which it
    decides); ``refined_tiles`` counts tiles redone with the two-digit split;
    ``path`` is "gemm" (Ozaki splitting onto BLAS) or "direct" (Numba Dot2).
    """

    elements: int = 0
    fallbacks: int = 0
    pair_checks: int = 0
    refined_tiles: int = 0
    path: str = ""


def conv2d_exact_nhwc(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    path: str | None = None,
) -> tuple[np.ndarray, ExactStats]:
    """Correctly rounded conv of canonical float64 NHWC x, HWIO w, bias (O,).

    ``path`` forces "gemm" or "direct" (default: chosen from the shape by
    :func:`choose_path`); both are correctly rounded, they differ in speed only.

    >>> from refconv.spec import ConvSpec
    >>> x = np.array([1e300, 1.0, -1e300, 0.5]).reshape(1, 1, 4, 1)
    >>> spec = ConvSpec.from_shapes(x.shape, (1, 4, 1, 1))
    >>> y, stats = conv2d_exact_nhwc(x, np.ones((1, 4, 1, 1)), None, spec)
    >>> float(y[0, 0, 0, 0]), stats.elements
    (1.5, 1)
    """
    finite = [all_finite(a) for a in (x, w, b)]
    xf, wf, bf = (a if ok or a is None else np.where(np.isfinite(a), a, 0.0) for a, ok in zip((x, w, b), finite))
    y, stats = _finite_exact(xf, wf, bf, spec, workspace_bytes, path or choose_path(spec))
    if not all(finite):
        _apply_nonfinite(y, x, w, b, spec, workspace_bytes)
    return y, stats


def choose_path(spec: ConvSpec) -> str:
    """"direct" (Numba Dot2 over taps) for few output channels per group or short sums, else "gemm".

    BLAS is inefficient on skinny products (depthwise: one output channel per
    group), where the vectorized Dot2 kernel is faster.

    >>> from refconv.spec import ConvSpec
    >>> choose_path(ConvSpec.from_shapes((1, 8, 8, 32), (3, 3, 1, 32), groups=32))
    'direct'
    """
    og = spec.O // spec.groups
    return "direct" if og < 16 or spec.n_terms < 16 else "gemm"


def tail_gamma(k: int, kb: int, gemms: int = 2) -> float:
    """Rigorous relative bound of a float tail: ``gemms`` GEMMs over K in chunks of kb, chunk results summed.

    Each chunk GEMM errs by at most γ_kb·Σ|x||y| in any summation order, and the
    gemms·⌈K/kb⌉ chunk results are added recursively (Higham 2002, eq. 3.5 and §4.2).

    >>> tail_gamma(6400, 256) < 2.0**-44
    True
    """
    u = 2.0**-53

    def gamma(n: int) -> float:
        return n * u / (1 - n * u)

    chunks = gemms * -(-k // kb)
    return (gamma(kb) + gamma(chunks) * (1 + gamma(kb))) * (1 + 2.0**-40)


_NSTATS = 6  # statistics per split row/column (see refconv.oracle._kernels.split_rows)
_CHUNK = 512  # K-chunk of the level-1 tail GEMMs: bound γ_(512+2K/512); few BLAS calls (each syncs threads)
_TILE_BYTES = 32 * 2**20  # per-tile buffers of the GEMM path, within the workspace
_SAMPLE_ROWS, _SAMPLE_COLS, _SAMPLE_CHUNK = 16, 32, 4096  # the block whose p1 predicts a tile's level
_REFINE_FRACTION = 0.05  # above this (predicted or actual) undecided share a tile uses the two-digit level


def _finite_exact(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, workspace_bytes: int, path: str
) -> tuple[np.ndarray, ExactStats]:
    oh, ow = spec.out_hw
    y = np.empty((spec.N, oh, ow, spec.O), dtype=np.float64)
    stats = ExactStats(elements=y.size, path=path)
    xp = np.ascontiguousarray(pad_nhwc(x, spec))
    wc = np.ascontiguousarray(w)
    if path == "direct":
        _direct_exact(xp, wc, b, spec, workspace_bytes, y, stats)
    else:
        gemm_conv(xp, wc, b, spec, workspace_bytes, y, stats)
    return y, stats


def gemm_conv(xp, w, b, spec, workspace_bytes, y, stats, bound=None) -> None:
    """The GEMM path on padded NHWC xp and contiguous HWIO w (finite); "kahan" mode when ``bound`` is given."""
    import numba

    # BLAS does the heavy lifting here. Numba's OpenMP team spin-waits after each parallel kernel and
    # steals cores from OpenBLAS's threads (measured: 2 threads each, seed shape, ~2-6x slower), so the
    # light Numba kernels of this path run on the calling thread.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        _gemm_exact(xp, w, b, spec, workspace_bytes, y, stats, bound)
    finally:
        numba.set_num_threads(threads)


def _exact_fallback(xp, wmat, b, spec, cs, n, oi, oj, col) -> float:
    """The exact integer dot product for one output element (original, unscaled values)."""
    a = window_view(xp[..., cs], spec)[n, oi, oj].reshape(-1)
    return exact_dot(a, wmat[:, col], 0.0 if b is None else float(b[col]))


def _direct_exact(xp, w, b, spec, workspace_bytes, y, stats) -> None:
    """Dot2 per element (Numba), certified; undecided elements go to the exact integer dot."""
    from ._kernels import kernels

    kern = kernels()
    oh, ow = spec.out_hw
    k = spec.n_terms
    wmat = w.reshape(k, spec.O)
    og, cg = spec.O // spec.groups, spec.C // spec.groups
    bias = np.zeros(spec.O) if b is None else np.ascontiguousarray(b, dtype=np.float64)
    per_image = 8 * 4 * oh * ow * spec.O
    step = max(1, workspace_bytes // max(1, per_image))
    for n0 in range(0, spec.N, step):
        n1 = min(spec.N, n0 + step)
        shape = (n1 - n0, oh, ow, spec.O)
        hi, lo, bound = np.empty(shape), np.empty(shape), np.empty(shape)
        kern.dot2_conv(
            xp[n0:n1], w, bias, b is not None, *spec.stride, *spec.dilation, spec.groups, oh, ow, hi, lo, bound
        )
        vals, decided = np.empty(hi.size), np.empty(hi.size, dtype=bool)
        kern.certify_direct(hi.reshape(-1), lo.reshape(-1), bound.reshape(-1), vals, decided)
        zero = np.flatnonzero(~decided & (hi.reshape(-1) == 0) & (lo.reshape(-1) == 0))
        if len(zero):  # a zero (p, s) is exact unless some product underflowed to zero
            hit = np.empty(len(zero), dtype=bool)
            kern.any_nonzero_term(xp[n0:n1], w, *spec.stride, *spec.dilation, spec.groups, oh, ow, zero, hit)
            vals[zero[~hit]] = 0.0
            decided[zero[~hit]] = True
        for q in np.flatnonzero(~decided).tolist():
            nn, oi, oj, oc = np.unravel_index(q, shape)
            g = oc // og
            vals[q] = _exact_fallback(xp, wmat, b, spec, slice(g * cg, (g + 1) * cg), n0 + nn, oi, oj, oc)
            stats.fallbacks += 1
        y[n0:n1] = vals.reshape(shape)


def _gemm_exact(xp, w, b, spec, workspace_bytes, y, stats, bound=None) -> None:
    """Ozaki splitting onto BLAS, certified per element (see the module docstring for the levels).

    With ``bound`` (an output-shaped array) this is the GEMM path of the "kahan"
    method: the same levels, but what the per-element Dot2 cannot decide keeps the
    Dot2 value instead of going to the exact integer dot product, and ``bound``
    receives the rigorous per-element error bound (the BLAS results enter only
    through certified roundings, so the output does not depend on BLAS's order).
    """
    from ._kernels import kernels

    kern = kernels()
    kahan = bound is not None
    oh, ow = spec.out_hw
    k = spec.n_terms
    beta = digit_bits(k)
    kc = k if k <= 2 * _CHUNK else _CHUNK
    tgamma1 = tail_gamma(k, kc, 2)
    tgamma2 = tail_gamma(k, kc, 3)
    og, cg = spec.O // spec.groups, spec.C // spec.groups
    wmat = w.reshape(k, spec.O)
    has_bias = b is not None
    chunks = [(c, min(k, c + kc)) for c in range(0, k, kc)]
    # Workspace: K-chunk buffers (5 of rows x kc for the input tile, 4 of kc x nb for the weights) and 12
    # (rows x nb) arrays of products and results; a tile always holds at least one row and one channel.
    nb = int(max(1, min(og, workspace_bytes // (64 * kc))))
    tile_bytes = min(workspace_bytes - 32 * kc * nb, _TILE_BYTES)  # small tiles stay in cache, buffers are reused
    rows_max = int(max(1, tile_bytes // (8 * (5 * kc + 12 * nb))))
    total = spec.N * oh * ow
    bufs = [np.empty(min(rows_max, total) * kc) for _ in range(5)], [np.empty(kc * nb) for _ in range(4)]
    # The prediction sample: p1 of _SAMPLE_ROWS x _SAMPLE_COLS in K-chunks of up to _SAMPLE_CHUNK (few BLAS calls).
    sk = int(min(k, max(kc, min(_SAMPLE_CHUNK, workspace_bytes // (8 * 5 * (_SAMPLE_ROWS + _SAMPLE_COLS))))))
    sample_chunks = [(c, min(k, c + sk)) for c in range(0, k, sk)]
    sample_bufs = [np.empty(_SAMPLE_ROWS * sk) for _ in range(3)], [np.empty(sk * _SAMPLE_COLS) for _ in range(2)]
    y2 = y.reshape(total, spec.O)
    bound2 = None if bound is None else bound.reshape(total, spec.O)

    for _, cs, os_ in group_slices(spec):
        geo = (oh, ow, spec.KH, spec.KW, cs.start, cg, *spec.stride, *spec.dilation)
        for c0 in range(0, og, nb):
            c1 = min(og, c0 + nb)
            cols = slice(os_.start + c0, os_.start + c1)
            bmat = wmat[:, cols]
            ncol = c1 - c0
            bias = np.zeros(1) if b is None else np.ascontiguousarray(b[cols])
            eb = np.zeros((_NSTATS, ncol))
            kern.col_exponents(bmat, eb)
            level_pass = functools.partial(_level_pass, kern, xp, geo, beta, k)
            for m0 in range(0, total, rows_max):
                rows = min(total, m0 + rows_max) - m0
                ea = np.zeros((rows, _NSTATS))
                kern.row_exponents(xp, m0, *geo, ea)
                # Predict from p1 of a small block of rows x columns whether level 1 would leave more than
                # _REFINE_FRACTION undecided; if so, go straight to level 2 (this saves level 1's tail GEMMs).
                # (Small tiles just try level 1.)
                frac = 0.0
                if rows * ncol > 4 * _SAMPLE_ROWS * _SAMPLE_COLS:
                    nr, nj = min(rows, _SAMPLE_ROWS), min(ncol, _SAMPLE_COLS)
                    r0 = (rows - nr) // 2
                    (p1s,), s_a, s_b, _, _ = level_pass(bmat[:, :nj], sample_chunks, sample_bufs, m0 + r0,
                                                        ea[r0 : r0 + nr], eb[:, :nj], 0)
                    frac = kern.predict_undecided(p1s, s_a, s_b, bias[:nj] if has_bias else bias, has_bias, k,
                                                  tgamma1) / p1s.size
                vals = np.empty((rows, ncol))
                errb = np.full(vals.shape, np.inf)
                decided = np.zeros(vals.shape, dtype=bool)
                limit = _REFINE_FRACTION * vals.size
                if frac <= _REFINE_FRACTION:  # level 1: p1 + a float tail of relative size 2^-β
                    (p1, t), s_a, s_b, _, _ = level_pass(bmat, chunks, bufs, m0, ea, eb, 1)
                    kern.combine_level1(p1, t, s_a, s_b, bias, has_bias, k, tgamma1, vals, decided, errb)
                    del p1, t
                if np.count_nonzero(~decided) > limit:  # level 2: two more exact GEMMs, a tail of size 2^-2β
                    stats.refined_tiles += 1
                    (p1, x12, x21, t2), s_a, s_b, s2_a, s2_b = level_pass(bmat, chunks, bufs, m0, ea, eb, 2)
                    vals2, dec2, errb2 = np.empty_like(vals), np.empty(vals.shape, dtype=bool), np.empty_like(vals)
                    kern.combine_level2(p1, x12, x21, t2, s_a, s_b, s2_a, s2_b, bias, has_bias, k, tgamma2,
                                        vals2, dec2, errb2)
                    del p1, x12, x21, t2
                    take = ~decided
                    vals[take], errb[take] = vals2[take], errb2[take]
                    decided |= dec2
                if kahan:  # correctly rounded: half an ulp (a bound that does not depend on BLAS's order)
                    errb[decided] = np.spacing(np.abs(vals[decided])) / 2
                _finish_pairs(kern, xp, m0, geo, bmat, chunks, s_a, s_b, bias, has_bias, decided, vals, errb, kahan,
                              stats, functools.partial(_exact_fallback, xp, wmat, b, spec, cs), cols.start)
                y2[m0 : m0 + rows, cols] = vals
                if bound2 is not None:
                    bound2[m0 : m0 + rows, cols] = errb


def _level_pass(kern, xp, geo, beta, k, bmat, chunks, bufs, m0, ea, eb, level):
    """Digits of im2col rows m0 .. m0 + len(ea) and of the columns of bmat over all K-chunks, with one level's GEMMs.

    ``ea`` / ``eb`` hold the row / column exponents and lossy flags (:func:`row_exponents`,
    :func:`col_exponents`); ``bufs`` = (5 input-tile buffers, 4 weight buffers) of at
    least a chunk each. Level 0 computes p1 only (the prediction sample), level 1
    [p1, tail], level 2 [p1, x12, x21, tail2]. The exact digit products are accumulated
    exactly (digit products and their running sums stay below 2^53), the float tail per
    chunk. Returns (products, row stats, column stats, second-digit row and column stats).
    """
    none2 = np.empty((1, 1))
    two = level == 2
    nr, nj = ea.shape[0], bmat.shape[1]
    s_a, s_c = ea.copy(), eb.copy()  # exponents and lossy flags; the sums start at zero
    s2_a, s2_c = (np.zeros((nr, 1)), np.zeros((1, nj))) if two else (none2, none2)
    out = [np.zeros((nr, nj)) for _ in range((1, 2, 4)[level])]
    tmp = np.empty((nr, nj))
    bufs_a, bufs_b = bufs
    for c, c_end in chunks:
        width = c_end - c
        va = [buf[: nr * width].reshape(nr, width) for buf in bufs_a[: 5 if two else 3]]
        vb = [buf[: width * nj].reshape(width, nj) for buf in bufs_b[: 4 if two else 2]]
        xs_a, a1_a, r1_a, a2_a, r2_a = va + [none2] * (5 - len(va))
        a1_b, r1_b, a2_b, r2_b = vb + [none2] * (4 - len(vb))
        src = bmat[c:c_end] if bmat.flags.c_contiguous else np.ascontiguousarray(bmat[c:c_end])  # vectorizes
        kern.split_rows(xp, m0, *geo, beta, c, two, xs_a, a1_a, r1_a, a2_a, r2_a, s_a, s2_a)
        kern.split_cols(src, beta, 0, two, a1_b, r1_b, a2_b, r2_b, s_c, s2_c)
        exact_prods = [(a1_a, a1_b)] + ([(a1_a, a2_b), (a2_a, a1_b)] if two else [])
        tails = [] if level == 0 else (
            [(a1_a, r2_b), (r1_a, r1_b), (r2_a, a1_b)] if two else [(xs_a, r1_b), (r1_a, a1_b)])
        for acc, (fa, fb) in zip(out, exact_prods):
            np.matmul(fa, fb, out=tmp)
            acc += tmp
        for fa, fb in tails:
            np.matmul(fa, fb, out=tmp)
            out[-1] += tmp
    kern.finish_stats(s_a, k)
    s_b = np.ascontiguousarray(s_c.T)
    kern.finish_stats(s_b, k)
    s2_b = np.ascontiguousarray(s2_c.T) if two else none2
    return out, s_a, s_b, s2_a, s2_b


def _finish_pairs(kern, xp, m0, geo, bmat, chunks, s_a, s_b, bias, has_bias, decided, vals, errb, kahan, stats,
                  fallback, col0) -> None:
    """Per-element Dot2 for what the GEMM levels left open (streamed over the K-chunks of the weights, so
    no column is gathered from the whole matrix), then the exact integer dot product."""
    ii, jj = np.nonzero(~decided)
    if not len(ii):
        return
    stats.pair_checks += len(ii)
    k = bmat.shape[0]
    state = np.empty((len(ii), 4))
    kern.pairs_start(s_a, s_b, bias, has_bias, ii, jj, state)
    uniq, slot = np.unique(jj, return_inverse=True)
    for c, c_end in chunks:
        src = bmat[c:c_end] if bmat.flags.c_contiguous else np.ascontiguousarray(bmat[c:c_end])
        kern.pairs_chunk(xp, m0, *geo, src, c, s_a, s_b, ii, jj, uniq, slot.reshape(-1), state)
    pv, pb, pd = np.empty(len(ii)), np.empty(len(ii)), np.empty(len(ii), dtype=bool)
    kern.pairs_finish(s_a, s_b, k, has_bias, ii, jj, state, pv, pb, pd)
    vals[ii, jj], errb[ii, jj] = pv, pb
    if kahan:
        pd |= np.isfinite(pb)
    oh, ow = geo[0], geo[1]
    for i, j in zip(ii[~pd].tolist(), jj[~pd].tolist()):
        v = fallback(*np.unravel_index(m0 + i, (xp.shape[0], oh, ow)), col0 + j)
        vals[i, j], errb[i, j] = v, (np.spacing(abs(v)) / 2 if np.isfinite(v) else np.inf)
        stats.fallbacks += 1


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
