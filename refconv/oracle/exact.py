"""Correctly rounded conv: error-free splitting onto BLAS, certified per element, exact fallback.

**GEMM path** (:func:`choose_path` picks it for ordinary convs). The im2col rows A
(output positions x K terms, built on the fly by Numba, never stored whole) and the
weight columns B (K x output channels) are scaled per row / column by a power of
two (max |·| in [0.5, 1)) and split (Ozaki, Ogita, Oishi, Rump, Numer. Algorithms
59, 2012) into digits rounded to β fractional bits:

    A·2^-e = a1 + r1,   a1 = round(A·2^-e, β bits),  |a1| ≤ 1,  |r1| ≤ 2^-β-1,

so a1 @ b1 over n terms is a sum of n integers of magnitude ≤ 2^(2β) (units 2^-2β),
which float64 GEMM computes *exactly* in any summation order when n·2^(2β) ≤ 2^53.
Everything streams over K-chunks of 512 (:data:`_CHUNK`): each chunk of A and B is
split into small buffers that stay in cache and fed to BLAS at once, so no K x N
copy of the weights is made.

* Level 1 (3 GEMMs in two BLAS calls: [a1_A; r1_A] @ a1_B, stacked so that a1_B is packed
  once, and A_s @ r1_B): digits of β1 = ⌊(53 - ⌈log2 512⌉) / 2⌋ = 22 bits, so each
  chunk's p1 = a1 @ b1 is exact and the chunk sums are added by TwoSum into a pair
  (hi, lo) that holds p1 exactly (:func:`refconv.oracle._kernels.accumulate_level1`; the
  errors are multiples of 2^-2β1, which lo sums exactly). The float tail
  T = A_s @ r1_B + r1_A @ a1_B (relative size 2^-β1) has the rigorous bound
  γ_(512 + 2K/512)·M (:func:`tail_gamma`, Higham 2002 eq. 3.5 and §4.2) with
  M ≥ Σ|A_s||r1_B| + Σ|r1_A||a1_B| from per-row and per-column sums (Σ|r1|, and
  Cauchy–Schwarz on the rows' Σxs², Σr1² and bounds of the columns' Σr1², Σa1² from the
  digit width and their Σw²: :func:`refconv.oracle._kernels.level1_col_bounds`). The K-chunks
  of a row tile shared by the workers are dealt out one at a time; each worker's sums are
  merged exactly at the end (:func:`refconv.oracle._kernels.merge_level1`). There, each
  chunk's columns are scaled by that chunk's own exponents (most at the column's first chunk's,
  which one pass over the chunk checks), so the weights are read once
  (:func:`refconv.oracle._kernels.split_cols_chunk`); the sums stay exact while every chunk is
  within 12 binades of the column's first, and a block with a column that is not is redone
  with exponents over all of K. p1, T and the bias are added by TwoSum; an element is
  *decided* when its whole uncertainty interval rounds to one float64.
* Level 2 (6 GEMMs): digits of β2 = ⌊(53 - ⌈log2 K⌉) / 2⌋ bits (exact over all of K),
  the remainders split once more (a2 with 2β2 bits); exact a1@b1, a1@b2, a2@b1 plus
  a float tail of relative size 2^-2β2. A tile goes straight to level 2 when p1 of
  a 32 x 8 sample predicts that level 1 would leave more than 5 % undecided
  (cancelling sums: normal data at K ≈ 6400 leave ≈ 15 %), and after level 1 when
  it actually did.
* What the levels leave undecided is re-checked by a certified Numba Dot2 of the
  scaled row and column, and only what that cannot decide (near a rounding
  midpoint, extreme cancellation, subnormal or overflowing results, bias that does
  not scale exactly) goes to the exact integer dot product
  (:func:`refconv.oracle._exactsum.exact_dot`). Rows or columns whose scaling may
  round (values 2^1022 below their maximum) are flagged and never read as an exact zero.

**Threads** (:func:`gemm_conv`): tiles (a block of output rows x a block of
output channels) go to up to ``numba.get_num_threads()`` worker threads, each calling
BLAS single-threaded (:func:`single_threaded_blas`), one at a time to whichever
worker is free; a row tile shared by several column blocks has its rows split once,
a K-chunk at a time just before that chunk's level 1 (so that its digits are read from
cache), and its level 1 dealt out by (column block, K-chunk). For more workers
the plan cuts tiles and blocks no smaller than 128 rows and 128 channels, and uses no
more workers than tiles, or than two per block of a shared row tile (:func:`_gemm_plan`).
Where the workers are as many as the CPUs the caller may run on, each is pinned to one of them for the call
(:func:`_worker_cpus`; ``REFCONV_PIN_THREADS=0`` turns that off). The chunk buffers and tile arrays are reused across
calls (:mod:`refconv.oracle._scratch`).

**Direct path** (depthwise and other convs with < 16 output channels per group
or < 16 terms): the vectorized Numba Dot2 kernel of the "kahan" method gives
(hi, lo, rigorous bound) per element; decided as above, else the exact integer
dot product. All-zero windows are recognized exactly.

Both paths are correctly rounded (so bitwise reproducible for any thread count);
they differ only in speed. Memory: the inputs, weights and output plus at most
``workspace_bytes`` (chunk buffers, tiles of output rows of at most 32 MiB per
worker, a row tile's digits when shared); at most 128 MiB of it stay allocated
between calls (:func:`refconv.oracle.release_workspace` frees them).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..spec import ConvSpec
from . import _scratch
from ._exactsum import exact_dot, round_to_float64
from ._fastpoints import exact_point_sum
from ._im2col import DEFAULT_WORKSPACE_BYTES, all_finite, float_conv_nhwc, group_slices, padded_input, window_view


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
    return with_nonfinite_semantics(_finite_exact, x, w, b, spec, workspace_bytes, path or choose_path(spec))


def with_nonfinite_semantics(finite_conv, x, w, b, spec, workspace_bytes, path):
    """``finite_conv(x, w, b, spec, workspace_bytes, path)`` (a tuple whose first item is y; None if the GEMM path
    finds a weight that is not finite) with exact-arithmetic semantics for NaN and ±inf: the conv of the inputs
    with their non-finite values set to 0, whose outputs with a non-finite term are then overwritten
    (:func:`_apply_nonfinite`: padding taps are absent terms, so an infinite weight on padding changes nothing)."""
    if path == "gemm" and all_finite(x) and all_finite(b):  # the GEMM path checks the weights on its way
        done = finite_conv(x, w, b, spec, workspace_bytes, path)
        if done is not None:
            return done
    finite = [all_finite(a) for a in (x, w, b)]
    xf, wf, bf = (a if ok or a is None else np.where(np.isfinite(a), a, 0.0) for a, ok in zip((x, w, b), finite))
    done = finite_conv(xf, wf, bf, spec, workspace_bytes, path)
    if not all(finite):
        _apply_nonfinite(done[0], x, w, b, spec, workspace_bytes)
    return done


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
_CHUNK = 512  # K-chunk of the GEMMs: level-1 digits exact per chunk; tail bound γ_(512+2K/512)
_MIN_ROWS, _MIN_COLS = 128, 128  # the smallest tile and block _gemm_plan cuts for more workers
_TILE_BYTES = 32 * 2**20  # per-tile buffers of the GEMM path, within the workspace
_SAMPLE_ROWS, _SAMPLE_COLS, _SAMPLE_CHUNK = 32, 8, 16384  # the block whose p1 predicts a tile's level
_REFINE_FRACTION = 0.05  # above this (predicted or actual) undecided share a tile uses the two-digit level


def _finite_exact(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, spec: ConvSpec, workspace_bytes: int, path: str
) -> tuple[np.ndarray, ExactStats] | None:
    """The correctly rounded conv of finite x and b; None if the GEMM path finds a weight that is not finite."""
    oh, ow = spec.out_hw
    y = np.empty((spec.N, oh, ow, spec.O), dtype=np.float64)
    stats = ExactStats(elements=y.size, path=path)
    wc = np.ascontiguousarray(w)
    with padded_input(x, spec) as xp:
        if path == "direct":
            _direct_exact(xp, wc, b, spec, workspace_bytes, y, stats)
        elif not gemm_conv(xp, wc, b, spec, workspace_bytes, y, stats):
            return None
    return y, stats


def gemm_conv(xp, w, b, spec, workspace_bytes, y, stats, bound=None) -> bool:
    """The GEMM path on padded NHWC xp and contiguous HWIO w; "kahan" mode when ``bound`` is given.

    xp and the bias must be finite; the weights are checked on the way (one pass finds their
    column exponents, or while it splits them): returns False if one is NaN or ±inf (y and bound are then
    incomplete; the callers compute them another way).

    Runs on up to ``numba.get_num_threads()`` worker threads (as many as there are pieces of work), each
    calling BLAS single-threaded on its own tiles (see :func:`single_threaded_blas`); with one thread, or
    where BLAS's thread count cannot be set, on the calling thread with BLAS threaded as configured.
    """
    import numba

    workers = numba.get_num_threads()
    numba.set_num_threads(1)  # this thread's Numba kernels run single-threaded (the setting is per thread)
    try:
        with single_threaded_blas(workers > 1) as limited:
            return _gemm_exact(xp, w, b, spec, workspace_bytes, y, stats, bound, workers if limited else 1)
    finally:
        numba.set_num_threads(workers)


def _worker_pool(helpers: int) -> ThreadPoolExecutor:
    """The GEMM path's helper threads (the calling thread is the first worker), started once per count and
    process (≈ 1 ms per call saved; a forked child, which has none of its parent's threads, starts its own)."""
    return _pool_for(helpers, os.getpid())


@functools.cache
def _pool_for(workers: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="refconv-gemm")


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def single_threaded_blas(wanted: bool = True) -> Iterator[bool]:
    """Limit numpy's BLAS to one thread inside the block; yields whether it did.

    BLAS's own threads parallelize one GEMM; the GEMM path instead runs whole tiles (splits,
    GEMMs, certification) on parallel worker threads, each calling BLAS on itself: on the seed
    shape's skinny products (128 x 6400 x 512) two such threads are 1.8x faster than OpenBLAS's
    two threads on one product (measured 14.8 vs 26.9 ms; OpenBLAS gained nothing from its second
    thread there), and no BLAS thread spin-waits on a core that a worker needs. The limit is
    process-wide and counted: the first of overlapping blocks (calls from several threads) sets it,
    the last one out restores the thread count found by the first (a concurrent caller's BLAS
    runs single-threaded meanwhile). Yields False, changing nothing, when not ``wanted`` or when
    threadpoolctl finds no BLAS it can control.

    >>> with single_threaded_blas() as limited:
    ...     isinstance(limited, bool)
    True
    """
    global _blas_users, _blas_limiter
    try:
        ctl = _blas_controller() if wanted else None
    except ImportError:
        ctl = None
    if not ctl or not ctl.lib_controllers:
        yield False
        return
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = ctl.limit(limits=1)  # applied now; restore_original_limits() undoes it
        _blas_users += 1
    try:
        yield True
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


_blas_lock = threading.Lock()
_blas_users = 0  # blocks inside single_threaded_blas, in all threads
_blas_limiter = None


def _exact_fallback(xp, wmat, b, spec, cs, n, oi, oj, col) -> float:
    """The exact sum for one output element (original, unscaled values), rounded once: numpy TwoProduct and
    integer sums (:func:`refconv.oracle._fastpoints.exact_point_sum`, ≈ 4 ms for 25,000 terms), or the Python
    integer dot product (≈ 23 ms) where that split does not apply."""
    a, wcol = window_view(xp[..., cs], spec)[n, oi, oj].reshape(-1), wmat[:, col]
    bias = 0.0 if b is None else float(b[col])
    fast = exact_point_sum(a, wcol, bias)
    return exact_dot(a, wcol, bias) if fast is None else round_to_float64(*fast)


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


def _gemm_plan(spec: ConvSpec, workspace_bytes: int, workers: int) -> tuple[int, int, int]:
    """(K-chunk, output channels per column block, rows per tile) of the GEMM path.

    Each worker gets workspace_bytes / workers: K-chunk buffers (5 of rows x kc for the
    input tile, 4 of kc x nb for the weights) and 12 (rows x nb) arrays of products and
    results; a tile holds at least one row and one channel. With several workers, a conv
    that makes few tiles is cut into a multiple of ``workers`` tiles, along its rows if
    a tile has at least as many rows as channels (the weight split is redone per row tile),
    else along its channels (the row split is redone per column block), but not into tiles of fewer
    than ``_MIN_ROWS`` rows or blocks of fewer than ``_MIN_COLS`` channels: slivers whose splits,
    merges and skinny GEMMs cost more than the extra cores give (on a 16-core Xeon the seed conv took
    130 ms in blocks of 32 channels for 16 workers, 27 ms in blocks of 128 or 64, 33 ms on one worker).

    >>> _gemm_plan(ConvSpec.from_shapes((1, 16, 32, 256), (5, 5, 256, 512), stride=2, padding="SAME"), 2**28, 2)
    (512, 256, 128)
    """
    k = spec.n_terms
    kc = k if k <= 2 * _CHUNK else _CHUNK
    og = spec.O // spec.groups
    total = spec.N * spec.out_hw[0] * spec.out_hw[1]
    ws = workspace_bytes // workers
    nb = int(max(1, min(og, ws // (64 * kc))))

    def rows_for(nb: int) -> int:  # (small tiles stay in cache, buffers are reused)
        return int(max(1, min(total, min(ws - 32 * kc * nb, _TILE_BYTES) // (8 * (5 * kc + 12 * nb)))))

    rows = rows_for(nb)
    tiles, blocks = -(-total // rows), -(-og // nb)
    if workers > 1 and spec.groups * tiles * blocks < 4 * workers:
        if rows >= nb:
            tiles = min(max(tiles, total // _MIN_ROWS), -(-tiles // workers) * workers)
        else:
            blocks = min(max(blocks, og // _MIN_COLS), -(-blocks // workers) * workers)
            if rows_for(-(-og // blocks)) == total:
                tiles = 1  # (all rows fit one tile of the narrower blocks: one row tile, not several in a row)
    return kc, -(-og // blocks), -(-total // tiles)


def _gemm_exact(xp, w, b, spec, workspace_bytes, y, stats, bound=None, workers=1) -> bool:
    """Ozaki splitting onto BLAS, certified per element (see the module docstring for the levels).

    With ``bound`` (an output-shaped array) this is the GEMM path of the "kahan"
    method: the same levels, but what the per-element Dot2 cannot decide keeps the
    Dot2 value instead of going to the exact integer dot product, and ``bound``
    receives the rigorous per-element error bound (the BLAS results enter only
    through certified roundings, so the output does not depend on BLAS's order).
    The work is a :class:`_TaskGraph` run by ``workers`` threads (BLAS should then be
    single-threaded: :func:`single_threaded_blas`): the column exponents, then whole tiles (a column
    block x a block of output rows); or, where the workers share a row tile, the tile's row exponents and
    prediction sample, the blocks' exponents and predictions (then level 2 of the blocks predicted to need it),
    and, K-chunk by K-chunk, the rows' split and level 1 by (block, K-chunk), each worker summing its chunks apart
    (merged exactly by whoever sums a block's last chunk, which then finishes that tile). Every element comes out
    the same whoever computes what.
    Returns False if a weight is not finite (the outputs then incomplete).
    """
    from ._kernels import kernels

    kern = kernels()
    oh, ow = spec.out_hw
    k = spec.n_terms
    kc, nb, rows_max = _gemm_plan(spec, workspace_bytes, workers)
    og = spec.O // spec.groups
    total = spec.N * oh * ow
    # With a column block per worker in each group (or, for more workers, as many blocks as _MIN_COLS allows, at
    # least two, and two (block, K-chunk) items per worker), the workers share each row tile: its rows are split
    # once (in parallel; its digits and the workers' level-1 sums take at most a quarter of the workspace), then
    # its blocks' level 1 is dealt out by K-chunk.
    def shareable(plan: tuple[int, int, int]) -> bool:
        blocks = -(-og // plan[1])
        return blocks >= workers or blocks >= max(2, og // _MIN_COLS) and blocks * -(-k // plan[0]) >= 2 * workers

    share = False
    shared_bytes = 24 * min(rows_max, total) * (k + workers * og)
    if workers > 1 and shareable((kc, nb, rows_max)) and shared_bytes <= workspace_bytes // 4:
        shared_plan = _gemm_plan(spec, workspace_bytes - workspace_bytes // 4, workers)
        share = shareable(shared_plan)
        if share:
            kc, nb, rows_max = shared_plan
    tgamma1 = tail_gamma(k, kc, 2)
    tgamma2 = tail_gamma(k, kc, 3)
    # Digit widths: level 1 (and the sample) exact per K-chunk, chunk sums added as double-doubles; level 2
    # exact over all of K (its three exact products are plain sums).
    betas = digit_bits(kc), digit_bits(k)
    cg = spec.C // spec.groups
    wmat = w.reshape(k, spec.O)
    chunks = [(c, min(k, c + kc)) for c in range(0, k, kc)]
    # The prediction sample: p1 of _SAMPLE_ROWS x _SAMPLE_COLS in K-chunks of up to _SAMPLE_CHUNK (few BLAS calls: on
    # the seed conv, chunks of 2048 made the whole call 7 % slower than one chunk, interleaved A/B, 25 rounds).
    sk = int(min(k, max(kc, min(_SAMPLE_CHUNK, workspace_bytes // (workers * 8 * 5 * (_SAMPLE_ROWS + _SAMPLE_COLS))))))
    sample_chunks = [(c, min(k, c + sk)) for c in range(0, k, sk)]
    y2 = y.reshape(total, spec.O)
    bound2 = None if bound is None else bound.reshape(total, spec.O)
    blocks = [(cs, slice(os_.start + c0, os_.start + min(og, c0 + nb))) for _, cs, os_ in group_slices(spec)
              for c0 in range(0, og, nb)]
    tiles = [(blk, m0) for blk in range(len(blocks)) for m0 in range(0, total, rows_max)]
    # No more workers than tiles; sharing a row tile, no more than two per column block: each block's merge and
    # finish (Dot2 re-checks, bounds) falls to one worker, and more level-1 parts only lengthen them (16-core
    # Xeon, seed conv, 4 blocks: 27 ms with 8 workers, 70 ms with 16).
    workers = min(workers, 2 * -(-og // nb) if share else len(tiles))
    none2 = np.empty((1, 1))
    # Tiles larger than 4 samples take one; the blocks' sample columns are copied contiguously on the way
    # (if the copies take at most a quarter of the workspace; else the samples read the weights in place).
    sample_cols = [min(c.stop - c.start, _SAMPLE_COLS) if min(rows_max, total) * (c.stop - c.start)
                   > 4 * _SAMPLE_ROWS * _SAMPLE_COLS else 0 for _, c in blocks]
    if 8 * k * sum(sample_cols) > workspace_bytes // 4:
        sample_cols = [0] * len(blocks)
    offsets = np.concatenate([[0], np.cumsum(sample_cols)]) * k

    def column_exponents(blk: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """The block's column exponents, a contiguous copy of its sample columns, whether its weights are finite."""
        eb = np.zeros((_NSTATS, width(blk)))
        sample_w = samples[offsets[blk] : offsets[blk + 1]].reshape(k, sample_cols[blk])
        return eb, sample_w, kern.col_exponents(wmat, blocks[blk][1].start, eb, sample_w)

    def geometry(blk: int) -> tuple:
        return (oh, ow, spec.KH, spec.KW, blocks[blk][0].start, cg, *spec.stride, *spec.dilation)

    def width(blk: int) -> int:
        return blocks[blk][1].stop - blocks[blk][1].start

    def tile(blk: int, m0: int, slot: int, ws, pre=None, frac=None, level1=None) -> None:
        """:func:`_gemm_tile` for the tile (blk, m0), counted in the worker's stats."""
        cs, cols = blocks[blk]
        _gemm_tile(kern, ws, xp, wmat, b, geometry(blk), betas, k, (chunks, sample_chunks), m0,
                   min(total, m0 + rows_max) - m0, *col_exp[blk][:2], (tgamma1, tgamma2), counts[slot],
                   functools.partial(_exact_fallback, xp, wmat, b, spec, cs), cols, y2, bound2, pre, frac, level1)

    def columns(blk: int, m0: int | None, slot: int, ws) -> None:
        """Item: the block's column exponents over all of K (the graph stops if a weight is not finite); or, for
        the shared row tile at m0, only reference exponents from the first K-chunk
        (level 1 scales each chunk by its own: :func:`refconv.oracle._kernels.split_cols_chunk`, which also checks
        the weights) and the sample columns' exponents, then the block's prediction."""
        if m0 is None:
            col_exp[blk] = column_exponents(blk)
            if not col_exp[blk][2]:
                graph.stop()
            return
        j0 = blocks[blk][1].start
        st = np.zeros((_NSTATS, width(blk)))
        eb = np.zeros((_NSTATS, min(width(blk), _SAMPLE_COLS)))
        sample_w = samples[offsets[blk] : offsets[blk + 1]].reshape(k, sample_cols[blk])
        if not (kern.col_exponents(wmat[: chunks[0][1]], j0, st, np.empty((1, 0)))
                and kern.col_exponents(wmat, j0, eb, sample_w)):
            graph.stop()
            return
        refs[blk] = st[0].copy()
        col_exp[blk] = (None, sample_w, True)  # (the exponents over all of K come with level 1)
        graph.wait(("sample", m0))  # (an earlier item: taken already; skipped if the graph stopped)
        if not graph.stopped:
            predict(blk, m0, slot, ws, eb)

    def predict(blk: int, m0: int, slot: int, ws, eb=None) -> None:
        """Item: :func:`_predict` for the block and the shared row tile at m0 (``eb``: the sample columns'
        exponents, if the block's are not known yet); then the whole tile at level 2 if that is predicted to be
        needed."""
        fracs[blk] = _predict(kern, ws, xp, geometry(blk), betas[0], wmat, blocks[blk][1], col_exp[blk][1],
                              sample_chunks, m0, min(total, m0 + rows_max) - m0,
                              col_exp[blk][0] if eb is None else eb, b, k, tgamma1, sample_rows[m0])
        if fracs[blk] > _REFINE_FRACTION:
            if col_exp[blk][0] is None:  # (only the first chunk's were found): exponents over all of K
                col_exp[blk] = column_exponents(blk)
                if not col_exp[blk][2]:
                    graph.stop()
                    return
            tile(blk, m0, slot, ws, frac=fracs[blk])

    def tile_sample_rows(blk: int, m0: int, pre: tuple, xs_out: list, slot: int, ws) -> None:
        """Item: the prediction sample's rows of the shared row tile at m0, split once for all its blocks."""
        sample_rows[m0] = _sample_rows(kern, ws, xp, geometry(blk), betas[0], sample_chunks, m0,
                                       min(total, m0 + rows_max) - m0, xs_out, pre[1])

    def tile_row_exponents(blk: int, m0: int, pre: tuple, lo: int, hi: int, slot: int, ws) -> None:
        """Item: the exponents of rows lo .. hi of the shared row tile at m0."""
        kern.row_exponents(xp, m0 + lo, *geometry(blk), pre[1][lo:hi])

    def split_tile_chunk(group: range, m0: int, pre: tuple, ci: int, slot: int, ws) -> None:
        """Item: the digits of K-chunk ci of the shared row tile at m0, their sums added to the rows' (in chunk
        order: each chunk's item waits for the previous one's); none if every block of the group is known to go
        to level 2."""
        if all(fracs.get(blk, 0.0) > _REFINE_FRACTION for blk in group):
            return
        (xs, a1r1), st = pre[0][ci], pre[1]
        kern.split_rows(xp, m0, *geometry(group[0]), betas[0], chunks[ci][0], False, xs, *_halves(a1r1), none2, none2,
                        st, none2)

    def level1_chunk(blk: int, m0: int, ci: int, pre: tuple, slot: int, ws) -> None:
        """Item: level 1 of K-chunk ci of a block of the shared row tile, summed into this worker's arrays; the worker
        that sums the block's last chunk finishes the tile (merging every worker's sums)."""
        if fracs[blk] > _REFINE_FRACTION:
            return
        *acc, s_c = accs[slot][blk]
        first = blk not in started[slot]
        ref = refs.get(blk)
        if first and ref is None:
            s_c[:] = col_exp[blk][0]  # exponents and lossy flags; the sums start at zero
        elif first:
            s_c[:] = 0.0
            s_c[0], s_c[2] = -np.inf, np.inf  # (running maximum and minimum)
        if not _level1_chunk(kern, ws, wmat, betas[0], chunks[ci][0], blocks[blk][1], pre[0][ci], acc, s_c, first,
                             ref):
            graph.stop()  # a weight is not finite
            return
        started[slot].add(blk)
        with lock:
            remaining[blk] -= 1
            last = remaining[blk] == 0
        if not last:
            return
        parts = [accs[w][blk] for w in range(workers) if blk in started[w]]
        level1 = _merge_level1(kern, parts, pre[1], k, betas[0], ref)
        if level1 is None:  # a chunk's exponents too far from the reference: exponents over all of K, level 1 anew
            col_exp[blk] = column_exponents(blk)
        else:
            eb = level1[2].T.copy()  # exponents, lossy flags and Σw² (bounds: level 2, later row tiles' level 1)
            eb[[1, 4, 5]] = 0.0
            col_exp[blk] = (eb, col_exp[blk][1], True)
        tile(blk, m0, slot, ws, pre, fracs[blk], level1)

    with _scratch.arena("caller") as main_ws:
        samples = main_ws.array("samples", (int(offsets[-1]),))
        counts = [ExactStats() for _ in range(workers)]
        col_exp: list = [None] * len(blocks)
        col_keys = [("columns", blk) for blk in range(len(blocks))]
        lock = threading.Lock()
        sample_rows: dict[int, tuple] = {}  # a shared row tile's sample rows (:func:`_sample_rows`), by m0
        if not share:  # column exponents, then the tiles, to whichever worker is free
            graph = _TaskGraph()
            for blk in range(len(blocks)):
                graph.add(col_keys[blk], functools.partial(columns, blk, None))
            for blk, m0 in tiles:  # (after all the exponents: no output is written if a weight is not finite)
                graph.add(("tile", blk, m0), functools.partial(tile, blk, m0), col_keys)
            graph.run(workers)
        per_group = -(-og // nb)
        for g0 in range(0, len(blocks), per_group) if share else ():
            group = range(g0, g0 + per_group)
            for m0 in range(0, total, rows_max):
                # One graph per shared row tile: its row split, the blocks' column exponents (in the first) and
                # predictions (then level 2 of the blocks predicted to need it), level 1 by (block, K-chunk).
                graph = _TaskGraph()
                fracs: dict[int, float] = {}
                refs: dict[int, np.ndarray] = {}  # the blocks whose level 1 scales each K-chunk by its own exponents
                rows = min(total, m0 + rows_max) - m0
                st = main_ws.array("pre_st", (rows, _NSTATS))
                st.fill(0.0)
                # The row digits of a K-chunk live in one of `ring` buffers, reused once that chunk's level 1 is
                # done: the same few MiB each chunk and call, in cache, not 3·8·K bytes a row.
                ring = min(len(chunks), 2 + -(-workers // len(group)))
                pre = ([tuple(main_ws.array(f"pre{i}_{ci % ring}", ((1 + i) * rows, c_end - c)) for i in range(2))
                        for ci, (c, c_end) in enumerate(chunks)], st)
                # The rows' exponents (a piece per worker), the prediction sample's rows (split once for the
                # blocks), the blocks' column exponents (in the first tile) and predictions, then each K-chunk's
                # row digits just before the level 1 of its blocks, so that they are read while in cache (chunk
                # items in chunk order: the rows' sums).
                cuts = sorted({rows * i // workers for i in range(workers + 1)})
                exp_keys = [("rowexp", lo) for lo in cuts[:-1]]
                for lo, hi in zip(cuts[:-1], cuts[1:]):
                    graph.add(("rowexp", lo), functools.partial(tile_row_exponents, g0, m0, pre, lo, hi))
                sample_xs = [main_ws.array(f"sample_xs{i}", (min(rows, _SAMPLE_ROWS), c_end - c))
                             for i, (c, c_end) in enumerate(sample_chunks)]
                graph.add(("sample", m0), functools.partial(tile_sample_rows, g0, m0, pre, sample_xs), exp_keys)
                first = col_exp[0] is None
                for blk in group:  # (in the first tile the column exponents are found before waiting for the sample)
                    graph.add(col_keys[blk], functools.partial(columns if first else predict, blk, m0),
                              [] if first else [("sample", m0)])
                for blk in range(len(blocks)) if first else ():  # the other groups' blocks: exponents over all of K
                    if blk not in group:
                        graph.add(col_keys[blk], functools.partial(columns, blk, None))
                accs = [{blk: tuple(main_ws.array(f"acc{w}_{blk - g0}_{i}", (_NSTATS if i == 3 else rows, width(blk)))
                                    for i in range(4)) for blk in group} for w in range(workers)]
                started: list[set[int]] = [set() for _ in range(workers)]
                remaining = {blk: len(chunks) for blk in group}
                for ci in range(len(chunks) + 1):
                    if ci < len(chunks):
                        graph.add(("rows", ci), functools.partial(split_tile_chunk, group, m0, pre, ci),
                                  [*exp_keys, *([("rows", ci - 1)] if ci else []),
                                   *([("level1", blk, ci - ring) for blk in group] if ci >= ring else [])])
                    for blk in group if ci else ():
                        graph.add(("level1", blk, ci - 1), functools.partial(level1_chunk, blk, m0, ci - 1, pre),
                                  [col_keys[blk], ("rows", ci - 1)])
                graph.run(workers)
                if graph.stopped:  # (a weight is not finite)
                    return False
        if graph.stopped:
            return False
    for part in counts:
        stats.pair_checks += part.pair_checks
        stats.refined_tiles += part.refined_tiles
        stats.fallbacks += part.fallbacks
    return True


def _gemm_tile(kern, ws, xp, wmat, b, geo, betas, k, all_chunks, m0, rows, eb, sample_w, tgammas, stats, fallback,
               cols, y2, bound2, pre=None, frac=None, level1=None) -> None:
    """One tile of the GEMM path: output rows m0 .. m0 + rows x the columns ``cols`` of wmat (K x O).

    ``ws``: the worker's arena; ``all_chunks``: the K-chunks of the levels and of the sample;
    ``eb``: the columns' exponents; ``sample_w``: a contiguous copy of the first columns (the
    prediction sample's), or empty (then the sample reads them from wmat); ``pre``: the tile
    rows' digits per K-chunk and their (unfinished) statistics, if split beforehand; ``frac``:
    the predicted undecided share (:func:`_predict`), if already known; ``level1``: level 1's
    results (as :func:`_level_pass` returns them), if already computed."""
    tgamma1, tgamma2 = tgammas
    chunks, sample_chunks = all_chunks
    ncol = cols.stop - cols.start
    has_bias = b is not None
    bias = _block_bias(b, cols)
    ea = np.zeros((rows, _NSTATS))
    if pre is None:
        kern.row_exponents(xp, m0, *geo, ea)
    else:
        ea[:, 0], ea[:, 2] = pre[1][:, 0], pre[1][:, 2]  # exponents and lossy flags; the sums start at zero
    beta1, beta2 = betas
    level_pass = functools.partial(_level_pass, kern, ws, xp, geo)
    if frac is None:
        frac = _predict(kern, ws, xp, geo, beta1, wmat, cols, sample_w, sample_chunks, m0, rows, eb, b, k, tgamma1)
    vals, errb = ws.array("vals", (rows, ncol)), ws.array("errb", (rows, ncol))
    decided = ws.array("decided", (rows, ncol), bool)
    errb.fill(np.inf)
    decided.fill(False)
    limit = _REFINE_FRACTION * vals.size
    if frac <= _REFINE_FRACTION:  # level 1: p1 + a float tail of relative size 2^-β
        (p1, p1lo, t), s_a, s_b, _, _ = level1 or level_pass(beta1, wmat, cols, chunks, m0, ea, eb, 1, pre)
        kern.combine_level1(p1, p1lo, t, s_a, s_b, bias, has_bias, k, tgamma1, vals, decided, errb)
        del p1, p1lo, t
    if np.count_nonzero(~decided) > limit:  # level 2: two more exact GEMMs, a tail of size 2^-2β
        stats.refined_tiles += 1
        (p1, x12, x21, t2), s_a, s_b, s2_a, s2_b = level_pass(beta2, wmat, cols, chunks, m0, ea, eb, 2)
        vals2, errb2 = ws.array("vals2", vals.shape), ws.array("errb2", vals.shape)
        dec2 = ws.array("decided2", vals.shape, bool)
        kern.combine_level2(p1, x12, x21, t2, s_a, s_b, s2_a, s2_b, bias, has_bias, k, tgamma2,
                            vals2, dec2, errb2)
        del p1, x12, x21, t2
        take = ~decided
        vals[take], errb[take] = vals2[take], errb2[take]
        decided |= dec2
    kahan = bound2 is not None
    if kahan:  # correctly rounded: half an ulp (a bound that does not depend on BLAS's order)
        kern.half_ulp_where(vals.reshape(-1), decided.reshape(-1), errb.reshape(-1))
    _finish_pairs(kern, xp, m0, geo, wmat, chunks, s_a, s_b, bias, has_bias, decided, vals, errb, kahan,
                  stats, fallback, cols.start)
    y2[m0 : m0 + rows, cols] = vals
    if kahan:
        bound2[m0 : m0 + rows, cols] = errb


class _TaskGraph:
    """Items dealt, in the order added, to the worker threads that run the graph together; each item first waits for
    the items it depends on. Those were added earlier, so every wait is for an item that another worker is running
    (no deadlock, also with other calls' items queued on the same pool). Items are functions of (worker slot,
    worker arena). An item that raises, or :meth:`stop`, stops the graph: the workers finish what they run and
    take nothing more; the error reaches the caller."""

    def __init__(self) -> None:
        self._items: list = []
        self._done: dict = {}  # per item a lock, held until the item ends (made in ≈ 0.2 µs; a threading.Event, 10)
        self._lock = threading.Lock()
        self._next = 0
        self.stopped = False

    def add(self, key, fn, deps=()) -> None:
        if key in self._done:
            raise ValueError(f"task graph: the key {key!r} is taken (an item's completion would release another's)")
        self._done[key] = done = threading.Lock()
        done.acquire()
        self._items.append((key, fn, [self._done[d] for d in deps]))

    def stop(self) -> None:
        self.stopped = True

    def wait(self, key) -> None:
        """Inside an item: wait for the item ``key``, added before this one (so already taken by a worker)."""
        _wait_for(self._done[key])

    def run(self, workers: int) -> None:
        """Run the items on the calling thread and ``workers - 1`` helper threads (the caller starts at once,
        whatever the helpers' wake-up takes); returns, or raises the first error, once every worker has
        finished, so that none still uses the caller's buffers. The workers are pinned to CPUs of their own
        while they run (:func:`_worker_cpus`)."""
        pinning = workers > 1 and _pin_guard.acquire(blocking=False)  # (one run at a time pins its workers)
        try:
            cpus = _worker_cpus(workers) if pinning else None
            helpers = [_worker_pool(workers - 1).submit(self._work, slot, cpus) for slot in range(1, workers)]
            try:
                self._work(0, cpus)
            finally:
                concurrent.futures.wait(helpers)
        finally:
            if pinning:
                _pin_guard.release()
        for helper in helpers:
            helper.result()

    def _work(self, slot: int, cpus: list[int] | None = None) -> None:
        import numba

        numba.set_num_threads(1)
        with _scratch.arena("worker") as ws, _pinned_to(None if cpus is None else cpus[slot]):
            while not self.stopped:
                with self._lock:
                    if self._next == len(self._items):
                        return
                    key, fn, deps = self._items[self._next]
                    self._next += 1
                try:
                    for done in deps:
                        _wait_for(done)
                    if not self.stopped:
                        fn(slot, ws)
                except BaseException:
                    self.stopped = True
                    raise
                finally:
                    self._done[key].release()


def _wait_for(done: threading.Lock) -> None:
    """Wait until the item whose lock ``done`` is ends (and let the next waiter through)."""
    done.acquire()
    done.release()


_pin_guard = threading.Lock()  # held by the run whose workers are pinned


def _worker_cpus(workers: int) -> list[int] | None:
    """The CPUs a run's workers are pinned to (worker i to the i-th), or None to leave them to the scheduler.

    Pinned only where the workers are as many as the CPUs this thread may run on (numba's default thread count
    on an unrestricted process): each then has a CPU of its own, and pinning takes none from anyone else. Unpinned,
    the workers sleep and wake many times per call (the GIL around every kernel and GEMM, the graph's waits), and
    Linux often wakes a thread onto the CPU of the thread that woke it, where it waits, queued behind a running
    worker, until the load balancer moves it: on the 2-vCPU benchmark VM the seed call's two threads stalled 7-8
    times per call for ≈ 2.5 ms each that way (1.6 and 0.9 migrations per call), and 1.5-3 times pinned (no
    migration); its median time fell by 11-16 % (interleaved rounds), the longer benchmark shapes' moved by at most
    ± 4 % (benchmarks/RESULTS.md, "Stop 20"). Never on platforms without ``os.sched_setaffinity`` or where the
    environment variable ``REFCONV_PIN_THREADS`` is ``0``.

    >>> import os
    >>> cpus = _worker_cpus(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else None
    >>> cpus is None or cpus == sorted(os.sched_getaffinity(0))
    True
    """
    if os.environ.get("REFCONV_PIN_THREADS", "1").strip() == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except OSError:
        return None
    return cpus if len(cpus) == workers else None


@contextlib.contextmanager
def _pinned_to(cpu: int | None) -> Iterator[None]:
    """Inside the block the calling thread runs on ``cpu`` only (None: unchanged); its CPU set is restored after.
    (On Linux ``os.sched_setaffinity(0, ...)`` sets the calling thread's, not the process's.) Where the system
    refuses, the thread runs unpinned."""
    try:
        before = None if cpu is None else os.sched_getaffinity(0)
        if before is not None:
            os.sched_setaffinity(0, {cpu})
    except OSError:
        before = None
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)


def _merge_level1(kern, parts: list, row_st: np.ndarray, k: int, beta: int, ref=None) -> tuple | None:
    """Level 1's results for a block (as :func:`_level_pass` returns them) from the workers' partial sums ``parts``
    ((p1, p1lo, t, column statistics) each, over disjoint K-chunks) and the rows' unfinished statistics.

    With ``ref`` (the columns' reference exponents: chunk-scaled level 1) the column statistics are those of
    :func:`refconv.oracle._kernels.split_cols_chunk`, and the sums are taken to the units of the exponents over
    all of K; None if some chunk's exponents were too far from the reference for the sums to be exact."""
    (p1, p1lo, t, s_c), *rest = parts
    for q1, q1lo, qt, q_c in rest:
        kern.merge_level1(p1, p1lo, t, q1, q1lo, qt)
        if ref is None:
            s_c[1] += q_c[1]  # Σ|r1| (the only column sum level 1 takes: :func:`_level1_chunk`)
        else:
            s_c[[0, 4]] = np.maximum(s_c[[0, 4]], q_c[[0, 4]])
            s_c[[1, 3]] += q_c[[1, 3]]
            s_c[2] = np.minimum(s_c[2], q_c[2])
    if ref is not None:
        if s_c[4].any():
            return None
        eb = np.empty_like(s_c)
        kern.chunk_units_to_column(p1, p1lo, t, s_c, ref, eb)
        s_c = eb
    return (p1, p1lo, t), *_finish_level1_stats(kern, row_st.copy(), s_c, k, beta), None, None


def _finish_level1_stats(kern, s_a: np.ndarray, s_c: np.ndarray, k: int, beta: int) -> tuple[np.ndarray, np.ndarray]:
    """Level 1's row and column statistics as bounds (rows: (rows, _NSTATS); columns: (_NSTATS, cols) -> transposed),
    the columns' Σr1² and Σa1² from :func:`refconv.oracle._kernels.level1_col_bounds`."""
    s_b = np.ascontiguousarray(s_c.T)
    for st in (s_a, s_b):
        kern.finish_stats(st, k, (1,))
    kern.level1_col_bounds(s_b, k, beta)
    return s_a, s_b


def _block_bias(b, cols: slice) -> np.ndarray:
    """The bias of the columns ``cols``, contiguous (a dummy of one zero without bias)."""
    return np.zeros(1) if b is None else np.ascontiguousarray(b[cols])


def _sample_rows(kern, ws, xp, geo, beta1, sample_chunks, m0, rows, xs_out=None, st=None):
    """The prediction sample's rows of the tile at m0 (its middle _SAMPLE_ROWS): scaled, per K-chunk of
    ``sample_chunks`` (into ``xs_out`` if given, else arrays of the arena ``ws``), and their unfinished statistics,
    from the rows' exponents and lossy flags ``st`` if known (else found here)."""
    nr = min(rows, _SAMPLE_ROWS)
    r0 = (rows - nr) // 2
    none2 = np.empty((1, 1))
    s_a = np.zeros((nr, _NSTATS))
    if st is None:
        kern.row_exponents(xp, m0 + r0, *geo, s_a)
    else:
        s_a[:, 0], s_a[:, 2] = st[r0 : r0 + nr, 0], st[r0 : r0 + nr, 2]
    xs_chunks = []
    for i, (c, c_end) in enumerate(sample_chunks):
        xs = ws.array(f"sample_a{i}", (nr, c_end - c)) if xs_out is None else xs_out[i]
        a1, r1 = ws.array("sample_d1", xs.shape), ws.array("sample_r1", xs.shape)
        kern.split_rows(xp, m0 + r0, *geo, beta1, c, False, xs, a1, r1, none2, none2, s_a, none2)
        xs_chunks.append(xs)
    return xs_chunks, s_a


def _predict(kern, ws, xp, geo, beta1, wmat, cols, sample_w, sample_chunks, m0, rows, eb, b, k, tgamma1,
             sample=None) -> float:
    """The share of a tile's elements level 1 is predicted to leave undecided: Σ min(1, tail bound / half gap) over
    a block of _SAMPLE_ROWS x _SAMPLE_COLS in its middle (:func:`refconv.oracle._kernels.predict_undecided`), with
    the scaled rows times the columns' first digits standing in for p1 (the columns split here, in
    ``sample_chunks``; the rows too, or taken from ``sample``, as :func:`_sample_rows` returns them). Above
    _REFINE_FRACTION the tile goes straight to level 2 (saving level 1's tail GEMMs). Small tiles (at most 4 such
    blocks) just try level 1: 0."""
    ncol = cols.stop - cols.start
    if rows * ncol <= 4 * _SAMPLE_ROWS * _SAMPLE_COLS:
        return 0.0
    xs_chunks, s_a = sample or _sample_rows(kern, ws, xp, geo, beta1, sample_chunks, m0, rows)
    s_a = s_a.copy()
    nr, nj = s_a.shape[0], min(ncol, _SAMPLE_COLS)
    none2 = np.empty((1, 1))
    src, j0 = (sample_w, 0) if sample_w.shape[1] else (wmat, cols.start)
    s_c = eb[:, :nj].copy()
    p1, tmp = ws.array("sample_p1", (nr, nj)), ws.array("sample_tmp", (nr, nj))
    for (c, c_end), xs in zip(sample_chunks, xs_chunks):
        a1_b, r1_b = (ws.array(f"sample_b{i}", (c_end - c, nj)) for i in range(2))
        kern.split_cols(src, beta1, c, j0, False, True, a1_b, r1_b, none2, none2, s_c, none2)
        np.matmul(xs, a1_b, out=tmp if c else p1)
        if c:
            p1 += tmp
    s_b = np.ascontiguousarray(s_c.T)
    for st in (s_a, s_b):
        kern.finish_stats(st, k, (1,))
    bias = _block_bias(b, slice(cols.start, cols.start + nj))
    return kern.predict_undecided(p1, s_a, s_b, bias, b is not None, k, tgamma1) / p1.size


def _level1_chunk(kern, ws, wmat, beta, c, cols, row_digits, acc, s_c, first, ref=None) -> bool:
    """Level 1 of one K-chunk (from c) of a column block, its rows split (``row_digits`` = xs and a1 stacked on r1):
    the weights' digits (their Σ|r1| into s_c; the squares are bounded afterwards: :func:`_finish_level1_stats`),
    the GEMMs [a1_A; r1_A]·a1_B (a1_A·a1_B exact, r1_A·a1_B of the tail: one product, so a1_B is read once) and
    xs_A·r1_B (the tail), added to acc = (p1, p1lo, t) by :func:`refconv.oracle._kernels.accumulate_level1`
    (``first``: start the sums).

    The columns are scaled by their exponents over all of K (in s_c[0]), or with ``ref`` (the columns'
    reference exponents) by the chunk's own (:func:`refconv.oracle._kernels.split_cols_chunk`, whose statistics
    s_c then holds); returns False if the chunk has a value that is not finite (only checked with ``ref``)."""
    xs_a, a1r1_a = row_digits
    nr, width = xs_a.shape
    nj = cols.stop - cols.start
    none2 = np.empty((1, 1))
    a1_b, r1_b = (ws.array(f"b{i}", (width, nj)) for i in range(2))
    rel = ws.array("rel", (nj,))
    if ref is None:
        rel.fill(1.0)
        kern.split_cols(wmat, beta, c, cols.start, False, False, a1_b, r1_b, none2, none2, s_c, none2)
    elif not kern.split_cols_chunk(wmat, beta, c, cols.start, ref, a1_b, r1_b, s_c, rel):
        return False
    stacked, tail = ws.array("prod_a1", (2 * nr, nj)), ws.array("prod_r1", (nr, nj))
    np.matmul(a1r1_a, a1_b, out=stacked)
    np.matmul(xs_a, r1_b, out=tail)
    kern.accumulate_level1(first, *acc, stacked[:nr], tail, stacked[nr:], rel)
    return True


def _halves(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top and bottom halves of a: digits stacked so that one GEMM multiplies both by the same factor."""
    return a[: len(a) // 2], a[len(a) // 2 :]


def _level_pass(kern, ws, xp, geo, beta, wmat, cols, chunks, m0, ea, eb, level, pre=None):
    """Digits of im2col rows m0 .. m0 + len(ea) and of the weight columns ``cols`` over all K-chunks, with one
    level's GEMMs.

    ``ea`` / ``eb`` hold the row / column exponents and lossy flags (:func:`row_exponents`,
    :func:`col_exponents`); the chunk buffers and products are arrays of the arena ``ws``
    ``pre`` (level 1): the rows' digits per chunk and their sums, split beforehand. Level 1 computes
    [p1, p1lo, tail], level 2 [p1, x12, x21, tail2]. The exact digit products are accumulated
    exactly (digit products and their running sums stay below 2^53), the float tail per
    chunk. Returns (products, row stats, column stats, second-digit row and column stats).
    """
    none2 = np.empty((1, 1))
    two = level == 2
    k = wmat.shape[0]
    nr, nj = ea.shape[0], cols.stop - cols.start
    s_a, s_c = (ea if pre is None else pre[1]).copy(), eb.copy()  # exponents, lossy flags and sums so far
    s2_a, s2_c = (np.zeros((nr, 1)), np.zeros((1, nj))) if two else (none2, none2)
    out = [ws.array(f"out{i}", (nr, nj)) for i in range(4 if two else 2)]
    tmp = ws.array("tmp", (nr, nj))
    p1lo = none2 if two else ws.array("p1lo", (nr, nj))
    for ci, (c, c_end) in enumerate(chunks):
        width = c_end - c
        first = c == 0
        if pre is None:
            xs_a, a1r1_a = ws.array("a0", (nr, width)), ws.array("a1r1", (2 * nr, width))
            (a1_a, r1_a), (a2_a, r2_a) = _halves(a1r1_a), (_halves(ws.array("a2r2", (2 * nr, width))) if two
                                                            else (none2, none2))
            kern.split_rows(xp, m0, *geo, beta, c, two, xs_a, a1_a, r1_a, a2_a, r2_a, s_a, s2_a)
        else:
            (xs_a, a1r1_a), a2_a, r2_a = pre[0][ci], none2, none2
            a1_a, r1_a = _halves(a1r1_a)
        if not two:  # p1 exact per chunk only: kept exact as a pair (p1, p1lo)
            _level1_chunk(kern, ws, wmat, beta, c, cols, (xs_a, a1r1_a), (out[0], p1lo, out[1]), s_c, first)
            continue
        a1_b, r1_b, a2_b, r2_b = (ws.array(f"b{i}", (width, nj)) for i in range(4))
        kern.split_cols(wmat, beta, c, cols.start, True, True, a1_b, r1_b, a2_b, r2_b, s_c, s2_c)
        for acc, (fa, fb) in zip(out, [(a1_a, a1_b), (a1_a, a2_b), (a2_a, a1_b)]):  # exact
            np.matmul(fa, fb, out=acc if first else tmp)  # (the arena's arrays are not zeroed)
            if not first:
                acc += tmp
        for q, (fa, fb) in enumerate([(a1_a, r2_b), (r1_a, r1_b), (r2_a, a1_b)]):  # the tail
            np.matmul(fa, fb, out=out[-1] if first and q == 0 else tmp)
            if not (first and q == 0):
                out[-1] += tmp
    if not two:
        return [out[0], p1lo, out[1]], *_finish_level1_stats(kern, s_a, s_c, k, beta), none2, none2
    s_b = np.ascontiguousarray(s_c.T)
    for st in (s_a, s_b):
        kern.finish_stats(st, k, (1,))
    s2_b = np.ascontiguousarray(s2_c.T)
    for st in (s2_a, s2_b):
        kern.finish_stats(st, k, (0,))
    return out, s_a, s_b, s2_a, s2_b


def _finish_pairs(kern, xp, m0, geo, wmat, chunks, s_a, s_b, bias, has_bias, decided, vals, errb, kahan, stats,
                  fallback, col0) -> None:
    """Per-element Dot2 for what the GEMM levels left open (streamed over the K-chunks of the weights, so
    no column is gathered from the whole matrix), then the exact integer dot product."""
    ii, jj = np.nonzero(~decided)
    if not len(ii):
        return
    stats.pair_checks += len(ii)
    k = wmat.shape[0]
    state = np.empty((len(ii), 4))
    kern.pairs_start(s_a, s_b, bias, has_bias, ii, jj, state)
    uniq, slot = np.unique(jj, return_inverse=True)
    kern.pairs_chunks(xp, m0, *geo, wmat, chunks[0][1], s_a, s_b, ii, jj, uniq + col0, slot.reshape(-1), state)
    pv, pb, pd = np.empty(len(ii)), np.empty(len(ii)), np.empty(len(ii), dtype=bool)
    kern.pairs_finish(s_a, s_b, k, has_bias, ii, jj, state, pv, pb, pd)
    if kahan:
        # Correctly rounded elements report half an ulp whichever stage certified them, so the bound does not
        # depend on which elements BLAS's rounding left to this stage; the others keep Dot2's value and bound.
        kern.half_ulp_where(pv, pd, pb)
        pd |= np.isfinite(pb)
    vals[ii, jj], errb[ii, jj] = pv, pb
    oh, ow = geo[0], geo[1]
    for i, j in zip(ii[~pd].tolist(), jj[~pd].tolist()):
        v = fallback(*np.unravel_index(m0 + i, (xp.shape[0], oh, ow)), col0 + j)
        vals[i, j], errb[i, j] = v, rounding_bound(np.array([v]))[0]
        stats.fallbacks += 1


def rounding_bound(v: np.ndarray) -> np.ndarray:
    """The error bound of float64 values v, each the exact sum rounded once, as the fallbacks give them: half an
    ulp, at least 2^-1074 (a rounded zero may be inexact); inf where v is not finite."""
    from ._kernels import kernels

    half = np.empty_like(v)
    kernels().half_ulp_where(v, np.ones(v.shape, dtype=bool), half)
    return np.maximum(half, 2.0**-1074)


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
