"""The docs/examples kernels run as tests: what passes, what fails, and what the messages say."""

from __future__ import annotations

import importlib

import pytest
from conftest import EXAMPLES


def _example(name):
    return importlib.import_module(name)


pytestmark = pytest.mark.usefixtures("numba_single_threaded")


def test_every_example_is_tested():
    tested = {"numpy_im2col", "numba_direct", "winograd_f2x3", "padding_bug", "bias_forgotten"}
    found = {p.stem for p in EXAMPLES.glob("*.py")}
    assert found == tested, f"examples without a test (or tests without an example): {found ^ tested}"


def test_numpy_im2col_float32_passes():
    _example("numpy_im2col").main()


def test_numba_direct_loop_float32_passes():
    _example("numba_direct").main()


def test_padding_bug_fails_naming_the_padding():
    msg = _example("padding_bug").main()
    assert "padding" in msg and "SAME_LOWER" in msg and "instead of padding='SAME'" in msg, msg


def test_forgotten_bias_fails_naming_the_bias():
    msg = _example("bias_forgotten").main()
    assert "bias missing" in msg, msg


def test_winograd_reports_what_the_bound_says():
    out = _example("winograd_f2x3").main()
    assert out["random"] == "passes the plain float32 bound"
    adv = out["adversarial"]
    assert "exceed the float32 bound" in adv and "Winograd" in adv and "1803.10986" in adv, adv
    assert "beyond the plain float32 deterministic bound" in adv, adv
    assert out["adversarial_winograd_tol"] == "passes the Winograd-aware tolerance"


def test_winograd_matches_direct_conv_semantics():
    """The Winograd kernel computes the same cross-correlation (within its own bound) on odd sizes and NCHW."""
    import numpy as np

    from refconv.spec import ConvSpec
    from refconv.testing import assert_conv2d_close

    wg = _example("winograd_f2x3")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for padding in ("VALID", "SAME", ((2, 0), (1, 2))):
        spec = ConvSpec.from_arrays(x, w, b, padding=padding, data_format="NCHW")
        y = wg.conv2d_winograd_f32(x, w, b, spec)
        assert_conv2d_close(y, x, w, b, padding=padding, data_format="NCHW", tol=wg.winograd_tolerance(x, w, b, spec))
