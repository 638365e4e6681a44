"""The three oracle methods agree: kahan within its own bound, mpmath rounding to exact's float64."""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from test_oracle_reference import (
    FAMILIES,
    N_GEOMETRIES,
    assert_bitwise_equal,
    cancelling_values,
    family_values,
    make_case,
    reference_conv2d,
)

import refconv
from refconv.oracle._im2col import float_conv_nhwc
from refconv.oracle.exact import conv2d_exact_nhwc
from refconv.oracle.kahan import conv2d_kahan_nhwc
from refconv.spec import ConvSpec

GEOMETRY_SUBSET = range(0, N_GEOMETRIES, 3)
U64 = 2.0**-53


@pytest.mark.parametrize("family", FAMILIES)
def test_kahan_is_within_its_own_bound(family):
    for gi in GEOMETRY_SUBSET:
        x, w, b, geometry = make_case(family, gi, seed=1)
        with np.errstate(all="ignore"):
            exact = refconv.conv2d(x, w, b, **geometry)
            res = refconv.conv2d_with_info(x, w, b, method="kahan", **geometry)
        assert res.bound.shape == exact.shape and np.all(res.bound >= 0)
        informative = np.isfinite(res.bound)  # an infinite bound claims nothing (overflow, NaN, inf)
        np.testing.assert_array_equal(informative, np.isfinite(res.y),
                                      err_msg=f"{family} geometry[{gi}]: bound must be finite exactly where y is")
        np.testing.assert_array_equal(res.y[~informative], exact[~informative],
                                      err_msg=f"{family} geometry[{gi}]: NaN and ±inf where exact arithmetic has them")
        err = np.abs(res.y[informative] - exact[informative])
        inside = err <= res.bound[informative]
        assert np.all(inside), (
            f"{family} geometry[{gi}]={geometry}: kahan outside its bound at {np.argwhere(informative)[~inside][:3]}")


def test_kahan_bound_is_tight_enough_to_be_useful():
    """The bound is the published Dot2 bound, barely inflated: u·|y| + γ_n²·Σ|x·w| (Ogita, Rump, Oishi 2005).

    Well-conditioned data: ~u·|y|. At cond ~2^130 Dot2 is really inexact, and still inside it.
    """
    rng = np.random.default_rng(2)
    cases = [family_values("uniform", rng, (1, 8, 8, 16), (3, 3, 16, 4))[:2],
             cancelling_values(rng, (1, 8, 8, 16), (3, 3, 16, 4), 2.0**120, rng.standard_normal)]
    for i, (x, w) in enumerate(cases):
        res = refconv.conv2d_with_info(x, w, method="kahan", padding="SAME")
        spec = ConvSpec.from_shapes(x.shape, w.shape, padding="SAME")
        n = spec.n_terms + 1  # the bias slot may be counted even without a bias
        gamma = n * U64 / (1 - n * U64)
        dot2 = U64 * np.abs(res.y) + gamma**2 * float_conv_nhwc(np.abs(x), np.abs(w), spec)
        np.testing.assert_array_less(res.bound, 1.01 * dot2 + 1e-300, err_msg=f"case {i}: bound looser than Dot2's")
        err = np.abs(res.y - refconv.conv2d(x, w, padding="SAME"))
        assert np.all(err <= res.bound), f"case {i}: kahan outside its bound"
        if i == 0:
            np.testing.assert_array_less(res.bound, 1.01 * U64 * np.abs(res.y), err_msg="well-conditioned: ~u·|y|")
        else:
            assert err.max() > 0, "Dot2 should be inexact at cond ~2^130 (else this case tests nothing)"


def test_kahan_bound_covers_rounding_just_above_the_smallest_normal():
    """In [2^-1022, 2^-1021) half an ulp is 2^-1075, not a float64 (np.spacing / 2 rounds it to 0): a correctly rounded
    but inexact result there must still get a nonzero bound, on both paths."""
    v = 2.0**-511 * (1 + 2.0**-30)  # v·w has bits down to 2^-1082: rounding it to the 2^-1074 grid is inexact
    x = np.zeros((1, 1, 1, 16))
    x[..., 0] = v
    w = np.zeros((1, 1, 16, 16))
    w[0, 0, 0] = v * np.arange(1, 17) / 8
    spec = ConvSpec.from_shapes(x.shape, w.shape)
    for path in ("gemm", "direct"):
        y, bound = (a.ravel() for a in conv2d_kahan_nhwc(x, w, None, spec, path=path))
        for j in range(16):
            err = abs(Fraction(float(y[j])) - Fraction(v) * Fraction(float(w[0, 0, 0, j])))
            assert err <= Fraction(float(bound[j])), (path, j, float(y[j]), float(bound[j]))
        tiny = (np.abs(y) >= 2.0**-1022) & (np.abs(y) < 2.0**-1021)
        assert tiny.any() and np.all(bound[tiny] > 0), path


def test_gemm_path_with_a_prediction_sample_below_2_to_the_minus_1020():
    """A huge channel (2^1000) sets the rows' scale, so the other channels' products scale to about 2^-1036: the
    level prediction's half gap of such a value underflows to 0. That divided by zero and raised ZeroDivisionError
    from both GEMM-path methods (found by a randomized run); they must instead give the exact conv."""
    x = np.full((1, 8, 8, 16), 2.0**-40)
    x[..., 0] = 2.0**1000
    w = np.random.default_rng(3).random((1, 1, 16, 256))
    w[:, :, 0, :] = 0.0  # (the huge channel meets zero weights: every output is of the small channels' size)
    b = np.linspace(-1.0, 1.0, 256)
    spec = ConvSpec.from_shapes(x.shape, w.shape)
    y, stats = conv2d_exact_nhwc(x, w, b, spec)
    assert stats.path == "gemm"
    assert_bitwise_equal(y, conv2d_exact_nhwc(x, w, b, spec, path="direct")[0], "the GEMM path against the direct path")
    assert_bitwise_equal(refconv.conv2d(x, w, b), y, "the public API")
    yk, bound = conv2d_kahan_nhwc(x, w, b, spec, path="gemm")
    for i, j, o in [(0, 0, 0), (3, 5, 17), (7, 7, 255), (4, 2, 128)]:
        q = Fraction(float(b[o])) + sum(Fraction(float(x[0, i, j, c])) * Fraction(float(w[0, 0, c, o]))
                                        for c in range(16))
        assert float(y[0, i, j, o]) == float(q)  # (float() of a Fraction rounds correctly)
        assert abs(Fraction(float(yk[0, i, j, o])) - q) <= Fraction(float(bound[0, i, j, o]))


@pytest.mark.parametrize("family", FAMILIES)
def test_mpmath_method_equals_exact_bitwise(family):
    """method="mpmath" (exact mpf sum, rounded once to float64) must agree bit for bit."""
    for gi in range(1, N_GEOMETRIES, 5):
        x, w, b, geometry = make_case(family, gi, seed=2)
        with np.errstate(all="ignore"):
            exact = refconv.conv2d(x, w, b, **geometry)
            mp = refconv.conv2d(x, w, b, method="mpmath", **geometry)
        assert_bitwise_equal(mp, exact, f"family={family} geometry[{gi}]")


@pytest.mark.parametrize("family", FAMILIES)
def test_conv2d_points_match_exact(family):
    """dps=None: bitwise; dps=40: mpmath's own float() of the 40-digit value rounds to the same float64.

    Rounding twice (exact -> 40 digits -> float64) can differ from rounding once only
    within ~2^-133 relative of a float64 midpoint, or (mpmath's to_float) in the
    subnormal range, where it rounds to 53 bits first; those elements are excluded
    and counted, and must be rare.
    """
    x, w, b, geometry = make_case(family, 7, seed=4)
    with np.errstate(all="ignore"):
        exact = refconv.conv2d(x, w, b, **geometry)
    shape = exact.shape
    sample = min(12, exact.size)
    pts = refconv.conv2d_points(x, w, b, sample=sample, seed=1, **geometry)
    assert pts.positions.shape == (sample, 4) and len(np.unique(pts.positions, axis=0)) == sample
    assert np.all((pts.positions >= 0) & (pts.positions < np.array(shape)))
    want = exact[tuple(pts.positions.T)]
    assert_bitwise_equal(pts.values, want, f"conv2d_points dps=None, family={family}")

    p40 = refconv.conv2d_points(x, w, b, positions=pts.positions, dps=40, **geometry)
    assert all(isinstance(v, mpmath.mpf) for v in p40.values)
    as_float = np.array([float(v) for v in p40.values])
    with np.errstate(all="ignore"):
        risky = (np.abs(want) < 2.0**-1022) & (want != 0)  # mpmath's to_float double-rounds subnormals
        near_mid = _near_midpoint(p40.values, want)
    keep = ~(risky | near_mid)
    assert keep.sum() >= sample // 2 or family in ("underflow", "subnormal", "ties"), f"{family}: {keep.sum()} kept"
    assert_bitwise_equal(as_float[keep], want[keep], f"conv2d_points dps=40 -> float, family={family}")
    # the 40-digit value is within half an ulp of 40 digits of the exact sum: never further than exact's float64
    for v, f in zip(p40.values, want):
        if mpmath.isfinite(v) and np.isfinite(f) and f != 0:
            assert abs(v - mpmath.mpf(float(f))) <= abs(mpmath.mpf(float(np.spacing(f)))), (v, f)


def _near_midpoint(values, floats) -> np.ndarray:
    """True where a 40-digit value lies within 2^-120 relative of a float64 rounding midpoint."""
    out = np.zeros(len(values), dtype=bool)
    for i, (v, f) in enumerate(zip(values, floats)):
        if not (mpmath.isfinite(v) and np.isfinite(f)) or v == 0:
            continue
        with mpmath.workprec(300):
            half = mpmath.mpf(float(np.spacing(f))) / 2
            d = abs(v - mpmath.mpf(float(f)))
            out[i] = abs(d - half) <= abs(v) * mpmath.mpf(2) ** -120
    return out


@pytest.mark.parametrize("dps", [20, 40, 60])
def test_conv2d_points_mpf_values_are_the_exact_sum_rounded_once(dps):
    """mpf results: at most prec = ⌈dps·log2(10)⌉+1 bits, within half an ulp at prec of the exact sum (Fraction)."""
    rng = np.random.default_rng(dps)
    x, w = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((4, 3, 3, 2))  # NCHW, OIHW
    x[0, 0] *= 2.0**80  # cancellation and wide exponents, so the exact sums need many bits
    geometry = dict(data_format="NCHW", padding="SAME", stride=(1, 2))
    exact = reference_conv2d(x, w, rounded=False, **geometry)
    positions = [(1, 3, 2, 0), (0, 0, 0, 2), (1, 2, 4, 1), (0, 1, 1, 1)]
    p = refconv.conv2d_points(x, w, positions=positions, dps=dps, **geometry)
    np.testing.assert_array_equal(p.positions, positions)
    prec = int(np.ceil(dps * np.log2(10))) + 1
    for pos, v in zip(positions, p.values):
        sign, man, exp, bc = v._mpf_
        assert bc <= prec, f"{pos}: {bc} bits at dps={dps} (prec {prec})"
        q = exact[pos]
        got = Fraction(man * (-1 if sign else 1)) * Fraction(2) ** exp
        assert abs(got - q) <= abs(q) * Fraction(1, 2**prec), f"{pos}: not the exact sum rounded to {prec} bits"
    d = p.to_dict()
    assert d["dps"] == dps and len(d["values"]) == len(positions)
    with mpmath.workdps(dps + 10):  # the JSON strings carry all dps digits
        for s_, v in zip(d["values"], p.values):
            assert abs(mpmath.mpf(s_) - v) <= abs(v) * mpmath.mpf(10) ** (1 - dps), (s_, v)


def test_conv2d_points_reject_bad_positions():
    x, w = np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1))
    with pytest.raises(refconv.errors.ShapeError, match="out of range"):
        refconv.conv2d_points(x, w, positions=[(0, 2, 0, 0)])
    with pytest.raises(refconv.errors.ShapeError, match="positions"):
        refconv.conv2d_points(x, w)


def test_oracle_result_reports_bound_and_fallbacks():
    x, w = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1))
    for method in refconv.METHODS:
        r = refconv.conv2d_with_info(x, w, method=method)
        d = r.to_dict()
        assert d["method"] == method and d["elements"] == r.y.size and d["spec"] == ConvSpec.from_shapes(
            x.shape, w.shape).to_dict()
        assert r.elapsed_s >= 0 and r.fallbacks >= 0


def test_float_conv_helper_is_a_plain_conv():
    rng = np.random.default_rng(1)
    x, w = rng.random((1, 5, 5, 3)), rng.random((3, 3, 3, 2))
    spec = ConvSpec.from_shapes(x.shape, w.shape, padding="SAME")
    np.testing.assert_allclose(float_conv_nhwc(x, w, spec), refconv.conv2d(x, w, padding="SAME"), rtol=1e-14,
                               err_msg="float_conv_nhwc must be the same conv in rounded arithmetic")


def test_subnormal_results_are_rounded_once_by_every_method():
    """5·2^-1075 + 2^-1200 lies just above the midpoint 2.5 ulp of the smallest subnormal: correct is 3·2^-1074.

    Rounding to 53 bits first (e.g. gmpy2's mpz / int, a 53-bit mpfr) makes it a tie, and ties-to-even gives 2.
    """
    x = np.array([5 * 2.0**-1000, 2.0**-600]).reshape(1, 1, 2, 1)
    w = np.array([2.0**-75, 2.0**-600]).reshape(1, 2, 1, 1)
    want = np.array([3 * 2.0**-1074])
    assert_bitwise_equal(reference_conv2d(x, w).ravel(), want, "Fraction reference")
    for method in refconv.METHODS:
        if method == "kahan":
            continue  # not correctly rounded by design
        assert_bitwise_equal(refconv.conv2d(x, w, method=method).ravel(), want, f"method={method}")
    assert_bitwise_equal(refconv.conv2d_points(x, w, positions=[(0, 0, 0, 0)]).values, want, "conv2d_points")


def test_round_to_float64_accepts_gmpy2_integers():
    gmpy2 = pytest.importorskip("gmpy2")
    from refconv.oracle._exactsum import round_to_float64

    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 2**62)) << int(rng.integers(0, 70)) | 1
        e = int(rng.integers(-1250, 40))
        want = float(Fraction(n) * Fraction(2) ** e)
        assert round_to_float64(gmpy2.mpz(n), e) == round_to_float64(n, e) == want, (n, e)


MEDIUM = [  # (x NHWC, w HWIO, geometry): bigger K and more outputs than the Fraction sweep, every exact path
    ((1, 6, 6, 36), (3, 3, 36, 4), dict(stride=2, padding="SAME")),
    ((1, 9, 8, 16), (3, 3, 1, 16), dict(groups=16, padding="SAME_LOWER", stride=(1, 2))),  # depthwise
    ((2, 5, 7, 48), (2, 3, 24, 4), dict(groups=2, dilation=(2, 1), padding=1)),
    ((1, 4, 4, 400), (2, 2, 400, 3), dict(padding="VALID")),  # K = 1600
]


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_matches_mpmath_on_medium_problems(family):
    for i, (xs, ws, geometry) in enumerate(MEDIUM):
        rng = np.random.default_rng([i, FAMILIES.index(family)])
        x, w, b = family_values(family, rng, xs, ws)
        with np.errstate(all="ignore"):
            exact = refconv.conv2d_with_info(x, w, b, **geometry)
            mp = refconv.conv2d(x, w, b, method="mpmath", **geometry)
        assert_bitwise_equal(exact.y, mp, f"family={family} x{xs} w{ws} {geometry} ({exact.fallbacks} fallbacks)")
        every = np.argwhere(np.ones(mp.shape, dtype=bool))
        with np.errstate(all="ignore"):
            pts = refconv.conv2d_points(x, w, b, positions=every, **geometry)
        assert_bitwise_equal(pts.values, mp.ravel(), f"conv2d_points, family={family} x{xs} w{ws} {geometry}")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "nonfinite"])
@pytest.mark.parametrize("workspace", [256 * 2**20, 4096])
def test_kahan_paths_agree_and_meet_the_dot2_bound(family, workspace):
    """Both kahan paths (BLAS splitting and Numba Dot2) on the same data: within their bounds, the bounds no
    looser than Dot2's u·|y| + γ²·Σ|x·w|, and the GEMM path correctly rounded wherever its bound says so.

    The 4 KB workspace forces one-row tiles, so the two-digit level and the per-element Dot2 run too.
    """
    from refconv.oracle.kahan import conv2d_kahan_nhwc

    rng = np.random.default_rng([7, FAMILIES.index(family)])
    x, w, b = family_values(family, rng, (1, 4, 5, 130), (3, 3, 130, 24))  # K = 1170: three K-chunks
    spec = ConvSpec.from_arrays(x, w, b, stride=(1, 2), padding="SAME")
    with np.errstate(all="ignore"):
        exact = refconv.conv2d(x, w, b, stride=(1, 2), padding="SAME")
        x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
        b64 = None if b is None else np.asarray(b, np.float64)
        n = spec.n_terms + 1
        gamma = n * U64 / (1 - n * U64)
        absconv = float_conv_nhwc(np.abs(x64), np.abs(w64), spec) + (0 if b64 is None else np.abs(b64))
        for path in ("gemm", "direct"):
            y, bound = conv2d_kahan_nhwc(x64, w64, b64, spec, workspace_bytes=workspace, path=path)
            ok = np.isfinite(bound)
            np.testing.assert_array_equal(ok, np.isfinite(y), err_msg=f"{path}: finite bound exactly where y is")
            err = np.abs(y - exact)
            outside = np.argwhere(ok & (err > bound))[:3]
            assert not len(outside), f"{family}/{path}: outside its bound at {outside}"
            dot2 = U64 * np.abs(y) + gamma**2 * absconv * (1 + 2**-40) + 2.0**-1000
            assert np.all(bound[ok] <= 1.01 * dot2[ok]), f"{family}/{path}: bound looser than Dot2's"
            if path == "gemm":
                half_ulp = np.spacing(np.abs(exact)) / 2
                rounded = ok & (bound <= half_ulp) & (np.abs(exact) >= 2.0**-1022)
                assert_bitwise_equal(y[rounded], exact[rounded], f"{family}: decided elements must round correctly")


@pytest.mark.parametrize("path", ["gemm", "direct"])
def test_kahan_nonfinite_weights_on_padding_taps_are_absent_terms(path):
    """An infinite weight whose tap lands on padding is no term of that output: kahan, like exact, gives the finite
    sum there (it gave NaN: 0·inf in the padded input), and ±inf or NaN exactly where exact arithmetic does."""
    x = np.arange(1.0, 33.0).reshape(1, 4, 4, 2) / 8
    w = np.random.default_rng(9).standard_normal((3, 3, 2, 3))
    w[0, 0, 0, 0], w[2, 1, 1, 1], w[1, 1, 0, 2] = np.inf, -np.inf, np.nan
    w[0, 0, 1, 1] = 0.0
    spec = ConvSpec.from_shapes(x.shape, w.shape, padding="SAME")
    want = reference_conv2d(x, w, padding="SAME", rounded=False)
    y, bound = conv2d_kahan_nhwc(x, w, None, spec, path=path)
    for idx in np.ndindex(y.shape):
        if isinstance(want[idx], float):  # (±inf or NaN)
            assert str(y[idx]) == str(want[idx]) and bound[idx] == np.inf, (idx, y[idx], want[idx])
        else:
            assert abs(Fraction(float(y[idx])) - want[idx]) <= Fraction(float(bound[idx])), (idx, y[idx])
    assert np.isfinite(y[..., 0]).sum() == 7  # (the corner tap on padding: 7 of the 16 outputs)


@pytest.mark.parametrize("path", ["gemm", "direct"])
def test_kahan_sums_that_overflow_on_the_way_are_exact(path):
    """Finite terms whose running float sum passes 2^1024 (Dot2 then gives inf - inf = NaN; the direct path did
    return that, with an infinite bound): the exact sum, rounded once, with half an ulp as bound; ±inf only where
    the exact sum itself overflows."""
    x = np.array([2.0**1023, 2.0**1023, -(2.0**1023), -(2.0**1023), 0.75]).reshape(1, 1, 5, 1)
    w = np.ones((1, 5, 1, 3))
    w[0, :, 0, 1] = [1.0, 1.0, -1.0, -1.0, 1.0]  # (2^1025 + 0.75: beyond the float64 range)
    w[0, :, 0, 2] = [1.0, 1.0, 1.0, 0.5, 1.0]  # (2^1022 + 0.75: rounded, inexact)
    spec = ConvSpec.from_shapes(x.shape, w.shape)
    y, bound = (a.ravel() for a in conv2d_kahan_nhwc(x, w, None, spec, path=path))
    assert y[0] == 0.75 and bound[0] <= 2.0**-54
    assert y[1] == np.inf and bound[1] == np.inf
    want = Fraction(2**1022) + Fraction(3, 4)
    assert y[2] == 2.0**1022 and abs(Fraction(float(y[2])) - want) <= Fraction(float(bound[2])) <= 2**969


def test_kahan_reports_its_path():
    """Dense convs take the BLAS splitting (with NaN/inf too: on the inputs with those set to 0, then the exact
    method's semantics), depthwise ones the Numba Dot2 kernel."""
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((1, 8, 8, 32)), rng.standard_normal((3, 3, 32, 32))
    assert refconv.conv2d_with_info(x, w, method="kahan", padding="SAME").stats["path"] == "gemm"
    x[0, 3, 3, 3] = np.inf
    res = refconv.conv2d_with_info(x, w, method="kahan", padding="SAME")
    assert res.stats["path"] == "gemm"
    np.testing.assert_array_equal(res.y[~np.isfinite(res.y)], refconv.conv2d(x, w, padding="SAME")[~np.isfinite(res.y)])
    assert np.array_equal(np.isinf(res.bound), ~np.isfinite(res.y)) and np.isinf(res.bound).sum() == 9 * 32
    xd, wd = rng.standard_normal((1, 8, 8, 8)), rng.standard_normal((3, 3, 1, 8))
    assert refconv.conv2d_with_info(xd, wd, method="kahan", groups=8).stats["path"] == "direct"
