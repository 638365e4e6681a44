"""No false alarms: honest float32 outputs pass assert_conv2d_close at precision="float32".

1000 seeded random problems from refconv.testing.problems (the generator the
hypothesis strategies share), every value family, padding form, layout, groups,
stride and dilation; each judged for the NumPy im2col float32 example kernel,
PyTorch float32 CPU and TensorFlow float32 CPU (through refconv.frameworks).
"""

from __future__ import annotations

import pytest
from numpy_im2col import conv2d_im2col_f32

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
