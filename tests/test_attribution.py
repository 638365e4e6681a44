"""Attribution units: number grids, registries (every model and hypothesis), verdict rules, serialization."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest

import refconv
from refconv.attribution import (
    FORMATS,
    HYPOTHESES,
    MISMATCHES,
    PRECISION_MODELS,
    PRECISIONS,
    VERDICTS,
    attribute,
    choose_precision,
    explain,
    round_to,
    ulp,
)
from refconv.attribution.attribute import _Z, ModelFit, Sample, _toward, projection
from refconv.attribution.hypotheses import generate
from refconv.errors import FrameworkRunError, ShapeError, UnknownNameError
from refconv.frameworks.base import FrameworkRun
from refconv.spec import ConvSpec

# ---------------------------------------------------------------------------------------------
# number grids


def _round_reference(v: float, fmt, mode: str) -> float:
    """Round a float64 once onto the format's grid with Fractions (nearest-even or toward zero)."""
    if v == 0 or not math.isfinite(v):
        return v
    f = Fraction(v)
    a = abs(f)
    e = max(math.floor(math.log2(a)), fmt.min_exp)
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    e = max(e, fmt.min_exp)
    q = a / Fraction(2) ** (e - fmt.precision + 1)
    if mode == "truncate":
        n = math.floor(q)
    else:
        n = math.floor(q)
        rem = q - n
        if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
            n += 1
    r = n * Fraction(2) ** (e - fmt.precision + 1)
    if r > Fraction(fmt.max_value):
        r = Fraction(fmt.max_value) if mode == "truncate" else None
    out = math.inf if r is None else float(r)
    return math.copysign(out, v)


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "float64"])
@pytest.mark.parametrize("mode", ["nearest", "truncate"])
def test_round_to_matches_fraction_reference(fmt, mode):
    rng = np.random.default_rng(hash((fmt, mode)) % 2**32)
    f = FORMATS[fmt]
    scale = 2.0 ** rng.integers(f.min_exp - f.precision - 2, int(math.log2(f.max_value)) + 2, 400)
    v = rng.standard_normal(400) * scale
    one = 1.0 + 2.0 ** -np.arange(1, 30)  # midpoints and near-midpoints around 1
    mid = 1.0 + 2.0 ** -f.precision + np.array([0.0, 2.0**-52, -(2.0**-52)])
    v = np.concatenate([v, one, -one, mid, [f.max_value, f.max_value * (1 + 2.0**-f.precision), f.tiny / 2, 0.0]])
    got = round_to(v, fmt, mode)
    want = np.array([_round_reference(float(t), f, mode) for t in v])
    np.testing.assert_array_equal(got, want, err_msg=f"round_to(..., {fmt!r}, {mode!r}) is not a single rounding")


def test_round_to_equals_numpy_casts_and_rejects_unknown_names():
    v = np.random.default_rng(0).standard_normal(1000) * 1e3
    np.testing.assert_array_equal(round_to(v, "float32"), v.astype(np.float32), err_msg="float32 cast")
    np.testing.assert_array_equal(round_to(v, "float16"), v.astype(np.float16), err_msg="float16 cast")
    with pytest.raises(UnknownNameError, match="valid choices"):
        round_to(v, "float8")
    with pytest.raises(UnknownNameError, match="rounding mode"):
        round_to(v, "tf32", "up")


def test_ulp_is_the_grid_spacing():
    np.testing.assert_array_equal(ulp(np.array([1.0, 1.5, 2.0, 0.0]), "float32"),
                                  [2.0**-23, 2.0**-23, 2.0**-22, 2.0**-149], err_msg="float32 ulp")
    np.testing.assert_array_equal(ulp(np.array([1.0, 65504.0, 1e-7]), "float16"), [2.0**-10, 32.0, 2.0**-24],
                                  err_msg="float16 ulp incl. subnormal")


# ---------------------------------------------------------------------------------------------
# registries: every precision model and every hypothesis kind is recognized


def _problem(seed=0, shape=(1, 7, 8, 4), kshape=(3, 3, 4, 3)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(kshape), rng.standard_normal(kshape[3])


@pytest.mark.parametrize("name", [n for n, m in PRECISION_MODELS.items() if not m.fallback])
def test_every_precision_model_explains_its_own_emulation(name):
    m = PRECISION_MODELS[name]
    x, w, b = _problem(1)
    xr, wr = round_to(x, m.input_format, m.rounding), round_to(w, m.input_format, m.rounding)
    br = round_to(b, m.bias_format)
    exact = refconv.conv2d(xr, wr, br, padding="SAME")
    out = "float64" if m.label == "float64" else "float32"
    y = round_to(exact, out)  # exact accumulation, one output rounding
    a = attribute(y, x, w, b, padding="SAME", dtype=m.label if m.label != "tf32" else "tf32")
    assert m.label in a.candidates, (name, a.candidates, a.extra["model_fits"])
    assert (a.precision, a.mismatch, a.verdict) == (m.label, None, "ok"), (name, a.precision, a.verdict)


def test_registries_use_the_public_vocabulary():
    assert {m.label for m in PRECISION_MODELS.values()} == set(PRECISIONS), "every precision label has a model"
    assert set(HYPOTHESES) <= set(MISMATCHES) and "unexplained" in MISMATCHES, sorted(HYPOTHESES)
    assert VERDICTS == ("ok", "degraded", "mismatch", "unexplained"), VERDICTS


@pytest.mark.parametrize("kind", list(HYPOTHESES))
def test_every_hypothesis_kind_is_recognized(kind):
    x, w, b = _problem(2, (1, 9, 10, 4), (3, 3, 4, 4))
    spec = ConvSpec.from_shapes(x.shape, w.shape, b.shape, stride=2, padding="SAME")
    hyps = [h for h in generate(spec, x, w, b) if h.kind == kind]
    assert hyps, f"no {kind} hypothesis generated"
    for h in hyps[:3]:
        y = refconv.conv2d(h.x, h.w, h.b, stride=h.spec.stride, padding=h.spec.pads, dilation=h.spec.dilation)
        a = attribute(y.astype(np.float32), x, w, b, stride=2, padding="SAME")
        assert (a.mismatch, a.verdict, a.precision) == (kind, "mismatch", None), (h.detail, a.mismatch_detail)
        assert a.extra["precision_under_mismatch"] == "float32", a.extra


# ---------------------------------------------------------------------------------------------
# verdict rules and edge cases


def test_choose_precision_rules():
    cases = {
        ("float32", ("float32", "tf32")): ("float32", "ok"),
        ("float32", ("tf32", "float16")): ("tf32", "degraded"),
        ("bfloat16", ("float64", "float32")): ("float32", "ok"),
        ("float16", ("tf32",)): ("tf32", "ok"),
        ("float64", ("float32",)): ("float32", "degraded"),
        ("float32", ()): (None, "unexplained"),
    }
    for (req, cands), want in cases.items():
        assert choose_precision(req, list(cands)) == want, (req, cands)


def test_integer_data_is_exact_in_every_model():
    x = np.arange(2 * 5 * 5 * 3, dtype=np.float64).reshape(2, 5, 5, 3) % 7
    w = np.arange(3 * 3 * 3 * 2, dtype=np.float64).reshape(3, 3, 3, 2) % 5 - 2
    y = refconv.conv2d(x, w).astype(np.float32)
    a = attribute(y, x, w)
    assert (a.precision, a.verdict, a.max_abs_error) == ("float32", "ok", 0.0), (a.precision, a.verdict)
    assert set(a.candidates) >= {"float32", "tf32", "float16"}, a.candidates


def test_nonfinite_output_is_unexplained_and_located():
    x, w, b = _problem(3)
    y = refconv.conv2d(x, w, b).astype(np.float32)
    y[0, 2, 3, 1] = np.nan
    a = attribute(y, x, w, b)
    assert (a.precision, a.mismatch, a.verdict) == (None, "unexplained", "unexplained"), a.mismatch_detail
    assert "(0, 2, 3, 1)" in a.mismatch_detail, a.mismatch_detail


def test_outputs_where_the_bound_is_zero_give_infinite_ratios_without_warnings():
    """Nonzero outputs where every input is zero: bound ratios of inf, whose percentiles interpolate between a finite
    value and inf (numpy warned of inf - inf and returned NaN)."""
    x, w = np.zeros((1, 4, 4, 2)), np.ones((3, 3, 2, 2))
    y = np.array([1e-30, 0.0] * 4).reshape(1, 2, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        a = attribute(y, x, w, dtype="float32")
    assert a.max_bound_ratio == np.inf and a.median_bound_ratio == np.inf and a.p99_bound_ratio == np.inf
    assert a.median_abs_error == 5e-31 and a.verdict != "ok"


def test_usage_errors():
    x, w, b = _problem(4)
    y = refconv.conv2d(x, w, b)
    with pytest.raises(UnknownNameError, match="valid choices"):
        attribute(y, x, w, b, dtype="float8")
    with pytest.raises(ShapeError, match="4-D"):
        attribute(y[0], x, w, b)
    with pytest.raises(ShapeError, match="inputs_seen"):
        attribute(y, x, w, b, inputs_seen={"x": x[:, :3]})
    with pytest.raises(FrameworkRunError, match="boom"):
        attribute(FrameworkRun("f", "0", "cpu", "cpu", "float32", "default", None, error="boom"), x, w, b)


def test_framework_run_fields_are_used():
    x, w, b = _problem(5)
    spec = ConvSpec.from_shapes(x.shape, w.shape, b.shape, padding="SAME")
    xs, ws = x.astype(np.float32).astype(np.float64), w.astype(np.float32).astype(np.float64)
    y = refconv.conv2d(xs, ws, b.astype(np.float32), padding="SAME").astype(np.float32).astype(np.float64)
    run = FrameworkRun("mine", "1", "cpu", "cpu", "float32", "default", y, inputs_seen={"x": xs, "w": ws, "b": b},
                       spec=spec, output_dtype="float32")
    a = attribute(run, x, w, b)  # geometry taken from run.spec
    assert (a.label, a.precision, a.verdict, a.output_dtype) == ("mine:cpu:float32", "float32", "ok", "float32")
    assert a.extra["cast_reference"] == "inputs_seen" and a.input_cast_error > 0, a.extra["cast_reference"]


def test_to_dict_is_json_and_arrays_are_kept():
    x, w, b = _problem(6)
    a = attribute(refconv.conv2d(x, w, b, stride=2).astype(np.float32), x, w, b, stride=2)
    d = json.loads(json.dumps(a.to_dict()))
    assert d["verdict"] == "ok" and d["precision"] == "float32" and "exact" not in d, sorted(d)
    assert a.ulp.shape == a.exact.shape == a.bound_ratio.shape == (1, 3, 3, 3), a.ulp.shape
    tol = a.suggested_tolerance
    assert tol["precision"] == "float32" and tol["atol"] >= a.max_abs_error, tol
    np.testing.assert_allclose(a.worst_positions[0]["bound_ratio"], a.max_bound_ratio, rtol=0,
                               err_msg="worst positions are ordered by bound ratio")


def test_sample_matches_full_conv():
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 20, 20, 8)), rng.standard_normal((3, 3, 4, 64))
    spec = ConvSpec.from_shapes(x.shape, w.shape, stride=2, padding="SAME", groups=2)
    s = Sample.for_shape(spec.output_shape, limit=2000, positions=16)
    assert not s.full
    from refconv.oracle._im2col import float_conv_nhwc

    np.testing.assert_allclose(s.conv(x, w, None, spec), s.take(float_conv_nhwc(x, w, spec)), rtol=1e-13,
                               atol=1e-12, err_msg="sampled conv equals the full conv at the sample")


def test_projection_recovers_a_planted_fraction():
    rng = np.random.default_rng(8)
    d = rng.standard_normal(5000)
    r = 0.25 * d + rng.standard_normal(5000) * 0.1
    beta, se = projection(r, d, np.full(5000, 0.1))
    assert abs(beta - 0.25) < 5 * se and se < 0.01, (beta, se)


def test_projection_does_not_take_two_channels_pattern_for_the_outputs():
    """Two of six output channels follow d, the others do not: β ≈ 1/3, which elements taken as independent would
    call 19 standard errors from 0; by channel (the clusters) it is no pattern of the output. The same β in every
    channel is one."""
    rng = np.random.default_rng(9)
    d, noise, sigma = rng.standard_normal((400, 6)), 0.1 * rng.standard_normal((400, 6)), np.full((400, 6), 0.1)
    r = noise + np.where(np.arange(6) < 2, d, 0.0)
    beta, se = projection(r, d, sigma)
    assert abs(beta - 1 / 3) < 0.05 and beta < _Z * se, (beta, se)
    beta, se = projection(noise + d / 3, d, sigma)
    assert abs(beta - 1 / 3) < 0.05 and beta > 20 * _Z * se, (beta, se)


def test_a_rounded_and_an_unrounded_emulation_are_compared_on_the_output_grid():
    """y is model a's emulation rounded to float16; b's emulation is another, already on the float16 grid (its bias
    added after the output rounding). Unrounded, y - e_a and e_b - e_a share e_a's rounding residual and β leaned
    toward b (here 0.066, five standard errors); on the output grid y follows a."""
    rng = np.random.default_rng(10)
    e_a = rng.uniform(1, 2, 4000)
    ulp16 = 2.0**-10
    y = round_to(e_a, "float16")
    e_b = round_to(e_a + 0.3 * ulp16 * rng.standard_normal(e_a.shape), "float16")

    def fit(name, e, after):
        return ModelFit(PRECISION_MODELS[name], e, np.full_like(e, ulp16), np.zeros(e.shape, bool), 0.5, 0.0,
                        bias_after_rounding=after)

    _, _, beta, se = _toward(y, fit("float16", e_a, False), fit("bfloat16_bias32", e_b, True), e_a, 2, "float16",
                             2.0**-24)
    assert abs(beta) < 3 * se, (beta, se)


# ---------------------------------------------------------------------------------------------
# explain and pairs


def test_explain_pairs_failed_runs_and_mismatch_statement():
    x, w, b = _problem(9, (1, 8, 8, 3), (3, 3, 3, 2))
    geo = dict(stride=2, padding="SAME")
    good = refconv.conv2d(x, w, b, **geo)
    y32 = refconv.conv2d(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), **geo).astype(np.float32)
    bad = refconv.conv2d(x, w, None, **geo).astype(np.float32)
    failed = FrameworkRun("broken", "0", "cpu", "cpu", "float32", "default", None, error="boom")
    rep = explain(x, w, b, runs=[("truth", good), {"label": "f32", "output": y32}, ("nobias", bad), failed], **geo)
    assert [None if a is None else a.verdict for a in rep.attributions] == ["ok", "ok", "mismatch", None]
    assert [(p.a, p.b, p.wrong) for p in rep.pairs] == [
        ("truth", "f32", "neither"), ("truth", "nobias", "b"), ("f32", "nobias", "b")], rep.pairs
    assert rep.pairs[1].statement.startswith("nobias is wrong (mismatch: output equals the exact conv without the bias")
    assert rep.pairs[1].share_b > 0.99, rep.pairs[1]
    d = json.loads(json.dumps(rep.to_dict()))
    assert [r["label"] for r in d["runs"]] == ["truth", "f32", "nobias", "broken:cpu:float32"], d["runs"]
    assert d["runs"][3]["error"] == "boom" and "verdict" not in d["runs"][3], d["runs"][3]


def test_identical_outputs_under_different_requests_are_one_arithmetic():
    """The same TF32 output asked for as float32 (degraded) and as tf32 (ok): the pair says they agree exactly
    and only the request differs, not that one side "carries 50% of the 0 gap" (seen with torch on an H200)."""
    x, w, b = _problem(9, (1, 8, 8, 8), (3, 3, 8, 4))
    y = refconv.conv2d(round_to(x, "tf32"), round_to(w, "tf32"), b).astype(np.float32)
    rep = explain(x, w, b, runs=[("asked_f32", y, "float32"), ("asked_tf32", y, "tf32")])
    assert [(a.verdict, a.precision) for a in rep.attributions] == [("degraded", "tf32"), ("ok", "tf32")]
    (pair,) = rep.pairs
    assert pair.max_abs_diff == 0 and pair.wrong == "a", pair
    assert pair.statement == (
        "asked_f32 and asked_tf32 agree exactly, so only what was requested differs: asked_f32 is degraded (its "
        "arithmetic is consistent only with tf32, but float32 was requested); asked_tf32 is ok (tf32 arithmetic, "
        "tf32 requested)"), pair.statement
    nobias = refconv.conv2d(x, w).astype(np.float32)  # the same mistake twice: no talk of requests
    (pair,) = explain(x, w, b, runs=[("one", nobias), ("two", nobias)]).pairs
    assert pair.wrong == "both" and pair.statement == (
        "both are wrong and agree exactly: one is mismatch (output equals the exact conv without the bias); two is "
        "mismatch (output equals the exact conv without the bias)"), pair.statement


def test_degraded_run_names_the_precision_settings_it_ran_under():
    """A float32 request answered in TF32 (cuDNN's default on an H200): the explanation quotes the run's TF32
    settings and the way to full float32; settings that cannot lower precision are left out."""
    x, w, b = _problem(9, (1, 8, 8, 8), (3, 3, 8, 4))
    y = refconv.conv2d(round_to(x, "tf32"), round_to(w, "tf32"), b).astype(np.float32)
    knobs = {"torch.backends.cudnn.conv.fp32_precision": "tf32", "torch.backends.cuda.matmul.fp32_precision": "none",
             "tf32_hardware": True, "torch.get_num_threads()": 16, "torch.backends.cudnn.allow_tf32": "<error: mix>"}
    run = FrameworkRun("torch", "2.11", "cuda:0", "H200", "float32", "default", y, precision_knobs=knobs)
    a = attribute(run, x, w, b)
    assert (a.verdict, a.precision) == ("degraded", "tf32"), a.explanation
    assert a.extra["precision_settings"] == {"torch.backends.cudnn.conv.fp32_precision": "tf32",
                                             "tf32_hardware": True}, a.extra["precision_settings"]
    assert ("The run's precision settings: torch.backends.cudnn.conv.fp32_precision = 'tf32', tf32_hardware = "
            'True. math="ieee" asks the framework for full float32.') in a.explanation, a.explanation
    ok = attribute(dataclasses.replace(run, output=refconv.conv2d(x, w, b).astype(np.float32)), x, w, b)
    assert ok.verdict == "ok" and "precision_settings" not in ok.extra, ok.explanation
    tf = {"tf.config.experimental.tensor_float_32_execution_enabled()": True, "env.TF_ENABLE_ONEDNN_OPTS": "unset"}
    a = attribute(dataclasses.replace(run, framework="tensorflow", precision_knobs=tf), x, w, b)
    assert a.extra["precision_settings"] == {"tf.config.experimental.tensor_float_32_execution_enabled()": True}


def test_explain_runs_framework_requests():
    pytest.importorskip("torch")
    x, w, b = _problem(10, (1, 6, 6, 3), (3, 3, 3, 2))
    rep = explain(x, w, b, runs="torch:cpu:float64,torch:cpu:float32", padding="SAME")
    assert [a.verdict for a in rep.attributions] == ["ok", "ok"], [a.explanation for a in rep.attributions]
    assert [a.precision for a in rep.attributions] == ["float64", "float32"], rep.attributions
    assert rep.pairs[0].wrong == "neither" and "float32 rounding in torch:cpu:float32" in rep.pairs[0].statement


def test_import_pulls_no_framework():
    code = ("import sys, refconv.attribution, refconv; refconv.attribute; refconv.explain; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'tensorflow', 'jax', 'numba', 'mpmath', 'matplotlib', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_float64_run_does_not_list_float32_as_candidate():
    """A float64 run far closer to the truth than float32-rounded inputs allow is not 'possibly float32'."""
    from refconv.oracle._im2col import float_conv_nhwc
    from refconv.spec import ConvSpec

    rng = np.random.default_rng(7)
    x, w = rng.random((1, 12, 12, 32)), rng.random((3, 3, 32, 16))
    spec = ConvSpec.from_shapes(x.shape, w.shape, padding="SAME")
    y = float_conv_nhwc(x, w, spec)  # plain float64 GEMM: float64 arithmetic on the intended inputs
    a = refconv.attribute(y, x, w, padding="SAME", dtype="float64")
    assert (a.precision, a.verdict) == ("float64", "ok")
    assert a.candidates == ["float64"], f"float32 input rounding is absent from this run, got {a.candidates}"
