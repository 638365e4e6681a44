"""External expectations: the onnx package's Conv backend cases, onnx.reference, and tf.nn.conv2d in float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import refconv
from refconv.oracle._im2col import float_conv_nhwc
from refconv.spec import ConvSpec

U64 = 2.0**-53

# ------------------------------------------------------------------ ONNX ----


def onnx_conv_backend_cases() -> list[tuple[str, object, list[np.ndarray], list[np.ndarray]]]:
    """Every case of onnx/backend/test/case/node/conv.py, captured by running its export* methods.

    ``expect`` is swapped for a recorder, which is what ``collect_testcases("Conv")``
    does too (that imports all ~1000 operator modules, ~15 s).
    """
    conv_cases = pytest.importorskip("onnx.backend.test.case.node.conv", reason="onnx is not installed")
    captured = []

    def record(node, inputs, outputs, name, **_):
        captured.append((name, node, list(inputs), list(outputs)))

    original = conv_cases.expect
    conv_cases.expect = record
    try:
        for attr in sorted(dir(conv_cases.Conv)):
            if attr.startswith("export"):
                getattr(conv_cases.Conv, attr)()
    finally:
        conv_cases.expect = original
    return captured


def onnx_attributes_to_geometry(node) -> dict:
    """ONNX Conv attributes -> refconv geometry (NCHW/OIHW)."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        padding = {"SAME_UPPER": "SAME"}.get(auto_pad, auto_pad)
    else:
        p = list(attrs.get("pads", [0, 0, 0, 0]))  # [top, left, bottom, right]
        padding = ((p[0], p[2]), (p[1], p[3]))
    return dict(
        stride=tuple(attrs.get("strides", (1, 1))),
        dilation=tuple(attrs.get("dilations", (1, 1))),
        groups=int(attrs.get("group", 1)),
        padding=padding,
        data_format="NCHW",
    )


def test_onnx_backend_conv_cases_are_all_found():
    names = [name for name, *_ in onnx_conv_backend_cases()]
    assert len(names) >= 6 and len(set(names)) == len(names), f"Conv backend cases: {names}"
    assert any("autopad_same" in n for n in names) and any("asymmetric" in n for n in names), names


@pytest.mark.parametrize("method", sorted(refconv.METHODS))
def test_onnx_backend_conv_cases(method):
    for name, node, inputs, (expected,) in onnx_conv_backend_cases():
        assert node.op_type == "Conv", name
        geometry = onnx_attributes_to_geometry(node)
        x, w, *rest = inputs
        got = refconv.conv2d(x, w, rest[0] if rest else None, method=method, **geometry)
        assert got.shape == expected.shape, f"{name}: shape {got.shape} != ONNX {expected.shape} ({geometry})"
        np.testing.assert_array_equal(got, expected.astype(np.float64), err_msg=f"{name} ({geometry}), method={method}")


ONNX_REFERENCE_GEOMETRIES = [  # (x NCHW, w OIHW, attributes)
    ((1, 2, 7, 8), (4, 2, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 2, 8, 7), (4, 2, 3, 2), dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    ((2, 4, 7, 8), (6, 2, 3, 2), dict(auto_pad="SAME_LOWER", strides=[2, 3], dilations=[2, 1], group=2)),
    ((1, 3, 9, 6), (3, 1, 2, 3), dict(pads=[1, 0, 2, 2], strides=[3, 1], dilations=[1, 2], group=3)),
    ((1, 2, 6, 6), (2, 2, 3, 3), dict(auto_pad="VALID", dilations=[2, 2])),
    ((1, 1, 5, 6), (2, 1, 3, 3), dict(auto_pad="SAME_UPPER", dilations=[2, 2], strides=[1, 1])),
]


@pytest.mark.parametrize("xs,ws,attrs", ONNX_REFERENCE_GEOMETRIES)
def test_onnx_reference_evaluator_agrees_within_the_float64_bound(xs, ws, attrs):
    """onnx.reference's Conv in float64 (rounded arithmetic) must sit within γ_n·Σ|x·w| of the exact result."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=list(ws[2:]), **attrs)
    io = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in ("x", "W", "B")]
    graph = helper.make_graph([node], "conv", io, [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    got = ReferenceEvaluator(model).run(None, {"x": x, "W": w, "B": b})[0]
    geometry = onnx_attributes_to_geometry(node)
    exact = refconv.conv2d(x, w, b, **geometry)
    assert got.shape == exact.shape, f"onnx.reference shape {got.shape} != refconv {exact.shape} for {attrs}"
    spec = ConvSpec.from_shapes(xs, ws, **geometry)
    mag = spec.y_from_nhwc(float_conv_nhwc(np.abs(spec.x_to_nhwc(x)), np.abs(spec.w_to_hwio(w)), spec)) + np.abs(b)[
        None, :, None, None]
    n = spec.n_terms + 1
    bound = n * U64 / (1 - n * U64) * mag + U64 * np.abs(exact)
    assert np.all(np.abs(got - exact) <= bound), (
        f"onnx.reference outside the float64 bound for {attrs}: max |diff| {np.abs(got - exact).max():.3g}")


# ------------------------------------------------------------ TensorFlow ----

TF_SIZES = [(7, 7), (8, 8), (7, 10), (9, 6)]  # odd, even and mixed
TF_CASES = [(h, w, k, s) for (h, w), k, s in itertools.product(TF_SIZES, [1, 2, 3, 4], [1, 2, 3])]


@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install refconv[tensorflow])")
    return tf


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_tensorflow_float64_conv2d_agrees_within_its_bound(tf, padding):
    """tf.nn.conv2d (float64, NHWC) on odd and even sizes, kernels 1-4, strides 1-3: within γ_n·Σ|x·w|."""
    rng = np.random.default_rng(5)
    failures = []
    for h, wd, k, s in TF_CASES:
        if padding == "VALID" and k > min(h, wd):
            continue
        x, w = rng.standard_normal((2, h, wd, 3)), rng.standard_normal((k, k + 1 if k < 4 else k, 3, 4))
        got = tf.nn.conv2d(tf.constant(x), tf.constant(w), strides=s, padding=padding).numpy()
        exact = refconv.conv2d(x, w, stride=s, padding=padding)
        if got.shape != exact.shape:
            failures.append(f"x{x.shape} w{w.shape} stride={s}: TF shape {got.shape} != {exact.shape}")
            continue
        spec = ConvSpec.from_shapes(x.shape, w.shape, stride=s, padding=padding)
        n = spec.n_terms
        bound = n * U64 / (1 - n * U64) * float_conv_nhwc(np.abs(x), np.abs(w), spec) + U64 * np.abs(exact)
        if not np.all(np.abs(got - exact) <= bound):
            failures.append(f"x{x.shape} w{w.shape} stride={s}: max |diff| {np.abs(got - exact).max():.3g}")
        assert got.dtype == np.float64
    assert not failures, f"tf.nn.conv2d {padding} disagrees: " + "; ".join(failures)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_tensorflow_padding_geometry_matches_exactly_on_integer_data(tf, padding):
    """Small integers make every sum exact: any SAME-padding disagreement shows as a hard mismatch."""
    rng = np.random.default_rng(6)
    for (h, wd, k, s), d in itertools.product(TF_CASES, [1, 2]):
        if d > 1 and s > 1:
            continue  # TF on CPU: dilation > 1 needs stride 1
        if padding == "VALID" and (k - 1) * d + 1 > min(h, wd):
            continue
        x = rng.integers(-8, 9, (1, h, wd, 2)).astype(np.float64)
        w = rng.integers(-8, 9, (k, k, 2, 3)).astype(np.float64)
        got = tf.nn.conv2d(x, w, strides=s, padding=padding, dilations=d).numpy()
        np.testing.assert_array_equal(refconv.conv2d(x, w, stride=s, padding=padding, dilation=d), got,
                                      err_msg=f"x{x.shape} k={k} stride={s} dilation={d} {padding}")
        if padding == "SAME":
            assert got.shape[1:3] == (math.ceil(h / s), math.ceil(wd / s))
