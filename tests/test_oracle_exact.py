"""method="exact" equals the correctly rounded value bit for bit (Fraction reference: test_oracle_reference.py)."""

from __future__ import annotations

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


def _describe(family, gi, geometry, x, w, b):
    return f"family={family} geometry[{gi}]={geometry} x.shape={np.shape(x)} w.shape={np.shape(w)} bias={b is not None}"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gi", range(N_GEOMETRIES))
def test_exact_is_correctly_rounded(family, gi):
    x, w, b, geometry = make_case(family, gi)
    want = reference_conv2d(x, w, b, **geometry)
    with np.errstate(all="ignore"):
        got = refconv.conv2d(x, w, b, **geometry)
    assert got.dtype == np.float64
    assert_bitwise_equal(got, want, _describe(family, gi, geometry, x, w, b))


@pytest.mark.parametrize("family", ["ties", "overflow", "underflow"])
def test_exact_fallback_is_exercised_and_right(family):
    """Adversarial data must reach the exact integer fallback, and the fallback must be right."""
    rng = np.random.default_rng(7)
    x, w, b = family_values(family, rng, (1, 6, 6, 4), (3, 3, 4, 3))
    with np.errstate(all="ignore"):
        res = refconv.conv2d_with_info(x, w, b, padding="SAME")
    assert 0 < res.fallbacks <= res.y.size, f"{family}: {res.fallbacks} fallbacks for {res.y.size} elements"
    assert_bitwise_equal(res.y, reference_conv2d(x, w, b, padding="SAME"), f"family={family} (fallback path)")


def test_exact_fallback_decides_values_next_to_rounding_midpoints():
    """1 + 2^-53 is a midpoint between float64s; a 2^-150 nudge decides it, and ties go to even."""
    mid = 2.0**-53
    rows = [  # taps of one output, and the correctly rounded sum
        ([1.0, mid, 2.0**-150], 1.0 + 2.0**-52),
        ([1.0, mid, -(2.0**-150)], 1.0),
        ([1.0, mid, 0.0], 1.0),  # exact tie: even mantissa is 1.0
        ([1.0 + 2.0**-52, mid, 0.0], 1.0 + 2.0**-51),  # exact tie: odd mantissa rounds up
        ([2.0**600, -(2.0**600), mid * 2.0**-900], mid * 2.0**-900),  # all but a tiny term cancel
        ([1.0, 2.0**-1074, 2.0**-53], 1.0 + 2.0**-52),  # the sticky subnormal bit breaks the tie
    ]
    x = np.array([r for r, _ in rows]).reshape(len(rows), 1, 3, 1)
    res = refconv.conv2d_with_info(x, np.ones((1, 3, 1, 1)))
    want = np.array([v for _, v in rows])
    assert res.fallbacks >= 4, f"only {res.fallbacks} of {len(rows)} near-midpoint elements reached the fallback"
    assert_bitwise_equal(res.y.ravel(), want, "near-midpoint sums")
    assert_bitwise_equal(res.y, reference_conv2d(x, np.ones((1, 3, 1, 1))), "near-midpoint sums vs reference")


@pytest.mark.parametrize("family", ["normal", "illcond", "ties", "mixed", "underflow", "bigint", "float16"])
def test_exact_long_dot_products(family):
    """K = 3·3·300 = 2700 terms: fewer bits per digit in the BLAS splitting."""
    rng = np.random.default_rng(11)
    x, w, b = family_values(family, rng, (1, 3, 4, 300), (3, 3, 300, 2))
    with np.errstate(all="ignore"):
        got = refconv.conv2d(x, w, b)
    assert_bitwise_equal(got, reference_conv2d(x, w, b), f"family={family} K=2700")


@pytest.mark.parametrize("family", ["normal", "illcond", "nonfinite"])
def test_exact_does_not_depend_on_the_workspace_tiling(family):
    x, w, b, geometry = make_case(family, 5, seed=3)
    with np.errstate(all="ignore"):
        tiled = refconv.conv2d(x, w, b, workspace_bytes=1, **geometry)
        whole = refconv.conv2d(x, w, b, **geometry)
    assert_bitwise_equal(tiled, whole, f"family={family}: 1-byte workspace vs default")
    assert_bitwise_equal(tiled, reference_conv2d(x, w, b, **geometry), f"family={family} tiled vs reference")


def test_exact_zero_is_positive_zero():
    x = np.full((1, 3, 3, 2), -0.0)
    w = np.ones((2, 2, 2, 1))
    y = refconv.conv2d(x, w, np.array([-0.0]), padding="SAME")
    np.testing.assert_array_equal(np.signbit(y), False, err_msg="an exact zero must be +0.0")
    # cancellation to exactly zero, too
    x2 = np.array([3.0, -3.0, 2.0**-1074, -(2.0**-1074)]).reshape(1, 1, 4, 1)
    y2 = refconv.conv2d(x2, np.ones((1, 4, 1, 1)))
    np.testing.assert_array_equal(y2.view(np.int64), np.zeros_like(y2).view(np.int64), err_msg="3-3+t-t must be +0.0")


def test_exact_value_beyond_float64_range_is_inf():
    big = np.finfo(np.float64).max
    x = np.array([big, big, -big]).reshape(1, 1, 3, 1)
    w = np.array([1.0, 1.0, 2.0**-60]).reshape(1, 3, 1, 1)
    np.testing.assert_array_equal(refconv.conv2d(x, w).ravel(), [np.inf], err_msg="2·max rounds to +inf")
    # just below the overflow threshold rounds to max, not inf (threshold = max + ulp/2)
    half_ulp = 2.0**970
    x2 = np.array([big, half_ulp, -(2.0**900)]).reshape(1, 1, 3, 1)
    np.testing.assert_array_equal(refconv.conv2d(x2, np.ones((1, 3, 1, 1))).ravel(), [big],
                                  err_msg="max + ulp/2 - tiny must round down to max")


def test_padding_taps_are_absent_terms_for_nonfinite_inputs():
    """inf at the border with SAME padding: the padding taps do not make inf·0 = NaN."""
    x = np.ones((1, 3, 3, 1))
    x[0, 0, 0, 0] = np.inf
    y = refconv.conv2d(x, np.ones((3, 3, 1, 1)), padding="SAME")
    np.testing.assert_array_equal(y[0, :, :, 0], [[np.inf, np.inf, 4.0], [np.inf, np.inf, 6.0], [4.0, 6.0, 4.0]],
                                  err_msg="padding taps must be absent terms, not zeros")
    # an infinite weight whose tap only ever meets padding at a corner leaves that output finite
    w = np.ones((3, 3, 1, 1))
    w[0, 0, 0, 0] = np.inf
    y = refconv.conv2d(np.ones((1, 3, 3, 1)), w, padding="SAME")
    np.testing.assert_array_equal(y[0, 0, 0, 0], 4.0, err_msg="inf weight on a padding tap must be absent")
    assert np.isinf(y[0, 1, 1, 0])
    doc = refconv.conv2d.__doc__.lower()
    assert "absent" in doc and "padding" in doc, "conv2d's docstring must state that padding taps are absent terms"


def test_nonfinite_semantics_named_cases():
    inf, nan = np.inf, np.nan
    cases = [  # (x taps, w taps, expected)
        ([inf, 1.0], [0.0, 1.0], nan),  # inf·0
        ([inf, -inf], [1.0, 1.0], nan),  # +inf + -inf
        ([inf, -inf], [1.0, -1.0], inf),  # +inf + +inf
        ([nan, 1.0], [0.0, 1.0], nan),  # NaN·0
        ([-inf, 1e308], [-1.0, 1e308], inf),  # overflowing finite term does not matter
        ([1e308, 1e308], [10.0, -10.0], 0.0),  # finite overflowing products cancel exactly
    ]
    for xs, ws, want in cases:
        y = refconv.conv2d(np.array(xs).reshape(1, 1, 2, 1), np.array(ws).reshape(1, 2, 1, 1))
        np.testing.assert_array_equal(y.ravel(), [want], err_msg=f"x={xs} w={ws}")


@pytest.mark.parametrize("method", sorted(refconv.METHODS))
def test_unusual_memory_layouts_give_identical_results(method):
    """Read-only, broadcast (zero-stride), reversed, Fortran-ordered and big-endian inputs."""
    rng = np.random.default_rng(12)
    x, w, b = rng.standard_normal((2, 6, 7, 4)), rng.standard_normal((3, 2, 2, 6)), rng.standard_normal(6)
    geometry = dict(padding="SAME", stride=(2, 1), groups=2)
    want = refconv.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(w), b, method=method, **geometry)
    ro = x.copy()
    ro.setflags(write=False)
    variants = {
        "read-only": (ro, w, b),
        "fortran": (np.asfortranarray(x), np.asfortranarray(w), b),
        "reversed views": (x[::-1, ::-1][::-1, ::-1], w[:, ::-1][:, ::-1], b[::-1][::-1]),
        "big-endian": (x.astype(">f8"), w.astype(">f8"), b.astype(">f8")),
        "strided": (np.repeat(x, 2, axis=3)[..., ::2], w, b),
    }
    for name, (xv, wv, bv) in variants.items():
        assert_bitwise_equal(refconv.conv2d(xv, wv, bv, method=method, **geometry), want, f"{method}: {name}")
    # zero-stride broadcast input: every pixel equal
    xb = np.broadcast_to(np.arange(4.0), (1, 5, 5, 4))
    yb = refconv.conv2d(xb, w, method=method, groups=2)
    assert_bitwise_equal(yb, refconv.conv2d(np.array(xb), w, method=method, groups=2), f"{method}: broadcast input")
