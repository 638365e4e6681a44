"""Unit tests of refconv.testing: formats, the tolerance model, the assertion's contract and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from numpy_im2col import conv2d_im2col_f32

import refconv
from refconv.errors import ShapeError, UnknownNameError
from refconv.spec import ConvSpec
from refconv.testing import (
    BOUNDS,
    FORMATS,
    PRECISION_MODELS,
    assert_conv2d_close,
    compare_conv2d,
    conv2d_tolerance,
    round_to,
    ulp,
)

pytestmark = pytest.mark.usefixtures("numba_single_threaded")


def _rand(seed=0, xs=(2, 7, 6, 4), ws=(3, 3, 4, 5), bias=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[3]).astype(dtype) if bias else None
    return x, w, b


# ---- formats ------------------------------------------------------------------------------------


def test_round_to_matches_numpy_casts():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(20000) * 2.0 ** rng.integers(-30, 20, 20000)
    a = np.concatenate([a, [0.0, -0.0, 65504.0, 65520.0, 1e-8, 2.0**-24, 3 * 2.0**-26]])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(round_to(a, "float16"), a.astype(np.float16).astype(np.float64),
                                      err_msg="float16 rounding differs from numpy's cast")
    np.testing.assert_array_equal(round_to(a, "float32"), a.astype(np.float32).astype(np.float64),
                                  err_msg="float32 rounding differs from numpy's cast")
    import ml_dtypes

    np.testing.assert_array_equal(round_to(a, "bfloat16"), a.astype(ml_dtypes.bfloat16).astype(np.float64),
                                  err_msg="bfloat16 rounding differs from ml_dtypes")


def test_tf32_rounding_keeps_11_bits_and_float32_range():
    a = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-10, 3e38, 1e-39])
    r = round_to(a, "tf32")
    np.testing.assert_array_equal(r[:3], [1.0, 1 + 2.0**-9, 1 + 2.0**-10], err_msg="ties to even at 11 bits")
    assert np.isfinite(r[3]) and r[4] > 0, f"float32 exponent range expected, got {r}"
    np.testing.assert_array_equal(round_to(np.array([1 + 2047 * 2.0**-21]), "tf32", mode="truncate"), [1.0],
                                  err_msg="truncation rounds toward zero")


def test_ulp():
    np.testing.assert_array_equal(ulp(np.array([1.0, 1.5, 2.0, 0.0]), "float16"),
                                  [2.0**-10, 2.0**-10, 2.0**-9, 2.0**-24], err_msg="float16 spacing")


# ---- the tolerance model ------------------------------------------------------------------------


def _emulate(x, w, b, spec, precision):
    """An honest kernel at ``precision``: inputs rounded, float32 (or float64) accumulation, output rounded."""
    model = PRECISION_MODELS[precision]
    xr, wr = round_to(x.astype(float), model.inputs), round_to(w.astype(float), model.inputs)
    br = None if b is None else round_to(b.astype(float), model.inputs)
    if model.accumulation == "float64":
        y = refconv.conv2d(xr, wr, br, padding=spec.pads, stride=spec.stride, dilation=spec.dilation,
                           groups=spec.groups, data_format=spec.data_format, kernel_format=spec.kernel_format)
    else:
        y = conv2d_im2col_f32(xr, wr, br, spec).astype(np.float64)
    return round_to(y, model.output)


@pytest.mark.parametrize("precision", list(PRECISION_MODELS))
def test_honest_emulation_passes_at_its_precision(precision):
    x, w, b = _rand(1, dtype=np.float64)
    geometry = dict(padding="SAME", stride=2)
    spec = ConvSpec.from_arrays(x, w, b, **geometry)
    y = _emulate(x, w, b, spec, precision)
    for bound in BOUNDS:
        assert_conv2d_close(y, x, w, b, **geometry, precision=precision, bound=bound)


@pytest.mark.parametrize("precision", ["tf32", "float16", "bfloat16"])
def test_lower_precision_fails_as_float32_and_is_named(precision):
    x, w, b = _rand(2)
    spec = ConvSpec.from_arrays(x, w, b, padding="VALID")
    y = _emulate(x, w, b, spec, precision)
    c = compare_conv2d(y, x, w, b, precision="float32")
    assert not c.passed, f"{precision} output accepted as float32"
    names = {"tf32": "tf32", "float16": "float16", "bfloat16": "bfloat16"}
    assert names[precision] in c.message.lower(), c.message


def test_float32_fails_as_float64():
    x, w, b = _rand(3, dtype=np.float64)
    y = conv2d_im2col_f32(x, w, b, ConvSpec.from_arrays(x, w, b))
    c = compare_conv2d(y, x, w, b, precision="float64")
    assert not c.passed and "float32" in c.message, c.message


def test_tolerance_terms():
    x, w, b = _rand(4)
    t = conv2d_tolerance(x, w, b, padding=1)
    spec = ConvSpec.from_arrays(x, w, b, padding=1)
    assert t.tol.shape == spec.output_shape and t.exact.shape == spec.output_shape
    np.testing.assert_array_equal(t.input_term_nhwc, 0, err_msg="float32 inputs need no input-rounding term")
    from refconv.oracle._im2col import float_conv_nhwc

    mag = float_conv_nhwc(np.abs(x.astype(float)), np.abs(w.astype(float)), spec) + np.abs(b)
    gamma = spec.n_terms + 1
    gamma = gamma * 2.0**-24 / (1 - gamma * 2.0**-24)
    assert np.all(t.tol_nhwc >= gamma * mag), "tolerance below the Higham γ_n bound"
    assert np.all(t.tol_nhwc <= 1.01 * gamma * mag + 2.0**-23 * np.abs(t.exact_nhwc) + 1e-30), "tolerance too loose"
    t64 = conv2d_tolerance(x.astype(float) + 1e-9, w, b, padding=1)
    assert np.all(t64.input_term_nhwc > 0), "float64 inputs must carry a float32 input-rounding term"
    tp = conv2d_tolerance(x, w, b, padding=1, bound="probabilistic")
    assert np.all(tp.tol_nhwc < t.tol_nhwc), "the probabilistic bound must be tighter at n=36"


def test_nchw_and_oihw_layouts():
    x, w, b = _rand(5)
    xc, wc = x.transpose(0, 3, 1, 2).copy(), w.transpose(3, 2, 0, 1).copy()
    spec = ConvSpec.from_arrays(xc, wc, b, padding="SAME", data_format="NCHW")
    y = conv2d_im2col_f32(xc, wc, b, spec)
    assert_conv2d_close(y, xc, wc, b, padding="SAME", data_format="NCHW")
    assert_conv2d_close(y.transpose(0, 2, 3, 1), x, w, b, padding="SAME")
    with pytest.raises(AssertionError, match="NHWC layout"):
        assert_conv2d_close(y.transpose(0, 2, 3, 1), xc, wc, b, padding="SAME", data_format="NCHW")


# ---- edge cases the hidden suite names ----------------------------------------------------------


def test_exact_integer_data_requires_exact_results():
    rng = np.random.default_rng(6)
    x = rng.integers(-4, 5, (1, 6, 6, 3)).astype(np.float32)
    w = rng.integers(-4, 5, (3, 3, 3, 2)).astype(np.float32)
    y = conv2d_im2col_f32(x, w, None, ConvSpec.from_arrays(x, w))
    assert_conv2d_close(y, x, w)
    y2 = y.copy()
    y2[0, 0, 0, 0] += 1
    with pytest.raises(AssertionError, match="corrupted"):
        assert_conv2d_close(y2, x, w)


def test_zero_output_must_be_zero():
    x = np.zeros((1, 4, 4, 2), np.float32)
    w = np.ones((3, 3, 2, 2), np.float32)
    assert_conv2d_close(np.zeros((1, 2, 2, 2), np.float32), x, w)
    assert_conv2d_close(-np.zeros((1, 2, 2, 2), np.float32), x, w)
    with pytest.raises(AssertionError, match="4 / 8"):
        assert_conv2d_close(np.array([1e-30, 0] * 4, np.float32).reshape(1, 2, 2, 2), x, w)


def test_tiny_outputs_and_mixed_magnitudes():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((1, 5, 5, 4)) * 2.0 ** rng.integers(-20, 20, (1, 5, 5, 4))).astype(np.float32)
    w = (rng.standard_normal((2, 2, 4, 3)) * 2.0 ** rng.integers(-20, 20, (2, 2, 4, 3))).astype(np.float32)
    spec = ConvSpec.from_arrays(x, w)
    assert_conv2d_close(conv2d_im2col_f32(x, w, None, spec), x, w)
    tiny = x * np.float32(2.0**-100)
    assert_conv2d_close(conv2d_im2col_f32(tiny, w, None, spec), tiny, w)


def test_cancellation_where_sum_abs_dominates():
    """|y| ≪ Σ|x·w|: the tolerance scales with Σ|x·w|, so honest float32 passes and bias loss still shows."""
    x = np.array([1e4, 1e4 + 1, -2e4, 3.0], np.float32).reshape(1, 1, 1, 4)
    w = np.array([1.0, 1.0, 1.0, 1.0], np.float32).reshape(1, 1, 4, 1)
    b = np.array([0.5], np.float32)
    y = (x.astype(np.float32) @ w.reshape(4, 1)).reshape(1, 1, 1, 1) + b
    assert_conv2d_close(y, x, w, b)
    with pytest.raises(AssertionError):
        assert_conv2d_close(y + np.float32(0.05), x, w, b)


def test_depthwise_and_large_k():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 9, 9, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 1, 12)).astype(np.float32)
    spec = ConvSpec.from_arrays(x, w, groups=6, padding="SAME")
    assert_conv2d_close(conv2d_im2col_f32(x, w, None, spec), x, w, groups=6, padding="SAME")
    xl = rng.random((1, 6, 6, 256), dtype=np.float32)
    wl = rng.random((3, 3, 256, 4), dtype=np.float32)
    assert_conv2d_close(conv2d_im2col_f32(xl, wl, None, ConvSpec.from_arrays(xl, wl)), xl, wl)


def test_subnormal_inputs_flush_to_zero_accepted():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((1, 4, 4, 2)) * 2.0**-135).astype(np.float32)  # float32 subnormals
    w = rng.standard_normal((2, 2, 2, 2)).astype(np.float32)
    spec = ConvSpec.from_arrays(x, w)
    assert_conv2d_close(conv2d_im2col_f32(x, w, None, spec), x, w)
    assert_conv2d_close(np.zeros(spec.output_shape, np.float32), x, w)  # DAZ: inputs read as zero


def test_nonfinite_values():
    x = np.ones((1, 3, 3, 1), np.float32)
    x[0, 0, 0, 0] = np.inf
    w = np.ones((2, 2, 1, 1), np.float32)
    y = conv2d_im2col_f32(x, w, None, ConvSpec.from_arrays(x, w))
    assert_conv2d_close(y, x, w)
    y2 = y.copy()
    y2[0, 0, 0, 0] = np.nan
    with pytest.raises(AssertionError, match="1 / 4"):
        assert_conv2d_close(y2, x, w)
    with pytest.raises(AssertionError):
        assert_conv2d_close(np.full((1, 2, 2, 1), np.nan), np.ones((1, 3, 3, 1)), w)


def test_float16_overflow_accepted_when_inputs_overflow():
    x = np.full((1, 2, 2, 1), 70000.0)
    w = np.ones((1, 1, 1, 1))
    assert_conv2d_close(np.full((1, 2, 2, 1), np.inf, np.float16), x, w, precision="float16")


# ---- the contract -------------------------------------------------------------------------------


def test_user_tolerances_replace_the_model():
    x, w, b = _rand(10)
    exact = refconv.conv2d(x, w, b)
    assert_conv2d_close(exact + 1e-3, x, w, b, atol=2e-3)
    assert_conv2d_close(exact * (1 + 1e-4), x, w, b, rtol=2e-4)
    assert_conv2d_close(exact + 1e-3, x, w, b, tol=np.full(exact.shape, 2e-3))
    with pytest.raises(AssertionError, match="user tolerance"):
        assert_conv2d_close(exact + 1e-3, x, w, b, atol=1e-4)


def test_callable_and_framework_run_inputs():
    x, w, b = _rand(11)
    assert_conv2d_close(conv2d_im2col_f32, x, w, b, padding="SAME")
    assert_conv2d_close(lambda x, w, b: conv2d_im2col_f32(x, w, b, ConvSpec.from_arrays(x, w, b)), x, w, b)
    from refconv import frameworks

    run = frameworks.run(conv2d_im2col_f32, x, w, b, padding="SAME", stride=2, dtype="float32")
    assert_conv2d_close(run, x, w, b)  # geometry taken from the run's spec
    failed = frameworks.FrameworkRun("k", "1", "cpu", "cpu", "float32", "default", None, error="boom")
    with pytest.raises(AssertionError, match="boom"):
        assert_conv2d_close(failed, x, w, b)


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    x, w, b = _rand(15, xs=(1, 6, 6, 3), ws=(3, 3, 3, 2))
    xt, wt, bt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(w.transpose(3, 2, 0, 1).copy()), \
        torch.from_numpy(b)
    yt = torch.nn.functional.conv2d(xt, wt, bt, padding=1)
    assert_conv2d_close(yt, xt, wt, bt, padding=1, data_format="NCHW")
    with pytest.raises(AssertionError, match="flipped"):
        assert_conv2d_close(torch.nn.functional.conv2d(xt, wt.flip(2, 3), bt, padding=1), xt, wt, bt, padding=1,
                            data_format="NCHW")


def test_precision_aliases_and_two_argument_kernels():
    x, w, b = _rand(14)
    y = conv2d_im2col_f32(x, w, b, ConvSpec.from_arrays(x, w, b))
    for name in ("FP32", "single", np.float32, "float32"):
        assert_conv2d_close(y, x, w, b, precision=name)
    assert_conv2d_close(y, x, w, b, precision="TF32")
    assert_conv2d_close(y.astype(np.float16), x, w, b, precision="fp16")
    with pytest.raises(AssertionError, match="bias missing"):
        assert_conv2d_close(lambda x, w: conv2d_im2col_f32(x, w, None, ConvSpec.from_arrays(x, w)), x, w, b)


def test_message_contents():
    x, w, b = _rand(12)
    y = refconv.conv2d(x, w, b) * 1.001
    with pytest.raises(AssertionError) as info:
        assert_conv2d_close(y, x, w, b)
    msg = str(info.value)
    for needle in ("Mismatched elements:", "%", "exact=", "ulps=", "bound_ratio=", "Tolerance model:", "Spec:"):
        assert needle in msg, f"{needle!r} missing from:\n{msg}"


def test_traceback_hidden():
    import inspect

    src = inspect.getsource(assert_conv2d_close)
    assert "__tracebackhide__ = True" in src, "assert_conv2d_close must hide its frame from pytest tracebacks"


def test_shape_mismatch_and_usage_errors():
    x, w, b = _rand(13)
    with pytest.raises(AssertionError, match="shape"):
        assert_conv2d_close(np.zeros((2, 3, 3, 5)), x, w, b)
    with pytest.raises(UnknownNameError, match="valid choices"):
        assert_conv2d_close(np.zeros((2, 5, 4, 5)), x, w, b, precision="float8")
    with pytest.raises(UnknownNameError, match="valid choices"):
        assert_conv2d_close(np.zeros((2, 5, 4, 5)), x, w, b, bound="optimistic")
    with pytest.raises(ShapeError):
        assert_conv2d_close(np.zeros((2, 5, 4, 5)), x, w[:, :, :3], b)


def test_registries_cover_documented_names():
    assert set(PRECISION_MODELS) == {"float64", "float32", "tf32", "float16", "bfloat16"}
    assert set(PRECISION_MODELS) <= set(FORMATS)
    assert set(BOUNDS) == {"deterministic", "probabilistic"}
