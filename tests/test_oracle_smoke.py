import numpy as np
import pytest

import refconv
from refconv.errors import DTypeError, RefconvError, ShapeError, UnknownNameError


@pytest.mark.parametrize("method", sorted(refconv.METHODS))
def test_methods_agree_on_seedlike_problem(method):
    rng = np.random.default_rng(1)
    x, w, b = rng.random((1, 9, 10, 8)), rng.standard_normal((3, 3, 8, 6)), rng.random(6)
    exact = refconv.conv2d(x, w, b, stride=2, padding="SAME")
    got = refconv.conv2d_with_info(x, w, b, stride=2, padding="SAME", method=method)
    if method == "kahan":
        assert np.all(np.abs(got.y - exact) <= got.bound), "kahan outside its own bound"
    else:
        np.testing.assert_array_equal(got.y, exact, err_msg=f"{method} differs from exact")


def test_exact_handles_cancellation_beyond_float64():
    x = np.array([1e300, 1.0, -1e300, 2.0**-1074]).reshape(1, 1, 4, 1)
    w = np.ones((1, 4, 1, 1))
    np.testing.assert_array_equal(refconv.conv2d(x, w).ravel(), [1.0])


def test_bad_shapes_name_every_value():
    with pytest.raises(ShapeError, match=r"w's input channels \(128\) must equal C/groups \(256\)") as e:
        refconv.conv2d(np.zeros((1, 16, 32, 256)), np.zeros((5, 5, 128, 512)))
    assert isinstance(e.value, ValueError) and isinstance(e.value, RefconvError)
    assert "x.shape=(1, 16, 32, 256)" in str(e.value) and "w.shape=(5, 5, 128, 512)" in str(e.value)


def test_complex_dtype_rejected():
    with pytest.raises(DTypeError, match="complex"):
        refconv.conv2d(np.zeros((1, 3, 3, 1), complex), np.zeros((1, 1, 1, 1)))


def test_unknown_method_lists_choices():
    with pytest.raises(UnknownNameError, match="'exact'"):
        refconv.conv2d(np.zeros((1, 3, 3, 1)), np.zeros((1, 1, 1, 1)), method="fast")
