"""Bad input raises the right RefconvError subclass, naming the shapes and values; foreign arrays are accepted."""

from __future__ import annotations

import numpy as np
import pytest

import refconv
from refconv.errors import DTypeError, RefconvError, ShapeError, UnknownNameError
from refconv.spec import as_float64

X = np.zeros((1, 6, 6, 4))
W = np.zeros((3, 3, 4, 2))

SHAPE_CASES = [  # (x, w, b, geometry, substrings the message must contain)
    (np.zeros((6, 6, 4)), W, None, {}, ["x.shape=(6, 6, 4)", "w.shape=(3, 3, 4, 2)", "4-D", "3-D"]),
    (X, np.zeros((3, 3, 4)), None, {}, ["x.shape=(1, 6, 6, 4)", "w.shape=(3, 3, 4)", "w must be 4-D"]),
    (np.zeros((1, 16, 32, 256)), np.zeros((5, 5, 128, 512)), None, {},
     ["x.shape=(1, 16, 32, 256) w.shape=(5, 5, 128, 512) groups=1: "
      "w's input channels (128) must equal C/groups (256)"]),
    (X, np.zeros((3, 3, 2, 2)), None, {"groups": 3}, ["groups=3", "must divide the input channels C (4)"]),
    (X, np.zeros((3, 3, 2, 3)), None, {"groups": 2}, ["groups=2", "must divide the output channels O (3)"]),
    (X, np.zeros((3, 3, 2, 2)), None, {"groups": 1}, ["w's input channels (2) must equal C/groups (4)"]),
    (X, W, None, {"stride": 0}, ["stride=0", "positive", "x.shape=(1, 6, 6, 4)"]),
    (X, W, None, {"stride": (1, -2)}, ["stride=(1, -2)", "positive"]),
    (X, W, None, {"dilation": 0}, ["dilation=0", "positive"]),
    (X, W, None, {"dilation": (-1, 1)}, ["dilation=(-1, 1)", "positive"]),
    (X, W, None, {"groups": 0}, ["groups=0", "positive"]),
    (X, W, None, {"groups": -2}, ["groups=-2", "positive"]),
    (X, W, None, {"groups": 1.5}, ["groups=1.5"]),
    (X, W, None, {"stride": 1.5}, ["stride=1.5"]),
    (X, W, None, {"padding": -1}, ["padding=-1", "non-negative"]),
    (X, W, None, {"padding": (1, -1)}, ["padding=(1, -1)", "non-negative"]),
    (X, W, None, {"padding": ((0, 1), (-3, 0))}, ["-3", "non-negative"]),
    (X, W, None, {"padding": "FULL"}, ["padding='FULL'", "SAME", "VALID"]),
    (X, W, None, {"padding": (1, 2, 3)}, ["padding=(1, 2, 3)"]),
    (np.zeros((1, 2, 2, 4)), W, None, {}, ["empty output", "x.shape=(1, 2, 2, 4)", "(3, 3)"]),
    (X, W, None, {"dilation": 3}, ["empty output", "dilation=(3, 3)", "(7, 7)"]),
    (X, W, np.zeros(3), {}, ["b.shape=(3,)", "(O,) = (2,)"]),
    (X, W, np.zeros((1, 2)), {}, ["b.shape=(1, 2)"]),
    (X, W, None, {"data_format": "NWHC"}, ["data_format='NWHC'", "NHWC", "NCHW"]),
    (X, W, None, {"kernel_format": "IOHW"}, ["kernel_format='IOHW'", "HWIO", "OIHW"]),
    (np.zeros((0, 6, 6, 4)), W, None, {}, ["x.shape=(0, 6, 6, 4)", "positive"]),
    (X, np.zeros((3, 0, 4, 2)), None, {}, ["w.shape=(3, 0, 4, 2)", "positive"]),
]


@pytest.mark.parametrize("x,w,b,geometry,needles", SHAPE_CASES, ids=[f"case{i}" for i in range(len(SHAPE_CASES))])
@pytest.mark.parametrize("method", sorted(refconv.METHODS))
def test_bad_geometry_raises_shape_error_naming_values(x, w, b, geometry, needles, method):
    with pytest.raises(ShapeError) as info:
        refconv.conv2d(x, w, b, method=method, **geometry)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RefconvError)
    msg = str(info.value)
    missing = [n for n in needles if n not in msg]
    assert not missing, f"message {msg!r} does not name {missing}"


@pytest.mark.parametrize("fn", ["conv2d", "conv2d_with_info", "conv2d_points"])
def test_every_entry_point_validates(fn):
    kwargs = {"sample": 1} if fn == "conv2d_points" else {}
    with pytest.raises(ShapeError, match="must equal C/groups"):
        getattr(refconv, fn)(X, np.zeros((3, 3, 3, 2)), **kwargs)
    with pytest.raises(DTypeError, match="complex"):
        getattr(refconv, fn)(X.astype(complex), W, **kwargs)


DTYPE_CASES = [
    (np.zeros((1, 3, 3, 1), dtype=complex), "complex"),
    (np.zeros((1, 3, 3, 1), dtype=np.complex64), "complex"),
    (np.full((1, 3, 3, 1), "a"), "x.dtype=<U1"),
    (np.full((1, 3, 3, 1), None, dtype=object), "x.dtype=object"),
    (np.zeros((1, 3, 3, 1), dtype="datetime64[s]"), "datetime64"),
    (np.full((1, 3, 3, 1), 2**53 + 1, dtype=np.int64), "2**53"),
    (np.full((1, 3, 3, 1), -(2**63) + 1, dtype=np.int64), "2**53"),  # -(2**63) itself is exact
    (np.full((1, 3, 3, 1), 2**64 - 1, dtype=np.uint64), "2**53"),
]


@pytest.mark.parametrize("x,needle", DTYPE_CASES, ids=[str(c[0].dtype) + c[1] for c in DTYPE_CASES])
def test_bad_dtypes_raise_dtype_error(x, needle):
    with pytest.raises(DTypeError) as info:
        refconv.conv2d(x, np.ones((1, 1, 1, 1)))
    assert isinstance(info.value, TypeError) and isinstance(info.value, RefconvError)
    assert needle in str(info.value), f"{str(info.value)!r} does not mention {needle!r}"


def test_bad_dtype_in_weights_and_bias_names_the_argument():
    with pytest.raises(DTypeError, match=r"^w\.dtype=complex128"):
        refconv.conv2d(np.ones((1, 3, 3, 1)), np.ones((1, 1, 1, 1), dtype=complex))
    with pytest.raises(DTypeError, match=r"^b\.dtype=complex128"):
        refconv.conv2d(np.ones((1, 3, 3, 1)), np.ones((1, 1, 1, 1)), np.ones(1, dtype=complex))


def test_large_integers_that_are_exact_are_accepted():
    big = np.array([2**53, -(2**53), 2**60, 2**62 + 2**10, 0], dtype=np.int64)
    np.testing.assert_array_equal(as_float64(big, "x"), [2.0**53, -(2.0**53), 2.0**60, 2.0**62 + 2.0**10, 0.0],
                                  err_msg="integers representable in float64 must convert exactly")
    u = np.array([2**63, 2**64 - 2**11], dtype=np.uint64)
    np.testing.assert_array_equal(as_float64(u, "x"), [2.0**63, 2.0**64 - 2.0**11])
    y = refconv.conv2d(np.full((1, 1, 1, 1), 2**60, dtype=np.int64), np.full((1, 1, 1, 1), 3, dtype=np.int8))
    np.testing.assert_array_equal(y.ravel(), [3 * 2.0**60])


def test_longdouble_inputs_convert_only_when_exact():
    ld = np.longdouble
    if np.finfo(ld).nmant <= 52:
        pytest.skip("longdouble is float64 on this platform")
    np.testing.assert_array_equal(as_float64(np.array([1.5, -2.0], dtype=ld), "x"), [1.5, -2.0])
    with pytest.raises(DTypeError, match="do not fit float64 exactly"):
        as_float64(np.array([1 + ld(2) ** -60], dtype=ld), "x")


def test_unknown_method_lists_the_registry():
    with pytest.raises(UnknownNameError) as info:
        refconv.conv2d(X, W, method="winograd")
    for name in refconv.METHODS:
        assert repr(name) in str(info.value), f"{name} missing from {info.value}"
    assert isinstance(info.value, KeyError)


def test_every_small_dtype_converts_exactly():
    import ml_dtypes

    rng = np.random.default_rng(0)
    base = rng.standard_normal((1, 4, 4, 2)) * 8
    for dt in (np.float16, np.float32, ml_dtypes.bfloat16, np.int8, np.int16, np.int32, np.uint8, np.bool_,
               ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        x = base.astype(dt)
        xf = as_float64(x, "x")
        assert xf.dtype == np.float64
        want = np.array([float(v) for v in x.ravel()]).reshape(x.shape)
        np.testing.assert_array_equal(xf, want, err_msg=f"{np.dtype(dt).name} does not convert exactly")
        np.testing.assert_array_equal(refconv.conv2d(x, np.ones((1, 1, 2, 1))), want.sum(axis=3, keepdims=True),
                                      err_msg=f"conv2d on {np.dtype(dt).name}")


# ----------------------------------------------------------- foreign arrays ----


def test_lists_and_tuples_are_accepted():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((1, 4, 5, 2)), rng.standard_normal((2, 2, 2, 3)), rng.standard_normal(3)
    want = refconv.conv2d(x, w, b, padding="SAME")
    got = refconv.conv2d(x.tolist(), tuple(w.tolist()), list(b), padding="SAME")
    np.testing.assert_array_equal(got, want, err_msg="nested lists must give the same result")


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((2, 3, 3, 3))
    kw = dict(data_format="NCHW", padding=1)
    np.testing.assert_array_equal(refconv.conv2d(torch.tensor(x), torch.tensor(w), **kw), refconv.conv2d(x, w, **kw),
                                  err_msg="torch float64 tensors")
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    np.testing.assert_array_equal(refconv.conv2d(xt, torch.tensor(w, dtype=torch.float32), **kw),
                                  refconv.conv2d(x.astype(np.float32), w.astype(np.float32), **kw),
                                  err_msg="torch float32 tensors with requires_grad")
    xb = torch.tensor(x).to(torch.bfloat16)
    want = np.array([float(v) for v in xb.flatten().tolist()]).reshape(x.shape)
    np.testing.assert_array_equal(refconv.conv2d(xb, torch.tensor(w), **kw), refconv.conv2d(want, w, **kw),
                                  err_msg="torch bfloat16 tensors must convert exactly")
    with pytest.raises(DTypeError, match="complex"):
        refconv.conv2d(torch.zeros((1, 3, 5, 5), dtype=torch.complex64), torch.tensor(w), **kw)


def test_tensorflow_tensors_are_accepted():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 5, 5, 3)), rng.standard_normal((3, 3, 3, 2))
    np.testing.assert_array_equal(refconv.conv2d(tf.constant(x), tf.Variable(w), padding="SAME"),
                                  refconv.conv2d(x, w, padding="SAME"), err_msg="tf float64 tensors")
    xb = tf.cast(tf.constant(x), tf.bfloat16)
    want = xb.numpy().astype(np.float64)
    np.testing.assert_array_equal(refconv.conv2d(xb, w), refconv.conv2d(want, w), err_msg="tf bfloat16 tensors")


def test_jax_arrays_are_accepted():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 5, 5, 3)).astype(np.float32), rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(refconv.conv2d(jnp.asarray(x), jnp.asarray(w)), refconv.conv2d(x, w),
                                  err_msg="jax arrays")
