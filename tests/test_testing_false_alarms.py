"""No false alarms: honest float32 outputs pass assert_conv2d_close at precision="float32".

1000 seeded random problems from refconv.testing.problems (the generator the
hypothesis strategies share), every value family, padding form, layout, groups,
stride and dilation; each judged for the NumPy im2col float32 example kernel,
PyTorch float32 CPU and TensorFlow float32 CPU (through refconv.frameworks).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy_im2col import conv2d_im2col_f32

import refconv
from refconv.formats import round_to
from refconv.testing import compare_conv2d, conv2d_tolerance
from refconv.testing.problems import random_problems

N_PROBLEMS = 1000
CHUNKS = 4


pytestmark = pytest.mark.usefixtures("numba_single_threaded")


def _kernels():
    kernels = [conv2d_im2col_f32]
    for name in ("torch", "tensorflow"):
        try:
            __import__(name)
        except ImportError:
            continue
        if name == "torch":
            import torch

            torch.set_num_threads(1)
        kernels.append(name)
    return kernels


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_honest_float32_outputs_pass(chunk):
    from refconv import frameworks

    kernels = _kernels()
    ran = {k if isinstance(k, str) else "numpy": 0 for k in kernels}
    failures = []
    count = N_PROBLEMS // CHUNKS
    for p in random_problems(count, seed=100 + chunk):
        tol = conv2d_tolerance(p.x, p.w, p.b, **p.geometry, precision="float32")
        for k in kernels:
            run = frameworks.run(k, p.x, p.w, p.b, **p.geometry, dtype="float32")
            if not run.ok:  # e.g. TF CPU has no depthwise conv with unequal strides
                continue
            ran[k if isinstance(k, str) else "numpy"] += 1
            c = compare_conv2d(run, p.x, p.w, p.b, **p.geometry, precision="float32", tolerance=tol, explain=False)
            if not c.passed:
                failures.append(f"{p.name} {run.label} {p.geometry} x{p.x.shape} w{p.w.shape}:\n{c.message}")
    assert not failures, f"{len(failures)} false alarms:\n" + "\n\n".join(failures[:3])
    for name, n in ran.items():
        assert n >= 0.8 * count, f"{name} ran only {n} of {count} problems"


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_a_16_bit_conv_whose_bias_is_added_after_the_output_rounding_passes(fmt):
    """jax's ``conv + b`` and TensorFlow's ``bias_add`` in float16 or bfloat16: the conv is rounded to the output
    format, then the bias is added by a separate op, one more rounding. With integer weights and few products the
    output rounding is nearly the whole tolerance, and that second rounding failed ``precision=fmt`` (6 of 1,560
    jax and TensorFlow runs of random convs at their own dtype, where attribution called them "ok"). An element
    moved by a few ulps still fails."""
    geo = dict(stride=(1, 3), dilation=(2, 1), padding=((2, 1), (2, 0)))
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x, w, b = rng.random((2, 10, 9, 1)), rng.integers(0, 8, (2, 2, 1, 14)).astype(float), rng.random(14) * 8
        y = round_to(round_to(refconv.conv2d(*(round_to(v, fmt) for v in (x, w)), None, **geo), fmt)
                     + round_to(b, fmt), fmt)
        c = compare_conv2d(y, x, w, b, **geo, precision=fmt, explain=False)
        assert c.passed, (seed, c.message)
        y[0, 0, 0, 0] += 8 * np.spacing(np.float16(y[0, 0, 0, 0])) * (8 if fmt == "bfloat16" else 1)
        assert not compare_conv2d(y, x, w, b, **geo, precision=fmt, explain=False).passed, seed
    pytest.importorskip("jax")
    from refconv import frameworks

    run = frameworks.run("jax", x, w, b, **geo, dtype=fmt)
    assert compare_conv2d(run, x, w, b, **geo, precision=fmt, explain=False).passed
