"""Oracle performance paths: every fast path stays correctly rounded, bounded in memory and reproducible.

Speed itself is measured by ``benchmarks/bench_oracle.py``, never asserted here.
The "exact" method has two paths (Ozaki splitting onto BLAS, and a direct Numba
Dot2 kernel); the default picks one by shape, so each is forced here on the
shared Fraction-reference families (tests/test_oracle_reference.py), with tiny
workspaces so that row and column tiling and every certification level run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from test_oracle_reference import (
    FAMILIES,
    N_GEOMETRIES,
    assert_bitwise_equal,
    family_values,
    make_case,
    reference_conv2d,
)

import refconv
from refconv.oracle import exact as exact_mod
from refconv.spec import ConvSpec, prepare

PATHS = ("gemm", "direct")


def _run_exact(x, w, b, path, workspace_bytes=exact_mod.DEFAULT_WORKSPACE_BYTES, **geometry):
    xf, wf, bf, spec = prepare(x, w, b, **geometry)
    with np.errstate(all="ignore"):
        y, stats = exact_mod.conv2d_exact_nhwc(
            spec.x_to_nhwc(xf), spec.w_to_hwio(wf), bf, spec, workspace_bytes=workspace_bytes, path=path
        )
    return spec.y_from_nhwc(y), stats


_LEVELS: dict[str, int] = {"refined_tiles": 0, "pair_checks": 0, "fallbacks": 0}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gi", range(0, N_GEOMETRIES, 4))
def test_each_exact_path_is_correctly_rounded(path, family, gi):
    x, w, b, geometry = make_case(family, gi)
    want = reference_conv2d(x, w, b, **geometry)
    got, stats = _run_exact(x, w, b, path, workspace_bytes=4096, **geometry)
    assert stats.path == path
    for key in _LEVELS:
        _LEVELS[key] += getattr(stats, key)
    assert_bitwise_equal(got, want, f"path={path} family={family} geometry[{gi}]={geometry}")


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_chunks_are_correctly_rounded_on_every_value_family(family):
    """K = 1134 > 2·512 so the GEMM path streams three K-chunks: every value family (exponent spans past
    ±1000, subnormals, ties, cancellation, integers, NaN/inf) against the Fraction reference, with the
    default workspace and with a 64 KB one (one-row tiles, one-column weight blocks, strided chunk copies)."""
    from test_oracle_reference import family_values

    rng = np.random.default_rng([11, FAMILIES.index(family)])
    x, w, b = family_values(family, rng, (1, 3, 4, 126), (3, 3, 126, 18))
    geometry = dict(stride=(1, 2), padding="SAME")
    assert 3 * 3 * 126 > 2 * exact_mod._CHUNK
    want = reference_conv2d(x, w, b, **geometry)
    for workspace in (exact_mod.DEFAULT_WORKSPACE_BYTES, 2**16):
        got, stats = _run_exact(x, w, b, "gemm", workspace_bytes=workspace, **geometry)
        assert stats.path == "gemm"
        assert_bitwise_equal(got, want, f"family={family} workspace={workspace}")


def test_gemm_path_reached_every_certification_level():
    """Runs after the grid above (same module): the refinement, Dot2 re-check and integer fallback all ran."""
    if not any(_LEVELS.values()):
        pytest.skip("grid not run in this process (xdist split)")
    for key, count in _LEVELS.items():
        assert count > 0, f"no {key} in the whole family grid: that level is untested ({_LEVELS})"


@pytest.mark.parametrize("weights", ["uniform", "normal"])
def test_gemm_path_with_chunked_tail_matches_direct_and_mpmath(weights):
    """K = 1170 > 1024 streams three K-chunks (512, 512, 146); normal weights (cancellation) need the
    two-digit level, which the p1 sample predicts (so the tile goes straight there)."""
    rng = np.random.default_rng(3)
    x = rng.random((2, 10, 9, 130))  # 100 x 24 outputs: big enough for the prediction sample
    w = rng.random((3, 3, 130, 24)) if weights == "uniform" else rng.standard_normal((3, 3, 130, 24))
    b = rng.standard_normal(24)
    geometry = dict(stride=(1, 2), padding="SAME")
    assert 2 * exact_mod._CHUNK < 3 * 3 * 130, "K must span several chunks"
    gemm, st = _run_exact(x, w, b, "gemm", **geometry)
    direct, _ = _run_exact(x, w, b, "direct", **geometry)
    np.testing.assert_array_equal(gemm, direct, err_msg="the two correctly rounded paths disagree")
    pts = refconv.conv2d_points(x, w, b, sample=40, seed=1, **geometry)
    np.testing.assert_array_equal(gemm[tuple(pts.positions.T)], pts.values, err_msg="gemm path vs exact mpmath sums")
    if weights == "normal":
        assert st.refined_tiles > 0, f"cancellation should need the two-digit level: {st}"
    else:
        assert st.refined_tiles == 0, f"positive sums are decided by level 1: {st}"
    assert st.pair_checks < 0.05 * gemm.size, f"the levels should decide almost everything: {st}"


def test_column_and_row_tiling_give_identical_results():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 9, 9, 40)), rng.standard_normal((3, 3, 40, 48))
    full, _ = _run_exact(x, w, None, "gemm", padding="SAME")
    tiny, _ = _run_exact(x, w, None, "gemm", workspace_bytes=1, padding="SAME")
    np.testing.assert_array_equal(tiny, full, err_msg="a one-row, one-channel tiling changed the result")


def test_workspace_bounds_peak_memory():
    """Peak allocation is inputs + output + the workspace (+ small per-row buffers), not the im2col size."""
    rng = np.random.default_rng(5)
    x, w = rng.random((1, 48, 48, 64)), rng.random((3, 3, 64, 64))
    im2col = 48 * 48 * 9 * 64 * 8  # 10.6 MB: the fast path keeps ~5 arrays of this size without tiling
    workspace = 2**20
    refconv.conv2d(x[:, :8, :8], w, padding="SAME", workspace_bytes=workspace)  # compile outside the trace
    refconv.oracle.release_workspace()  # the buffers kept between calls must be counted too
    tracemalloc.start()
    try:
        y = refconv.conv2d(x, w, padding="SAME", workspace_bytes=workspace)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    base = x.nbytes * 2 + w.nbytes * 2 + y.nbytes * 2  # padded copy of x, contiguous w, output and its layout copy
    assert peak < base + 3 * workspace + 2**20, f"peak {peak} B vs base {base} B + workspace {workspace} B"
    assert peak < im2col, "tiling did not bound the im2col buffers"


def test_kahan_returns_dot2_not_plain_summation():
    """Would catch fastmath (reassociation deletes the compensation): plain float sums get these wrong."""
    x = np.array([2.0**53, 1.0, -(2.0**53), 1.0, 3.0, -3.0 * (1 + 2.0**-52), 1e-30]).reshape(1, 1, 7, 1)
    w = np.array([1.0, 1.0, 1.0, 1.0, 1.0 + 2.0**-52, 1.0, 1.0]).reshape(1, 7, 1, 1)
    plain = float(np.sum(x.ravel() * w.ravel()))
    exact = refconv.conv2d(x, w)
    kahan = refconv.conv2d_with_info(x, w, method="kahan")
    assert plain != exact.item(), "test data must defeat plain summation"
    np.testing.assert_array_equal(kahan.y, exact, err_msg="kahan lost the compensation (fastmath?)")
    from refconv.oracle._kernels import kernels

    compiled = {name: k for name, k in vars(kernels()).items() if hasattr(k, "targetoptions")}
    assert {"dot2_general", "dot2_depthwise", "pairs_chunks"} <= set(compiled)
    for name, k in compiled.items():
        assert not k.targetoptions.get("fastmath"), f"{name} compiled with fastmath"


@pytest.mark.parametrize("cond", ["uniform", "cancelling"])
def test_kahan_within_its_bound_and_bound_is_tight(cond):
    rng = np.random.default_rng(6)
    x, w, b = rng.random((2, 8, 8, 24)), rng.standard_normal((3, 3, 24, 20)), rng.standard_normal(20)
    if cond == "cancelling":
        x[..., 12:] = x[..., :12]
        w[:, :, 12:] = -w[:, :, :12] * (1 + 2.0**-30)
    exact = refconv.conv2d(x, w, b, padding="SAME")
    res = refconv.conv2d_with_info(x, w, b, padding="SAME", method="kahan")
    err = np.abs(res.y - exact)
    assert np.all(err <= res.bound), f"kahan outside its bound at {np.argwhere(err > res.bound)[:3].tolist()}"
    ulp = np.spacing(np.abs(exact))
    assert np.all(res.bound <= 4 * ulp + 1e-300), "bound far looser than Dot2's (≈ one ulp here)"


_DETERMINISM_SCRIPT = r"""
import hashlib, json, numpy as np, refconv
rng = np.random.default_rng(11)
x, w, b = rng.standard_normal((2, 9, 11, 20)), rng.standard_normal((3, 3, 20, 32)), rng.random(32)
xd, wd = rng.standard_normal((2, 9, 11, 8)), rng.standard_normal((3, 3, 1, 8))
out = {}
for m in sorted(refconv.METHODS):
    if m == "mpmath":
        continue
    for name, args, kw in (("dense", (x, w, b), {}), ("depthwise", (xd, wd), {"groups": 8})):
        r = refconv.conv2d_with_info(*args, method=m, stride=(1, 2), padding="SAME", **kw)
        out[f"{m}-{name}"] = hashlib.sha256(r.y.tobytes() + r.bound.tobytes()).hexdigest()
print(json.dumps(out))
"""


def test_bitwise_identical_across_thread_counts_and_runs():
    runs = []
    for threads in ("1", "2", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        proc = subprocess.run([sys.executable, "-c", _DETERMINISM_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1] == runs[2], f"results depend on the thread count or the run: {runs}"


def test_direct_path_decides_all_zero_windows_without_fallback():
    x = np.zeros((1, 6, 6, 4))
    x[0, 0, 0] = 1.0
    w = np.ones((3, 3, 1, 4))
    y, stats = _run_exact(x, w, None, "direct", groups=4, padding="SAME")
    np.testing.assert_array_equal(y[0, 0, 0], np.ones(4), err_msg="impulse lost")
    assert stats.fallbacks == 0, f"all-zero windows went to the integer fallback: {stats}"
    assert not np.signbit(y).any(), "exact zeros must be +0.0"


@pytest.mark.parametrize("dps", [None, 40])
@pytest.mark.parametrize("family", FAMILIES)
def test_fast_point_evaluator_equals_mpmath_evaluator(family, dps):
    from refconv.oracle import _fastpoints, mp

    for gi in (1, 6, 11):
        x, w, b, geometry = make_case(family, gi)
        xf, wf, bf, spec = prepare(x, w, b, **geometry)
        xn, wn = spec.x_to_nhwc(xf), spec.w_to_hwio(wf)
        shape = (spec.N, *spec.out_hw, spec.O)
        flat = np.random.default_rng(gi).choice(int(np.prod(shape)), size=min(12, int(np.prod(shape))), replace=False)
        pts = np.stack(np.unravel_index(flat, shape), axis=1)
        with np.errstate(all="ignore"):
            fast = _fastpoints.output_points_nhwc(xn, wn, bf, spec, pts, dps)
            slow = mp.output_points_nhwc(xn, wn, bf, spec, pts, dps)
        if dps is None:
            np.testing.assert_array_equal(np.array(fast), np.array(slow), err_msg=f"{family} geometry[{gi}]")
        else:
            assert [v._mpf_ for v in fast] == [v._mpf_ for v in slow], f"{family} geometry[{gi}] at dps={dps}"


def test_fast_point_sum_rejects_overflowing_products_without_warnings():
    """A product that overflows in the fast TwoProduct sends the point to the exact evaluator: no RuntimeWarning (the
    exact fallback runs on worker threads, where a caller's np.errstate does not reach)."""
    import warnings

    from refconv.oracle._fastpoints import exact_point_sum

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert exact_point_sum(np.array([2.0**600, 1.0]), np.array([2.0**600, 1.0]), 0.0) is None
        n, q = exact_point_sum(np.array([2.0**500, 3.0]), np.array([2.0**-500, 0.5]), 0.25)
    assert n * 2.0**q == 2.75


def test_depthwise_kernel_equals_general_kernel_bitwise():
    from refconv.oracle._kernels import kernels

    kern = kernels()
    rng = np.random.default_rng(8)
    xp, w, b = rng.standard_normal((2, 9, 10, 6)), rng.standard_normal((3, 2, 1, 6)), rng.standard_normal(6)
    outs = []
    for fn, extra in ((kern.dot2_general, (6,)), (kern.dot2_depthwise, ())):
        arrs = [np.empty((2, 4, 8, 6)) for _ in range(3)]
        fn(xp, w, b, True, 2, 1, 1, 1, *extra, 4, 8, *arrs)
        outs.append(arrs)
    for got, want, name in zip(outs[1], outs[0], ("hi", "lo", "bound")):
        np.testing.assert_array_equal(got, want, err_msg=f"depthwise kernel {name} differs from the general kernel")


def test_rounds_to_matches_round_to_nearest_even():
    """The certification test hi ± err == hi: true exactly when every real within err of hi rounds to hi."""
    from refconv.oracle._kernels import kernels

    rounds_to = kernels().rounds_to
    for hi in (1.0, 1.5, 3.0, 2.0**-1000, 1.0 + 2.0**-52, 0.75, -1.0, -(1.0 + 2.0**-52)):
        up = np.spacing(abs(hi)) / 2  # half gap above |hi|
        down = (abs(hi) - np.nextafter(abs(hi), 0)) / 2  # half gap below (smaller at a power of two)
        small = min(up, down)
        assert rounds_to(hi, small / 2), hi
        assert not rounds_to(hi, small * (1 + 2.0**-20)), hi
        even = (np.frombuffer(np.float64(abs(hi)).tobytes(), np.int64)[0] & 1) == 0
        assert rounds_to(hi, small) == bool(even) or up != down, hi  # a tie rounds to hi only if hi is even


@pytest.mark.parametrize("family", ["uniform", "normal", "ties", "illcond", "mixed_cancel", "subnormal", "underflow"])
@pytest.mark.parametrize("shape", ["columns", "sampled", "rows", "groups", "shared_tiles", "tiny_shared_tiles"])
def test_gemm_path_is_the_same_for_any_worker_count(family, shape, monkeypatch):
    """Tiles dealt to 1, 2 or 3 worker threads (column blocks sharing rows split once, with and without the
    prediction sample, or row tiles cut to a multiple of the workers; "shared_tiles": two groups of shared row
    tiles, ten tiles each, so later tiles reuse the exponents the first one's chunk-scaled level 1 found;
    "tiny_shared_tiles": shared row tiles of fewer rows than workers):
    bitwise the same output and kahan bound, and the exact output equals the direct path's (Numba Dot2 + exact
    integer sums). These small shapes stand for large ones: the smallest tile and block cut for more workers
    are lifted to one row and one channel."""
    from refconv.oracle._im2col import pad_nhwc

    monkeypatch.setattr(exact_mod, "_MIN_ROWS", 1)
    monkeypatch.setattr(exact_mod, "_MIN_COLS", 1)

    rng = np.random.default_rng([21, FAMILIES.index(family)])
    xs, ws, groups = {"columns": ((1, 3, 4, 24), (3, 3, 24, 96), 1), "sampled": ((1, 5, 8, 16), (3, 3, 16, 256), 1),
                      "rows": ((2, 9, 7, 12), (3, 3, 12, 20), 1), "groups": ((1, 6, 6, 16), (2, 2, 8, 40), 2),
                      "shared_tiles": ((1, 8, 8, 16), (3, 3, 8, 64), 2),
                      "tiny_shared_tiles": ((2, 5, 2, 64), (3, 2, 64, 48), 1)}[shape]
    workspace = 150_000 if "shared_tiles" in shape else 2**26
    x, w, b = family_values(family, rng, xs, ws)
    with np.errstate(all="ignore"):
        x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
        b = None if b is None else np.asarray(b, np.float64)
        if not (np.isfinite(x).all() and np.isfinite(w).all() and (b is None or np.isfinite(b).all())):
            pytest.skip("the GEMM path takes finite values")
        spec = ConvSpec.from_arrays(x, w, b, padding="SAME", groups=groups)
        xp = np.ascontiguousarray(pad_nhwc(x, spec))
        outs = []
        for workers in (1, 2, 3):
            kc, nb, rows = exact_mod._gemm_plan(spec, workspace, workers)
            tiles = -(-spec.N * spec.out_hw[0] * spec.out_hw[1] // rows) * -(-(spec.O // groups) // nb) * groups
            assert workers == 1 or tiles % workers == 0 or tiles >= 4 * workers, (workers, kc, nb, rows)
            shape_y = (spec.N, *spec.out_hw, spec.O)
            y, yk, bound = np.empty(shape_y), np.empty(shape_y), np.empty(shape_y)
            assert exact_mod._gemm_exact(xp, w, b, spec, workspace, y, exact_mod.ExactStats(), None, workers)
            assert exact_mod._gemm_exact(xp, w, b, spec, workspace, yk, exact_mod.ExactStats(), bound, workers)
            outs.append((y, yk, bound))
        ref, _ = exact_mod.conv2d_exact_nhwc(x, w, b, spec, path="direct")  # correctly rounded too, another way
    assert_bitwise_equal(outs[0][0], ref, f"{family}/{shape}: exact GEMM path")
    for workers, (y, yk, bound) in zip((2, 3), outs[1:]):
        for got, want, what in zip((y, yk, bound), outs[0], ("exact", "kahan", "kahan bound")):
            assert_bitwise_equal(got, want, f"{family}/{shape}: {what} with {workers} workers")


def test_many_workers_share_k_chunks_instead_of_cutting_slivers(monkeypatch):
    """With more workers than 128-channel blocks (16 on a 16-core machine), the plan stops at blocks of 128
    channels and the workers share the row tile by (block, K-chunk) item (6 workers: 4 blocks, 12 items), or,
    with too few items for that, take the tiles (16 workers: 8 tiles, 8 workers). Bitwise the output and kahan
    bound of one worker, and correctly rounded."""
    from refconv.oracle._im2col import pad_nhwc

    merged = []
    real = exact_mod._merge_level1
    monkeypatch.setattr(exact_mod, "_merge_level1", lambda kern, parts, *a: merged.append(len(parts)) or real(
        kern, parts, *a))

    seed = ConvSpec.from_shapes((1, 16, 32, 256), (5, 5, 256, 512), stride=2, padding="SAME")
    assert [exact_mod._gemm_plan(seed, 2**28, n)[1] for n in (1, 2, 3, 4, 8, 16)] == [512, 256, 171, 128, 128, 128]
    resnet = ConvSpec.from_shapes((8, 56, 56, 64), (3, 3, 64, 64), padding="SAME")
    assert exact_mod._gemm_plan(resnet, 2**28, 16)[2] >= 128  # row tiles: no fewer than _MIN_ROWS rows
    rng = np.random.default_rng(5)
    x, w, b = rng.random((1, 8, 16, 160)), rng.random((3, 3, 160, 512)), rng.random(512)  # (level 1 decides)
    spec = ConvSpec.from_arrays(x, w, b, padding="SAME")  # 128 rows, K = 1440 in 3 chunks, 4 blocks of 128
    xp = np.ascontiguousarray(pad_nhwc(x, spec))
    outs = []
    for workers in (1, 6, 16):
        merged.clear()
        y, yk, bound = (np.empty(spec.output_shape) for _ in range(3))
        with exact_mod.single_threaded_blas():
            assert exact_mod._gemm_exact(xp, w, b, spec, 2**28, y, exact_mod.ExactStats(), None, workers)
            assert exact_mod._gemm_exact(xp, w, b, spec, 2**28, yk, exact_mod.ExactStats(), bound, workers)
        assert (len(merged), max(merged, default=0) > 1) == ((8, True) if workers == 6 else (0, False)), merged
        outs.append((y, yk, bound))
    ref, _ = exact_mod.conv2d_exact_nhwc(x, w, b, spec, path="direct")
    assert_bitwise_equal(outs[0][0], ref, "one worker against the direct path")
    for workers, out in zip((6, 16), outs[1:]):
        for got, want, what in zip(out, outs[0], ("exact", "kahan", "kahan bound")):
            assert_bitwise_equal(got, want, f"{what} with {workers} workers")


def test_gemm_path_checks_the_weights_on_its_way():
    """A NaN or inf weight is found by the column-exponent pass: both methods then apply the non-finite semantics
    (the conv with that weight set to 0, the outputs with a non-finite term overwritten), as if the weights had
    been checked first."""
    rng = np.random.default_rng(22)
    x, w = rng.random((1, 6, 6, 16)), rng.random((3, 3, 16, 32))
    for bad in (np.nan, np.inf):
        wb = w.copy()
        wb[1, 1, 3, 5] = bad
        res = refconv.conv2d_with_info(x, wb, method="kahan", padding="SAME")
        y = refconv.conv2d(x, wb, padding="SAME")
        assert res.stats["path"] == "gemm"
        np.testing.assert_array_equal(res.y[..., 5], y[..., 5])
        assert (np.isnan(y[..., 5]) if bad != bad else np.isposinf(y[..., 5])).all(), "every window meets the bad tap"
        np.testing.assert_array_equal(np.delete(y, 5, axis=-1), np.delete(refconv.conv2d(x, w, padding="SAME"), 5, -1))
    # A shared row tile reads most weights only while splitting them, chunk by chunk: found there too.
    from refconv.oracle._im2col import pad_nhwc

    x, w = rng.standard_normal((1, 4, 4, 128)), rng.standard_normal((3, 3, 128, 128))
    spec = ConvSpec.from_arrays(x, w, None, padding="SAME")
    assert exact_mod._gemm_plan(spec, 2_100_000, 2)[1] == 32  # (the shared plan: blocks of 32 columns)
    xp = np.ascontiguousarray(pad_nhwc(x, spec))
    for bad in (np.nan, -np.inf):
        wb = w.copy()
        wb.reshape(-1, 128)[700, 24] = bad  # (K-chunk 1; not one of block 0's 16 prediction-sample columns)
        for bound in (None, np.empty((1, 4, 4, 128))):
            y = np.empty((1, 4, 4, 128))
            assert not exact_mod._gemm_exact(xp, wb, None, spec, 2_800_000, y, exact_mod.ExactStats(), bound, 2)


def test_blas_limit_is_scoped():
    """BLAS runs single-threaded inside the block and gets its thread count back after it."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with exact_mod.single_threaded_blas() as limited:
        inside = blas_threads()
    assert blas_threads() == before
    if limited:
        assert inside and all(n == 1 for _, n in inside), inside
    with exact_mod.single_threaded_blas(wanted=False) as limited:
        assert not limited and blas_threads() == before
    # Overlapping blocks (two threads), left in the other order than entered: the count comes back anyway.
    import threading

    entered, leave_first = threading.Barrier(2), threading.Event()

    def first():
        with exact_mod.single_threaded_blas():
            entered.wait()
        leave_first.set()

    def second():
        with exact_mod.single_threaded_blas():
            entered.wait()
            leave_first.wait()

    threads = [threading.Thread(target=f) for f in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert blas_threads() == before, "overlapping limits must not leave BLAS single-threaded"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity is a Linux call")
def test_a_run_pins_its_workers_to_cpus_of_their_own_and_restores_them(monkeypatch):
    """As many workers as CPUs: while a graph runs, worker i runs on the i-th CPU only (the caller is worker 0);
    afterwards every thread has its CPU set back. Not pinned with REFCONV_PIN_THREADS=0, with fewer workers than
    CPUs, or while another run holds the pins."""
    import threading

    allowed = os.sched_getaffinity(0)
    n = len(allowed)
    if n < 2:
        pytest.skip("one CPU: a single worker, nothing to pin")
    monkeypatch.delenv("REFCONV_PIN_THREADS", raising=False)

    def run(workers: int) -> list:
        seen, together = [], threading.Barrier(workers, timeout=60)  # (each worker takes one item)
        graph = exact_mod._TaskGraph()
        for i in range(workers):
            graph.add(i, lambda slot, ws: seen.append((slot, os.sched_getaffinity(0))) or together.wait())
        graph.run(workers)
        assert os.sched_getaffinity(0) == allowed, "the caller's CPU set is restored"
        return sorted(seen)

    pinned = run(n)
    assert [a for _, a in pinned] == [{c} for c in sorted(allowed)], pinned
    monkeypatch.setenv("REFCONV_PIN_THREADS", "0")
    assert all(a == allowed for _, a in run(n)), "REFCONV_PIN_THREADS=0 leaves the CPU sets alone"
    monkeypatch.delenv("REFCONV_PIN_THREADS")
    assert all(a == allowed for _, a in run(n - 1)), "fewer workers than CPUs: unpinned"
    with exact_mod._pin_guard:  # (another run is pinned: this one leaves the scheduler to place its workers)
        assert all(a == allowed for _, a in run(n)), "one run at a time pins"
    assert [a for _, a in run(n)] == [{c} for c in sorted(allowed)], "the helpers' CPU sets were restored and re-pinned"


def test_scratch_arenas_are_reused_and_capped(monkeypatch):
    from refconv.oracle import _scratch

    _scratch.release()
    with _scratch.arena("worker") as a:
        first = a.array("buf", (100, 10))
        assert a.array("buf", (5, 5)).ctypes.data == first.ctypes.data, "a name keeps its buffer"
        assert a.array("buf", (200, 10)).ctypes.data != first.ctypes.data, "and grows it when needed"
        assert a.array("flags", (3,), bool).dtype == bool
    with _scratch.arena("caller") as other:
        assert other is not a, "roles do not share arenas"
    with _scratch.arena("worker") as b:
        assert b is a, "a returned arena is lent again"
        with _scratch.arena("worker") as c:
            assert c is not b, "arenas in use are not shared"
    monkeypatch.setattr(_scratch, "KEEP_BYTES", 1000)
    _scratch.release()
    with _scratch.arena("worker") as d:
        d.array("big", (1000,))
    with _scratch.arena("worker") as e:
        assert e is not d, "an arena over the cap is dropped, not kept"
    refconv.oracle.release_workspace()
    assert not _scratch._free


def test_finished_sums_bound_the_exact_sums():
    """finish_stats turns float sums (of |r| and of squares, any order) into upper bounds of the exact sums."""
    from fractions import Fraction

    from refconv.oracle._kernels import kernels

    kern = kernels()
    rng = np.random.default_rng(23)
    for scale in (1.0, 2.0**-1070, 2.0**500):
        v = rng.random((3, 5000)) * scale
        st = np.zeros((3, 6))
        for r in range(3):  # summed in a scrambled order, as the split kernels may
            order = rng.permutation(v.shape[1])
            st[r, 1] = sum(abs(v[r, order]).tolist())
            st[r, 3] = sum((v[r, order] ** 2).tolist())
        kern.finish_stats(st, v.shape[1], (1,))
        for r in range(3):
            assert Fraction(st[r, 1]) >= sum(Fraction(abs(t)) for t in v[r].tolist())
            assert Fraction(st[r, 3]) >= sum(Fraction(t) ** 2 for t in v[r].tolist())


def test_level1_column_bounds_bound_the_digits_squares():
    """Level 1 does not sum the columns' r1² and a1²: level1_col_bounds bounds them from Σw² (col_exponents) and the
    digit width, for ordinary, tiny, huge and mixed-magnitude columns and a zero column (Fraction sums)."""
    from fractions import Fraction

    from refconv.oracle._kernels import kernels
    from refconv.oracle.exact import digit_bits

    kern = kernels()
    rng = np.random.default_rng(29)
    k = 700
    cols = [rng.random(k), rng.standard_normal(k) * 2.0**-600, rng.standard_normal(k) * 2.0**600,
            rng.random(k) * 2.0**-1060, np.where(rng.random(k) < 0.5, 2.0**-300, 1.0) * rng.standard_normal(k),
            np.zeros(k)]
    w = np.ascontiguousarray(np.stack(cols, axis=1))
    beta = digit_bits(512)
    st = np.zeros((6, w.shape[1]))
    assert kern.col_exponents(w, 0, st, np.empty((k, 0)))
    a1, r1, none2 = np.empty(w.shape), np.empty(w.shape), np.empty((1, 1))
    kern.split_cols(w, beta, 0, 0, False, False, a1, r1, none2, none2, st, none2)
    sb = np.ascontiguousarray(st.T)
    kern.finish_stats(sb, k, (1,))
    kern.level1_col_bounds(sb, k, beta)
    for j in range(w.shape[1]):
        assert Fraction(sb[j, 4]) >= sum(Fraction(t) ** 2 for t in r1[:, j].tolist())
        assert Fraction(sb[j, 5]) >= sum(Fraction(t) ** 2 for t in a1[:, j].tolist())
    assert sb[0, 5] < 1.01 * np.sum(a1[:, 0] ** 2) + 1  # and close where Σw² is usable


def test_merged_level1_sums_are_exact():
    """Level-1 chunk sums accumulated by two workers over disjoint chunks and merged equal the exact sum."""
    from fractions import Fraction

    from refconv.oracle._kernels import kernels

    kern = kernels()
    rng = np.random.default_rng(31)
    shape, unit = (3, 4), 2.0**-44
    chunks = [np.round(rng.uniform(-512, 512, shape) / unit) * unit for _ in range(13)]
    zero = np.zeros(shape)
    parts = []
    for mine in (chunks[0::3], chunks[1::3] + chunks[2::3]):
        p1, lo, t = np.empty(shape), np.empty(shape), np.empty(shape)
        for i, prod in enumerate(mine):
            kern.accumulate_level1(i == 0, p1, lo, t, prod, zero, zero, np.ones(shape[1]))
        parts.append((p1, lo, t))
    (p1, lo, t), (q1, qlo, qt) = parts
    kern.merge_level1(p1, lo, t, q1, qlo, qt)
    for i, j in np.ndindex(shape):
        assert Fraction(p1[i, j]) + Fraction(lo[i, j]) == sum(Fraction(c[i, j]) for c in chunks)


def test_chunk_scaled_level1_redoes_blocks_whose_chunks_differ_too_much(monkeypatch):
    """A shared row tile's level 1 scales each K-chunk of a column by that chunk's own exponent, which keeps its
    sums exact only while every chunk stays within _CHUNK_SPREAD binades of the column's first: a block with a
    column whose chunks differ by 2^±20 is redone with exponents over all of K. Both kinds of block come out
    bitwise equal to the direct path."""
    from refconv.oracle._im2col import pad_nhwc

    merged = []
    real_merge = exact_mod._merge_level1

    def spy(*args, **kwargs):
        out = real_merge(*args, **kwargs)
        merged.append(out is not None)
        return out

    monkeypatch.setattr(exact_mod, "_merge_level1", spy)
    rng = np.random.default_rng(37)
    x = rng.standard_normal((1, 4, 4, 128))
    w = rng.standard_normal((3, 3, 128, 64))
    wm = w.reshape(-1, 64)  # (K = 1152: chunks of 512 rows)
    wm[512:1024, 40] *= 2.0**20
    wm[1024:, 41] *= 2.0**-20
    wm[512:1024, :24] *= 2.0**5  # within the spread
    b = rng.standard_normal(64)
    spec = ConvSpec.from_arrays(x, w, b, padding="SAME")
    xp = np.ascontiguousarray(pad_nhwc(x, spec))
    ref, _ = exact_mod.conv2d_exact_nhwc(x, w, b, spec, path="direct")
    y = np.empty_like(ref)
    assert exact_mod._gemm_exact(xp, w, b, spec, 2_100_000, y, exact_mod.ExactStats(), None, 2)
    assert_bitwise_equal(y, ref, "chunk-scaled level 1")
    assert True in merged and False in merged, merged


def test_gemm_path_on_random_small_convs_with_tiny_workspaces():
    """Random shapes, groups, strides, paddings, value families and workspaces small enough for row tiles of a few
    rows (and fewer than the workers): the GEMM path with 2 and 3 workers is bitwise the direct path (a version
    of this check, run longer, found a race in the task graph)."""
    from refconv.errors import ShapeError
    from refconv.oracle._im2col import pad_nhwc

    rng = np.random.default_rng(41)
    done = 0
    while done < 12:
        groups, cg, og = int(rng.choice([1, 2])), int(rng.choice([8, 24, 64])), int(rng.choice([16, 32, 48]))
        kh, kw, h, w_ = (int(v) for v in rng.integers(1, 4, 2).tolist() + rng.integers(2, 7, 2).tolist())
        family = str(rng.choice(FAMILIES))
        x, w, b = family_values(family, rng, (int(rng.integers(1, 3)), h, w_, cg * groups), (kh, kw, cg, og * groups))
        with np.errstate(all="ignore"):
            x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
            b = None if b is None else np.asarray(b, np.float64)
            if not (np.isfinite(x).all() and np.isfinite(w).all() and (b is None or np.isfinite(b).all())):
                continue
            try:
                spec = ConvSpec.from_arrays(x, w, b, padding=str(rng.choice(["SAME", "VALID"])), groups=groups,
                                            stride=int(rng.integers(1, 3)))
            except ShapeError:
                continue
            xp = np.ascontiguousarray(pad_nhwc(x, spec))
            ref, _ = exact_mod.conv2d_exact_nhwc(x, w, b, spec, path="direct")
            workspace = int(rng.choice([60_000, 150_000, 600_000]))
            for workers in (2, 3):
                y = np.empty_like(ref)
                assert exact_mod._gemm_exact(xp, w, b, spec, workspace, y, exact_mod.ExactStats(), None, workers)
                assert_bitwise_equal(y, ref, f"{family} {x.shape} {w.shape} groups={groups} ws={workspace} x{workers}")
        done += 1


def test_chunk_split_keeps_the_reference_scale_only_where_the_sums_stay_exact():
    """split_cols_chunk makes every column's digits at its reference exponent in one pass, and keeps them where
    the chunk's own exponent e is ref or ref - 1 (|digit| ≤ 1), or ref + 1 with √(n·Σw²)·2^-ref below
    2^(52-2β) (so Σ|digit| < 2^(53-2β) and the digit products, any |row digit| ≤ 1, sum exactly) and no
    underflow in Σw²; any other
    column is split again at e (rel = 2^(e - ref)), and one beyond _CHUNK_SPREAD binades is flagged."""
    from refconv.oracle._kernels import _CHUNK_SPREAD, kernels

    kern = kernels()
    beta, nq = exact_mod.digit_bits(512), 512
    rng = np.random.default_rng(43)
    mat = rng.uniform(-1, 1, (2 * nq, 8)) * 0.75  # chunk 0: max in [0.5, 1) in every column: ref = 0
    mat[0] = 0.99
    chunk = mat[nq:]
    chunk[:, 1] *= 0.5  # e = -1: kept
    chunk[:, 2] = rng.standard_normal(nq) * 0.25
    chunk[0, 2] = 1.5  # e = 1, Σ small: kept
    chunk[:, 3] = 1.5  # e = 1, √(n·Σw²) = 768 > 2^(52-2β): split again at e
    chunk[:, 4] *= 2.0**-3  # e = -3: split again
    chunk[:, 5] *= 2.0 ** (_CHUNK_SPREAD + 1)  # flagged (the caller redoes the block)
    chunk[:, 6] = 0.0  # an all-zero chunk: kept
    mat[:nq, 7] *= 2.0**-600  # ref = -600 ...
    chunk[:, 7] = 2.0**-600 * 1.25 * (np.arange(nq) == 0)  # ... e = ref + 1 with Σw² underflowing: split again
    e_own = [int(np.frexp(np.abs(chunk[:, j]).max())[1]) for j in range(8)]
    assert e_own[:6] == [0, -1, 1, 1, -3, _CHUNK_SPREAD + 1], e_own
    ref = np.array([0.0] * 7 + [-600.0])
    cst = np.zeros((6, 8))
    cst[0], cst[2] = -np.inf, np.inf
    a1, r1, rel = np.empty((nq, 8)), np.empty((nq, 8)), np.empty(8)
    assert kern.split_cols_chunk(mat, beta, nq, 0, ref, a1, r1, cst, rel)
    assert rel.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0**-3, 1.0, 1.0, 2.0]
    cc = 1.5 * 2.0 ** (52 - beta)
    for j in range(8):
        scaled = chunk[:, j] * 2.0 ** -ref[j] / rel[j]
        want = (scaled + cc) - cc
        assert np.array_equal(a1[:, j], want) and np.array_equal(r1[:, j], scaled - want), j
        assert np.abs(r1[:, j]).max() <= 2.0 ** (-beta - 1)
        assert j == 5 or np.abs(a1[:, j]).sum() < 2.0 ** (53 - 2 * beta), j  # exact digit products (5: redone)
        assert cst[1, j] == pytest.approx(np.abs(r1[:, j]).sum() * rel[j], rel=1e-12)
    assert cst[4].tolist() == [0, 0, 0, 0, 0, 1, 0, 0]
    assert cst[0, :6].tolist() == e_own[:6] and cst[0, 6] == -np.inf  # the chunk's exponents (a zero chunk: none)
    assert np.allclose(cst[3, :7], (chunk[:, :7] ** 2).sum(axis=0), rtol=1e-12)


def test_chunk_scaled_level1_is_exact_at_every_kept_or_redone_scale():
    """Columns whose K-chunks sit one binade above or below the first (kept at the reference scale, or split again
    at their own), and a column whose chunk is nearly constant one binade above (Σ too large to keep): the GEMM
    path with 1 and 2 workers is bitwise the direct path, exact and kahan."""
    from refconv.oracle._im2col import pad_nhwc

    rng = np.random.default_rng(47)
    x = rng.standard_normal((1, 4, 4, 128))
    w = rng.standard_normal((3, 3, 128, 64)) * 0.3
    wm = w.reshape(-1, 64)  # (K = 1152: chunks of 512 rows)
    wm[512:1024, :8] *= 2.0
    wm[512:1024, 8:16] *= 0.5
    wm[1024:, 16:24] *= 8.0
    wm[512:1024, 24] = 1.9 * np.abs(wm[:512, 24]).max()
    wm[1024:, 25] = -wm[1024:, 25] * 0.0 + np.abs(wm[:512, 25]).max() * 1.5
    b = rng.standard_normal(64)
    spec = ConvSpec.from_arrays(x, w, b, padding="SAME")
    xp = np.ascontiguousarray(pad_nhwc(x, spec))
    ref, _ = exact_mod.conv2d_exact_nhwc(x, w, b, spec, path="direct")
    for workers in (1, 2):
        y, yk, bound = np.empty_like(ref), np.empty_like(ref), np.empty_like(ref)
        assert exact_mod._gemm_exact(xp, w, b, spec, 2_100_000, y, exact_mod.ExactStats(), None, workers)
        assert exact_mod._gemm_exact(xp, w, b, spec, 2_100_000, yk, exact_mod.ExactStats(), bound, workers)
        assert_bitwise_equal(y, ref, f"chunk scales, {workers} workers")
        exact_mask = bound <= 0.5 * np.spacing(np.abs(yk))
        assert_bitwise_equal(yk[exact_mask], ref[exact_mask], "kahan's decided elements")
        assert np.all(np.abs(yk - ref) <= bound)


def test_exact_fallback_is_exact_on_both_of_its_ways(monkeypatch):
    """The per-element exact fallback sums by numpy TwoProduct and integers where that split applies, else by
    Python integers (here: a value beyond 2^995, a product below 2^-960); both are the Fraction sum rounded once."""
    from fractions import Fraction

    calls = []
    real = exact_mod.exact_dot
    monkeypatch.setattr(exact_mod, "exact_dot", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(53)
    x = rng.standard_normal((1, 3, 3, 40))
    w = rng.standard_normal((3, 3, 40, 2))
    b = np.array([0.3, -1e-5])
    spec = ConvSpec.from_arrays(x, w, b, padding="VALID")
    wmat = w.reshape(-1, 2)
    for big, want_calls in ((None, 0), (2.0**1000, 1), (2.0**-1000, 1)):
        xv = x.copy()
        if big is not None:
            xv[0, 1, 1, 7] = big
            xv[0, 2, 0, 3] = -big * 0.75
        got = exact_mod._exact_fallback(xv, wmat, b, spec, slice(0, 40), 0, 0, 0, 1)
        terms = zip(xv.reshape(-1).tolist(), wmat[:, 1].tolist())  # (the 3 x 3 window is the whole input)
        exact = sum(Fraction(p) * Fraction(q) for p, q in terms) + Fraction(float(b[1]))
        assert got == float(exact), (big, got)  # (Fraction -> float rounds correctly)
        assert len(calls) == want_calls, (big, calls)
        calls.clear()
