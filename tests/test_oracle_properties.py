"""hypothesis properties of the oracle: exact where they must be exact.

Linearity, SAME equals its resolved explicit pads, grouped conv equals the
per-group concatenation, NCHW equals NHWC, and (exact method only) the result
does not depend on the order of the terms. Arbitrary float64 dot products
(hypothesis' edge-heavy floats, NaN/inf included) are checked bit for bit
against the Fraction reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_oracle_reference import assert_bitwise_equal, reference_conv2d

import refconv
from refconv.spec import ConvSpec

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
METHODS = sorted(refconv.METHODS)


@st.composite
def problems(draw, max_hw: int = 7, padding_forms: bool = True):
    """A valid small conv problem in canonical NHWC/HWIO plus geometry (layouts added by the tests)."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = groups > 1 and draw(st.booleans())
    c = groups * (1 if depthwise else draw(st.integers(1, 3)))
    o = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h = draw(st.integers(max(1, (kh - 1) * dilation[0] + 1 - 2), max_hw))
    w = draw(st.integers(max(1, (kw - 1) * dilation[1] + 1 - 2), max_hw))
    if padding_forms:
        padding = draw(st.one_of(
            st.sampled_from(["SAME", "SAME_LOWER", "VALID"]),
            st.integers(0, 2),
            st.tuples(st.integers(0, 2), st.integers(0, 2)),
            st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))),
        ))
    else:
        padding = "SAME"
    geometry = dict(stride=stride, dilation=dilation, groups=groups, padding=padding)
    try:
        ConvSpec.from_shapes((1, h, w, c), (kh, kw, c // groups, o), **geometry)
    except ValueError:
        geometry["padding"] = "SAME"  # SAME is never empty
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    return (n, h, w, c), (kh, kw, c // groups, o), geometry, seed


def _data(xshape, wshape, seed, kind="normal"):
    rng = np.random.default_rng(seed)
    if kind == "int":
        return (rng.integers(-1024, 1025, xshape).astype(float), rng.integers(-1024, 1025, wshape).astype(float),
                rng.integers(-1024, 1025, wshape[3]).astype(float))
    return rng.standard_normal(xshape), rng.standard_normal(wshape), rng.standard_normal(wshape[3])


@SETTINGS
@given(problems(), st.integers(-40, 40), st.sampled_from(METHODS))
def test_power_of_two_scaling_is_exact(problem, k, method):
    xs, ws, geometry, seed = problem
    x, w, b = _data(xs, ws, seed)
    y = refconv.conv2d(x, w, b, method=method, **geometry)
    y2 = refconv.conv2d(x, np.ldexp(w, k), np.ldexp(b, k), method=method, **geometry)
    np.testing.assert_array_equal(y2, np.ldexp(y, k), err_msg=f"{method}: conv(x, 2^k w, 2^k b) != 2^k conv(x, w, b)")
    yn = refconv.conv2d(-x, w, -b, method=method, **geometry)
    np.testing.assert_array_equal(yn, -y, err_msg=f"{method}: conv(-x, w, -b) != -conv(x, w, b)")


@SETTINGS
@given(problems(), st.sampled_from(METHODS))
def test_linearity_is_exact_on_integer_data(problem, method):
    xs, ws, geometry, seed = problem
    x1, w1, b1 = _data(xs, ws, seed, "int")
    x2, w2, b2 = _data(xs, ws, seed + 1, "int")
    conv = lambda x, w, b: refconv.conv2d(x, w, b, method=method, **geometry)  # noqa: E731
    np.testing.assert_array_equal(conv(x1 + x2, w1, b1 + b2), conv(x1, w1, b1) + conv(x2, w1, b2),
                                  err_msg=f"{method}: not additive in x")
    np.testing.assert_array_equal(conv(x1, w1 + w2, b1), conv(x1, w1, b1) + conv(x1, w2, 0 * b1),
                                  err_msg=f"{method}: not additive in w")
    np.testing.assert_array_equal(conv(3 * x1, w1, 3 * b1), 3 * conv(x1, w1, b1), err_msg=f"{method}: not homogeneous")


@SETTINGS
@given(problems(padding_forms=False), st.sampled_from(["SAME", "SAME_LOWER", "same_upper"]))
def test_same_equals_its_resolved_explicit_pads(problem, mode):
    xs, ws, geometry, seed = problem
    x, w, b = _data(xs, ws, seed)
    geometry = geometry | {"padding": mode}
    spec = ConvSpec.from_shapes(xs, ws, (ws[3],), **geometry)
    explicit = geometry | {"padding": spec.pads}
    assert ConvSpec.from_shapes(xs, ws, **explicit).output_shape == spec.output_shape
    np.testing.assert_array_equal(refconv.conv2d(x, w, b, **geometry), refconv.conv2d(x, w, b, **explicit),
                                  err_msg=f"{mode} differs from its pads {spec.pads}")
    # TensorFlow's rule: out = ceil(in / stride) whatever the kernel and dilation
    assert spec.out_hw == tuple(math.ceil(s / st_) for s, st_ in zip(xs[1:3], geometry["stride"]))


@SETTINGS
@given(problems(), st.sampled_from(METHODS))
def test_grouped_conv_equals_per_group_concatenation(problem, method):
    xs, ws, geometry, seed = problem
    x, w, b = _data(xs, ws, seed)
    groups = geometry["groups"]
    cg, og = xs[3] // groups, ws[3] // groups
    whole = refconv.conv2d(x, w, b, method=method, **geometry)
    parts = [
        refconv.conv2d(x[..., g * cg:(g + 1) * cg], w[..., g * og:(g + 1) * og], b[g * og:(g + 1) * og],
                       method=method, **(geometry | {"groups": 1}))
        for g in range(groups)
    ]
    np.testing.assert_array_equal(whole, np.concatenate(parts, axis=3),
                                  err_msg=f"{method}: groups={groups} differs from per-group convs")


@SETTINGS
@given(problems(), st.sampled_from(METHODS), st.sampled_from(["OIHW", "HWIO"]))
def test_nchw_equals_nhwc(problem, method, kernel_format):
    xs, ws, geometry, seed = problem
    x, w, b = _data(xs, ws, seed)
    nhwc = refconv.conv2d(x, w, b, method=method, **geometry)
    wk = w.transpose(3, 2, 0, 1) if kernel_format == "OIHW" else w
    nchw = refconv.conv2d(x.transpose(0, 3, 1, 2), wk, b, method=method, data_format="NCHW",
                          kernel_format=kernel_format, **geometry)
    assert_bitwise_equal(nchw, nhwc.transpose(0, 3, 1, 2), f"{method}: NCHW/{kernel_format} vs NHWC/HWIO")


@SETTINGS
@given(problems(padding_forms=False), st.data())
def test_exact_does_not_depend_on_term_order(problem, data):
    """Permuting input channels, or mirroring image and kernel, reorders the sum: exact must not notice."""
    xs, ws, geometry, seed = problem
    rng = np.random.default_rng(seed)
    # ill-conditioned data: large terms that cancel make rounded summation order-dependent
    x = rng.standard_normal(xs) * 2.0 ** rng.integers(-60, 60, xs)
    w = rng.standard_normal(ws) * 2.0 ** rng.integers(-60, 60, ws)
    (_, h, wd, _), (kh, kw, _, _) = xs, ws
    dh, dw = geometry["dilation"]
    need = max(0, -((h - (kh - 1) * dh - 1) // 2), -((wd - (kw - 1) * dw - 1) // 2))  # symmetric pads, non-empty
    geometry = geometry | {"groups": 1, "stride": (1, 1), "padding": max(need, data.draw(st.integers(0, 2)))}
    w = w[:, :, :1, :].repeat(xs[3], axis=2) * rng.standard_normal((1, 1, xs[3], 1))
    y = refconv.conv2d(x, w, **geometry)
    perm = np.array(data.draw(st.permutations(range(xs[3]))), dtype=int)
    np.testing.assert_array_equal(refconv.conv2d(x[..., perm], w[:, :, perm], **geometry), y,
                                  err_msg=f"channel permutation {perm.tolist()} changed the exact result")
    mirrored = refconv.conv2d(x[:, ::-1, ::-1], w[::-1, ::-1], **geometry)
    np.testing.assert_array_equal(mirrored, y[:, ::-1, ::-1], err_msg="mirrored image and kernel")


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_finite, _finite), min_size=1, max_size=12), st.lists(st.integers(0, 11), max_size=6),
       st.one_of(st.none(), _finite))
def test_exact_dot_products_of_arbitrary_floats(pairs, negate, bias):
    """Edge-heavy floats (subnormals, ±max, ±0) with injected exact cancellations, against Fraction."""
    xs = [p[0] for p in pairs] + [-pairs[i % len(pairs)][0] for i in negate]
    ws = [p[1] for p in pairs] + [pairs[i % len(pairs)][1] for i in negate]
    x = np.array(xs).reshape(1, 1, -1, 1)
    w = np.array(ws).reshape(1, -1, 1, 1)
    b = None if bias is None else np.array([bias])
    with np.errstate(all="ignore"):
        got = refconv.conv2d(x, w, b)
    assert_bitwise_equal(got, reference_conv2d(x, w, b), f"x={xs} w={ws} b={bias}")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(_floats, _floats), min_size=1, max_size=8), st.one_of(st.none(), _floats))
def test_exact_special_values_of_arbitrary_floats(pairs, bias):
    x = np.array([p[0] for p in pairs]).reshape(1, 1, -1, 1)
    w = np.array([p[1] for p in pairs]).reshape(1, -1, 1, 1)
    b = None if bias is None else np.array([bias])
    with np.errstate(all="ignore"):
        got = refconv.conv2d(x, w, b)
    assert_bitwise_equal(got, reference_conv2d(x, w, b), f"pairs={pairs} b={bias}")


@pytest.mark.parametrize("method", METHODS)
def test_registry_methods_all_accept_every_layout(method):
    """Enumerates the registry: a method added to refconv.METHODS is tested here without editing this file."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((3, 2, 2, 2))
    y = refconv.conv2d(x, w, method=method, data_format="NCHW", padding="SAME")
    want = reference_conv2d(x, w, data_format="NCHW", padding="SAME")
    np.testing.assert_allclose(y, want, rtol=1e-14, atol=1e-14, err_msg=f"{method} on NCHW/OIHW SAME")
