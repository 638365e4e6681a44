"""check_conv2d reports, the hypothesis strategies and the pytest plugin's fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import EXAMPLES
from hypothesis import HealthCheck, given, settings
from numpy_im2col import conv2d_im2col_f32

from refconv.testing import VALUE_FAMILIES, check_conv2d, compare_conv2d, default_problems
from refconv.testing.problems import DTYPES, PADDING_FORMS, random_problems
from refconv.testing.strategies import conv_problems

pytestmark = pytest.mark.usefixtures("numba_single_threaded")


def test_default_corpus_covers_every_family_padding_form_and_layout():
    ps = default_problems()
    np.testing.assert_array_equal(sorted({p.family for p in ps}), sorted(VALUE_FAMILIES), err_msg="families")
    kinds = set()
    for p in ps:
        pad = p.geometry["padding"]
        kinds.add(pad if isinstance(pad, str) else type(pad).__name__ + str(np.ndim(pad)))
    assert {"SAME", "SAME_LOWER", "VALID", "int0", "tuple1", "tuple2"} <= kinds, kinds
    assert {p.geometry["data_format"] for p in ps} == {"NHWC", "NCHW"}


def test_random_problems_cover_geometry_space():
    ps = list(random_problems(300, seed=1, dtype=None))
    assert {p.dtype for p in ps} == set(DTYPES)
    assert any(p.spec.groups > 1 and p.spec.groups == p.spec.C for p in ps), "no depthwise problem"
    assert any(max(p.spec.dilation) > 1 for p in ps) and any(max(p.spec.stride) > 1 for p in ps)
    assert max(p.spec.n_terms for p in ps) >= 256, "large_k must give n in the hundreds"
    assert any(p.spec.output_shape[1] * p.spec.output_shape[2] == 1 for p in ps), "no 1x1 output"


def test_check_conv2d_passes_honest_kernel_and_reports():
    rep = check_conv2d(conv2d_im2col_f32)
    assert rep.passed, rep.summary()
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["n_problems"] == len(default_problems()) and d["passed"] is True
    assert "problems passed" in rep.summary()


def test_check_conv2d_reports_per_problem_reasons():
    def no_bias(x, w, b, spec):
        return conv2d_im2col_f32(x, w, None, spec)

    def raises(x, w, b):
        raise RuntimeError("unsupported geometry")

    problems = [p for p in random_problems(12, seed=3, families=["uniform"]) if p.b is not None][:4]
    rep = check_conv2d(no_bias, problems)
    assert not rep.passed and len(rep.failures) == len(problems)
    for r in rep.failures:
        assert r.reason.startswith("bias"), r.reason
    rep2 = check_conv2d(raises, problems[:2])
    assert [r.error for r in rep2.results] == ["kernel raised RuntimeError: unsupported geometry"] * 2
    json.dumps(rep2.to_dict())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems(dtype=None))
def test_strategies_no_false_alarm_numpy_kernel(p):
    """Any dtype: the float32 kernel computes on float32 casts, so it passes at precision float32."""
    y = conv2d_im2col_f32(p.x.astype(np.float32), p.w.astype(np.float32),
                          None if p.b is None else p.b.astype(np.float32), p.spec)
    c = compare_conv2d(y, p.x, p.w, p.b, **p.geometry, precision="float32", explain=False)
    assert c.passed, c.message


@settings(max_examples=25, deadline=None)
@given(conv_problems(families=["small_integers", "identity_kernel"]))
def test_strategies_exact_families_are_exact(p):
    y = conv2d_im2col_f32(p.x, p.w, p.b, p.spec)
    import refconv

    np.testing.assert_array_equal(y, refconv.conv2d(p.x, p.w, p.b, **p.geometry),
                                  err_msg="integer and identity-kernel problems must be computed exactly")


def test_strategy_padding_forms_registry():
    assert set(PADDING_FORMS) == {"SAME", "SAME_LOWER", "VALID", "int", "pair", "explicit"}


def test_fixtures_in_process(conv_oracle, refconv_check):
    x = np.ones((1, 4, 4, 2), np.float32)
    w = np.ones((3, 3, 2, 1), np.float32)
    np.testing.assert_array_equal(conv_oracle.conv2d(x, w), np.full((1, 2, 2, 1), 18.0), err_msg="exact conv")
    conv_oracle.assert_close(np.full((1, 2, 2, 1), 18, np.float32), x, w)
    rep = refconv_check(conv2d_im2col_f32, problems=5)
    assert rep.n_passed == 5, rep.summary()


def test_plugin_fails_a_user_test_with_the_summary(tmp_path):
    test = tmp_path / "test_user_kernel.py"
    test.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(EXAMPLES)!r})
        from numpy_im2col import conv2d_im2col_f32

        def no_bias(x, w, b, spec):
            return conv2d_im2col_f32(x, w, None, spec)

        def test_good(refconv_check):
            refconv_check(conv2d_im2col_f32, problems=3)

        def test_bad(refconv_check):
            refconv_check(no_bias)
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],  # plugin via entry point
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert "bias missing" in out and "problems passed" in out, out[-3000:]
