"""An independent exact reference for conv2d, the value families and geometries the oracle tests share.

Nothing here uses refconv: padding resolution, layouts, the output shape and the
sum are re-derived from their definitions, the sum is a ``fractions.Fraction``,
and it is rounded once with CPython's correctly rounded ``int / int`` division
(``float(Fraction)``), subnormals and the overflow threshold included.
The tests at the bottom check the reference itself on hand-computed cases.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

# ---------------------------------------------------------------- rounding ----


def round_fraction(q: Fraction) -> float:
    """The float64 nearest to q (ties to even); ±inf beyond the range; exact zero is +0.0."""
    if q == 0:
        return 0.0
    try:
        return float(q)  # Fraction.__float__ is int/int true division: correctly rounded
    except OverflowError:
        return math.inf if q > 0 else -math.inf


def exact_term(xv: float, wv: float):
    """x·w in exact arithmetic: a Fraction, or one of "nan", "+inf", "-inf"."""
    if math.isnan(xv) or math.isnan(wv):
        return "nan"
    if math.isinf(xv) or math.isinf(wv):
        if xv == 0 or wv == 0:
            return "nan"  # inf·0
        return "+inf" if (xv > 0) == (wv > 0) else "-inf"
    return Fraction(xv) * Fraction(wv)


def exact_sum(terms, rounded: bool = True):
    """Exact-arithmetic sum of terms (Fractions and special markers), rounded once (or the Fraction itself)."""
    total = Fraction(0)
    specials = set()
    for t in terms:
        if isinstance(t, str):
            specials.add(t)
        else:
            total += t
    if "nan" in specials or {"+inf", "-inf"} <= specials:
        return math.nan
    if specials:
        return math.inf if "+inf" in specials else -math.inf
    return round_fraction(total) if rounded else total


# ---------------------------------------------------------------- geometry ----


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def reference_pads(padding, hw, khw, stride, dilation):
    """((top, bottom), (left, right)), re-derived from each padding form's definition."""
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        pads = []
        for size, k, s, d in zip(hw, khw, stride, dilation):
            out = math.ceil(size / s)  # TensorFlow: SAME keeps ceil(in/stride) outputs
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            lo, hi = total // 2, total - total // 2
            pads.append((hi, lo) if mode == "SAME_LOWER" else (lo, hi))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def to_python_floats(a) -> np.ndarray:
    """Exact float64 values of any supported array, element by element (object array of floats)."""
    a = np.asarray(a)
    out = np.empty(a.shape, dtype=object)
    for idx in np.ndindex(a.shape):
        v = a[idx]
        out[idx] = float(int(v)) if a.dtype.kind in "iu" else float(v)
        if a.dtype.kind in "iu":
            assert int(out[idx]) == int(v), "reference: integer not exactly representable"
    return out


def reference_conv2d(
    x, w, b=None, *, stride=1, padding="VALID", dilation=1, groups=1, data_format="NHWC", kernel_format=None,
    rounded: bool = True,
) -> np.ndarray:
    """Correctly rounded 2-D cross-correlation by definition, as a float64 array in data_format.

    ``rounded=False`` returns the exact sums instead (object array of Fractions, or ±inf/NaN floats).

    y[n, i, j, o] = b[o] + Σ_{a, c, k} x[n, i·sh + a·dh − top, j·sw + c·dw − left, g·Cg + k] · w[a, c, k, o]
    over the taps that land inside the input (padding taps are absent terms, not zeros).
    """
    kernel_format = kernel_format or ("HWIO" if data_format == "NHWC" else "OIHW")
    xo, wo = to_python_floats(x), to_python_floats(w)
    xc = xo if data_format == "NHWC" else xo.transpose(0, 2, 3, 1)
    wc = wo if kernel_format == "HWIO" else wo.transpose(2, 3, 1, 0)
    bo = None if b is None else to_python_floats(b)
    n_, h, wd, c = xc.shape
    kh, kw, cg, o = wc.shape
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    (pt, pb), (pl, pr) = reference_pads(padding, (h, wd), (kh, kw), (sh, sw), (dh, dw))
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    y = np.empty((n_, oh, ow, o), dtype=np.float64 if rounded else object)
    for n, i, j, oc in itertools.product(range(n_), range(oh), range(ow), range(o)):
        g = oc // og
        terms = [] if bo is None else [exact_term(bo[oc], 1.0)]
        for a in range(kh):
            r = i * sh + a * dh - pt
            if not 0 <= r < h:
                continue
            for cc in range(kw):
                col = j * sw + cc * dw - pl
                if not 0 <= col < wd:
                    continue
                for k in range(cg):
                    terms.append(exact_term(xc[n, r, col, g * cg + k], wc[a, cc, k, oc]))
        y[n, i, j, oc] = exact_sum(terms, rounded)
    return y if data_format == "NHWC" else y.transpose(0, 3, 1, 2)


def assert_bitwise_equal(got: np.ndarray, want: np.ndarray, context: str = "") -> None:
    """Same shape, NaN where want is NaN, and identical float64 bits elsewhere (signed zeros included)."""
    __tracebackhide__ = True
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{context}: shape {got.shape} != {want.shape}"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{context}: NaN positions differ")
    keep = ~np.isnan(want)
    gb, wb = got[keep].view(np.int64), want[keep].view(np.int64)
    bad = np.flatnonzero(gb != wb)
    if bad.size:
        where = np.argwhere(keep)[bad[:5]].tolist()
        pairs = [f"{tuple(p)}: got {float(g).hex()} want {float(v).hex()}" for p, g, v in
                 zip(where, got[keep][bad[:5]], want[keep][bad[:5]])]
        raise AssertionError(f"{context}: {bad.size} of {keep.sum()} elements differ in their float64 bits; "
                             + "; ".join(pairs))


# ------------------------------------------------------------- geometries ----

LAYOUTS = [("NHWC", None), ("NCHW", None), ("NHWC", "OIHW"), ("NCHW", "HWIO")]
PADDINGS = ["SAME", "SAME_LOWER", "VALID", 1, (1, 2), ((0, 2), (1, 0)), "same_upper", 0]
STRIDES = [1, 2, 3, (1, 3), (2, 1)]
DILATIONS = [1, 2, (2, 1)]
GROUPINGS = ["one", "two", "depthwise"]


def make_geometry(i: int) -> dict:
    """The i-th small geometry: every option cycles with a different period, so combinations vary."""
    rng = np.random.default_rng(1000 + i)
    data_format, kernel_format = LAYOUTS[i % len(LAYOUTS)]
    padding = PADDINGS[i % len(PADDINGS)]
    stride, dilation = STRIDES[i % len(STRIDES)], DILATIONS[i % len(DILATIONS)]
    grouping = GROUPINGS[i % len(GROUPINGS)]
    has_bias = i % 2 == 1
    groups = {"one": 1, "two": 2, "depthwise": int(rng.choice([2, 3]))}[grouping]
    c = groups * (1 if grouping == "depthwise" else int(rng.integers(1, 3)))
    o = groups * int(rng.integers(1, 3))
    while True:
        kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
        h, wd = (int(v) for v in rng.integers(1, 8, size=2))
        (pt, pb), (pl, pr) = reference_pads(padding, (h, wd), (kh, kw), _pair(stride), _pair(dilation))
        dh, dw = _pair(dilation)
        if h + pt + pb >= dh * (kh - 1) + 1 and wd + pl + pr >= dw * (kw - 1) + 1:
            break
    return dict(
        n=int(rng.integers(1, 3)), h=h, w=wd, c=c, kh=kh, kw=kw, o=o, has_bias=has_bias,
        geometry=dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                      data_format=data_format, kernel_format=kernel_format),
    )


N_GEOMETRIES = 40
GEOMETRIES = [make_geometry(i) for i in range(N_GEOMETRIES)]


def to_layout(x: np.ndarray, w: np.ndarray, geometry: dict) -> tuple[np.ndarray, np.ndarray]:
    """Canonical NHWC x / HWIO w transposed into the geometry's layouts."""
    kf = geometry["kernel_format"] or ("HWIO" if geometry["data_format"] == "NHWC" else "OIHW")
    return (x if geometry["data_format"] == "NHWC" else x.transpose(0, 3, 1, 2),
            w if kf == "HWIO" else w.transpose(3, 2, 0, 1))


# ----------------------------------------------------------- value families ----


def cancelling_values(rng, xshape, wshape, big: float, noise, scale_exp: int = -10):
    """x, w whose big products cancel exactly inside the image, leaving Σ noise·w: cond ~ big·2^20/|noise|.

    Even channels (within each group) hold the constant ``big``, odd channels hold
    ``noise``; integer weights times 2**scale_exp sum to exactly zero over the taps
    that meet ``big``. With one channel per group, x = big + noise (rounded).
    """
    kh, kw, cg, o = wshape
    big_channel = (np.arange(cg) % 2 == 0) if cg >= 2 else np.ones(1, dtype=bool)
    local = np.arange(xshape[3]) % cg
    x = np.where(big_channel[local], big, noise(xshape)) if cg >= 2 else big + noise(xshape)
    wi = rng.integers(-(2**20), 2**20, size=(kh * kw, cg, o)).astype(np.float64)
    sel = wi[:, big_channel, :].reshape(-1, o)
    if sel.shape[0] > 1:
        sel[-1] = -sel[:-1].sum(axis=0)  # exact: integers below 2**53
        wi[:, big_channel, :] = sel.reshape(kh * kw, int(big_channel.sum()), o)
    return x, np.ldexp(wi, scale_exp).reshape(wshape)


def family_values(name: str, rng: np.random.Generator, xshape, wshape):
    """(x, w, b) in canonical NHWC/HWIO layouts for one value family; dtypes as the family says."""
    o = wshape[3]
    normal = rng.standard_normal
    if name == "uniform":
        return rng.random(xshape), rng.random(wshape), rng.random(o)
    if name == "normal":
        return normal(xshape), normal(wshape), normal(o)
    if name == "float32":
        return normal(xshape).astype(np.float32), normal(wshape).astype(np.float32), normal(o).astype(np.float32)
    if name == "float16":
        return (rng.random(xshape).astype(np.float16), normal(wshape).astype(np.float16),
                normal(o).astype(np.float16))
    if name == "bfloat16":
        bf = ml_dtypes.bfloat16
        return normal(xshape).astype(bf), (normal(wshape) * 100).astype(bf), normal(o).astype(bf)
    if name == "bigint":  # int64 inputs up to 2**53: products of 106 bits, sums that must round
        lim = 2**53
        return (rng.integers(-lim, lim + 1, size=xshape), rng.integers(-lim, lim + 1, size=wshape),
                rng.integers(-lim, lim + 1, size=o))
    if name == "ties":  # sums of 53-bit odd integers land on rounding midpoints: ties to even
        x = rng.integers(2**52, 2**53, size=xshape).astype(np.float64)
        w = rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], size=wshape)
        return x, w, rng.integers(-(2**53), 2**53, size=o).astype(np.float64)
    if name == "illcond":  # terms ~2**70 cancel exactly; the result is the ~1-sized noise: cond ~ 2**70
        return (*cancelling_values(rng, xshape, wshape, 2.0**60, normal), normal(o))
    if name == "mixed":  # exponents spanning ~2000 binades
        return (np.ldexp(normal(xshape), rng.integers(-500, 500, size=xshape)),
                np.ldexp(normal(wshape), rng.integers(-500, 500, size=wshape)),
                np.ldexp(normal(o), rng.integers(-500, 500, size=o)))
    if name == "mixed_cancel":  # 2**410-sized terms cancel; the rest spans 400 binades
        x, w = cancelling_values(rng, xshape, wshape, 2.0**400,
                                 lambda shape: np.ldexp(normal(shape), rng.integers(-400, 0, size=shape)))
        return x, w, np.ldexp(normal(o), rng.integers(-400, 0, size=o))
    if name == "overflow":  # products ~2**1035 overflow float64 mid-sum; interior sums are ~2**20
        return (*cancelling_values(rng, xshape, wshape, 2.0**1015, normal, scale_exp=0), normal(o))
    if name == "underflow":  # products ~2**-1080 underflow float64; sums are subnormal
        return (np.ldexp(normal(xshape), -540), np.ldexp(normal(wshape), -540),
                np.ldexp(normal(o), -1070))
    if name == "subnormal":  # subnormal inputs mixed with tiny normals
        x = np.where(rng.random(xshape) < 0.5, rng.integers(-(2**20), 2**20, size=xshape) * 2.0**-1074,
                     np.ldexp(normal(xshape), -1000))
        return x, np.ldexp(normal(wshape), rng.integers(-30, 30, size=wshape)), np.ldexp(normal(o), -1060)
    if name == "signed_zero":  # every term is ±0: the exact sum is zero, returned as +0.0
        return (np.where(rng.random(xshape) < 0.5, -0.0, 0.0), normal(wshape),
                np.where(rng.random(o) < 0.5, -0.0, 0.0))
    if name == "nonfinite":  # NaN, ±inf and zeros sprinkled so inf·0 and +inf + -inf occur
        def sprinkle(a, p):
            r = rng.random(a.shape)
            a = a.copy()
            a[r < p] = np.inf
            a[(r >= p) & (r < 2 * p)] = -np.inf
            a[(r >= 2 * p) & (r < 2.5 * p)] = np.nan
            a[(r >= 2.5 * p) & (r < 3.5 * p)] = 0.0
            return a
        return sprinkle(normal(xshape), 0.05), sprinkle(normal(wshape), 0.05), sprinkle(normal(o), 0.1)
    raise KeyError(name)


FAMILIES = ["uniform", "normal", "float32", "float16", "bfloat16", "bigint", "ties", "illcond", "mixed",
            "mixed_cancel", "overflow", "underflow", "subnormal", "signed_zero", "nonfinite"]


def make_case(family: str, geometry_index: int, seed: int = 0):
    """(x, w, b, geometry) in the geometry's layouts; b is None when the geometry has no bias."""
    g = GEOMETRIES[geometry_index]
    rng = np.random.default_rng([seed, geometry_index, FAMILIES.index(family)])
    cg = g["c"] // g["geometry"]["groups"]
    x, w, b = family_values(family, rng, (g["n"], g["h"], g["w"], g["c"]), (g["kh"], g["kw"], cg, g["o"]))
    x, w = to_layout(x, w, g["geometry"])
    return x, w, (b if g["has_bias"] else None), g["geometry"]


# ------------------------------------------------------ tests of the reference ----


def test_round_fraction_is_correctly_rounded_at_the_edges():
    big = 2**1024 - 2**970  # midpoint between the largest float64 and 2**1024: ties to even goes up
    cases = {
        Fraction(big): math.inf,
        Fraction(big - 1): 1.7976931348623157e308,
        Fraction(-big): -math.inf,
        Fraction(1, 2**1075): 0.0,  # half the smallest subnormal: ties to even (0)
        Fraction(3, 2**1076): 5e-324,  # 0.75 of it rounds up
        Fraction(3, 2**1075): 1e-323,  # 1.5 of it: ties to even (2)
        Fraction(2**53 + 1): 9007199254740992.0,
        Fraction(2**53 + 3): 9007199254740996.0,
        Fraction(-1, 3): -1 / 3,
    }
    got = [round_fraction(q) for q in cases]
    np.testing.assert_array_equal(np.array(got).view(np.int64), np.array(list(cases.values())).view(np.int64),
                                  err_msg="round_fraction is not correctly rounded")


def test_exact_sum_special_value_semantics():
    F = Fraction
    assert math.isnan(exact_sum([exact_term(math.inf, 0.0), F(1)])), "inf·0 must give NaN"
    assert math.isnan(exact_sum([exact_term(math.inf, 1.0), exact_term(-math.inf, 1.0)])), "+inf + -inf"
    assert math.isnan(exact_sum([exact_term(math.nan, 0.0)])), "NaN·0 must give NaN"
    np.testing.assert_array_equal(exact_sum([exact_term(-math.inf, -2.0), F(-10**400)]), math.inf,
                                  err_msg="a finite term cannot cancel an infinite one")
    np.testing.assert_array_equal(exact_sum([exact_term(1e308, 10.0), exact_term(-1e308, 10.0), F(3)]), 3.0,
                                  err_msg="overflowing products must cancel exactly")


def test_reference_pads_match_hand_computed_tensorflow_values():
    # TF docs: in=5, k=3, s=2 -> out 3, total pad 2 -> (1, 1); in=6 -> out 3, total 1 -> (0, 1)
    assert reference_pads("SAME", (5, 6), (3, 3), (2, 2), (1, 1)) == ((1, 1), (0, 1))
    assert reference_pads("SAME_LOWER", (5, 6), (3, 3), (2, 2), (1, 1)) == ((1, 1), (1, 0))
    assert reference_pads("SAME", (32, 16), (5, 5), (2, 2), (1, 1)) == ((1, 2), (1, 2))  # the seed notebook


def test_reference_conv2d_on_a_hand_computed_example():
    x = np.arange(1.0, 10.0).reshape(1, 3, 3, 1)
    w = np.array([[1.0, 10.0], [100.0, 1000.0]]).reshape(2, 2, 1, 1)
    y = reference_conv2d(x, w, np.array([0.5]), padding=((0, 1), (1, 0)))
    # rows 0..2 of the top-left-padded input; tap (0,0) is the padding column at j=0
    want = np.array([[10 + 4000, 1 + 20 + 400 + 5000, 2 + 30 + 500 + 6000],
                     [40 + 7000, 4 + 50 + 700 + 8000, 5 + 60 + 800 + 9000],
                     [70, 7 + 80, 8 + 90]], dtype=float) + 0.5
    np.testing.assert_array_equal(y[0, :, :, 0], want, err_msg="reference conv disagrees with hand computation")


def test_geometries_cover_every_option():
    seen = {k: {repr(g["geometry"][k]) for g in GEOMETRIES} for k in ("padding", "stride", "dilation")}
    assert seen["padding"] == {repr(p) for p in PADDINGS}, "a padding form is not covered"
    assert seen["stride"] == {repr(s) for s in STRIDES}, "a stride is not covered"
    assert seen["dilation"] == {repr(d) for d in DILATIONS}, "a dilation is not covered"
    layouts = {(g["geometry"]["data_format"], g["geometry"]["kernel_format"]) for g in GEOMETRIES}
    assert layouts == set(LAYOUTS), "a layout is not covered"
    assert {g["geometry"]["groups"] > 1 and g["c"] == g["geometry"]["groups"] for g in GEOMETRIES} == {True, False}
    assert {g["has_bias"] for g in GEOMETRIES} == {True, False}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_values_are_what_they_claim(family):
    x, w, b = family_values(family, np.random.default_rng(0), (1, 4, 4, 2), (3, 3, 2, 2))
    assert x.shape == (1, 4, 4, 2) and w.shape == (3, 3, 2, 2) and b.shape == (2,)
    if family in ("illcond", "mixed_cancel", "overflow"):
        np.testing.assert_array_equal(w[:, :, 0, :].sum(axis=(0, 1)), 0.0,
                                      err_msg="weights meeting the big channel do not sum to zero")
        assert np.all(x[..., 0] == x.flat[0]) and np.abs(x[..., 1]).max() < 2.0**-50 * x.flat[0], "big/noise channels"
    if family == "overflow":
        with np.errstate(over="ignore"):
                assert np.isinf(np.max(np.abs(x)) * np.max(np.abs(w))), "overflow family products must overflow"
    if family == "subnormal":
        assert np.any((x != 0) & (np.abs(x) < 2.0**-1022)), "subnormal family has no subnormal"
