"""The seed notebook: PyTorch float64 against TensorFlow float32 on the CPU, at the notebook's shapes.

1×16×32×256 input, 5×5×256→512 kernel, stride 2, SAME, uniform [0, 1) data with bias. The report must say
that TensorFlow is float32 "ok" (max error in float32 ulps, against the bound), that PyTorch float64 is "ok",
and that the >1e-3 gap is float32 rounding in TensorFlow, not a bug on either side.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import refconv


def _seed_case():
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2021)
    kernel = rng.random((5, 5, 256, 512))
    bias = rng.random(512)
    x = rng.random((1, 16, 32, 256))
    # TensorFlow float32, NHWC/HWIO, SAME (what the notebook's Keras Conv2D computes)
    y_tf = tf.nn.bias_add(
        tf.nn.conv2d(tf.constant(x, tf.float32), tf.constant(kernel, tf.float32), strides=2, padding="SAME"),
        tf.constant(bias, tf.float32),
    ).numpy()
    # PyTorch float64, NCHW/OIHW, explicit pads (1, 2, 1, 2) as in the notebook
    xt = torch.nn.functional.pad(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), (1, 2, 1, 2))
    wt = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    y_torch = torch.nn.functional.conv2d(xt, wt, torch.from_numpy(bias), stride=2).permute(0, 2, 3, 1).numpy()
    report = refconv.explain(
        x, kernel, bias, stride=2, padding="SAME",
        runs=[("torch:cpu:float64", y_torch, "float64"), ("tensorflow:cpu:float32", y_tf, "float32")],
    )
    return report, np.abs(y_tf - y_torch).max()


def test_seed_notebook_case():
    """One test: the seed case is computed once even when xdist spreads a module over workers."""
    seed_case = _seed_case()
    # --- a float32-sized gap between the frameworks, as in the notebook (there: > 1e-3)
    _, gap = seed_case
    assert gap > 1e-4, f"gap {gap}: expected a float32-sized gap between the frameworks"

    # --- tensorflow float32 is ok within the float32 bound
    report, _ = seed_case
    a = report.attributions[1]
    assert (a.precision, a.mismatch, a.verdict) == ("float32", None, "ok"), (a.precision, a.verdict, a.candidates)
    assert a.output_dtype == "float32" and a.n_terms == 5 * 5 * 256 + 1, (a.output_dtype, a.n_terms)
    assert 0.5 < a.max_ulp < 1e3, f"max error {a.max_ulp} float32 ulps"
    # TF's accumulation order depends on oneDNN's version and CPU; the deterministic bound must hold everywhere
    assert a.max_bound_ratio < a.deterministic_bound, (a.max_bound_ratio, a.probabilistic_bound, a.deterministic_bound)
    assert "float32 ulps" in a.explanation and "verdict ok" in a.explanation, a.explanation
    assert a.input_cast_error < a.arithmetic_error, (a.input_cast_error, a.arithmetic_error)

    # --- torch float64 is ok
    report, _ = seed_case
    a = report.attributions[0]
    assert (a.precision, a.mismatch, a.verdict) == ("float64", None, "ok"), (a.precision, a.verdict, a.candidates)
    assert a.max_abs_error < 1e-9, a.max_abs_error

    # --- pair says float32 rounding in tensorflow not a bug
    report, gap = seed_case
    (p,) = report.pairs
    assert p.wrong == "neither", p.statement
    assert p.share_b > 0.999, (p.share_a, p.share_b)
    np.testing.assert_allclose(p.max_abs_diff, gap, rtol=1e-12, err_msg="pair gap is max |y_torch - y_tf|")
    assert p.statement.startswith("neither is wrong") and "float32 rounding in tensorflow:cpu:float32" in p.statement
    doc = json.loads(json.dumps(report.to_dict()))
    assert [r["verdict"] for r in doc["runs"]] == ["ok", "ok"], doc["runs"]
    assert math.isclose(doc["pairs"][0]["max_abs_diff"], gap), doc["pairs"]
