"""CUDA paths of the adapters (torch, TF, jax, ORT's CUDA provider); skipped visibly without a GPU.

float32 with math="ieee" must meet the float32 a-priori bound; "tf32" and the
default only the TF32 bound (inputs rounded to 10 mantissa bits, Blanchard et al.
2020); bf16/fp16 must run and report their dtype. Flags are restored afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest

import refconv
from refconv import frameworks as fw
from refconv.frameworks._adapter import nvidia_gpus
from refconv.frameworks.registry import BUILTIN
from refconv.oracle._im2col import float_conv_nhwc
from refconv.spec import ConvSpec


def _gpu_targets():
    targets = []
    if not nvidia_gpus():  # cheap check first: no driver, no need to import every framework at collection
        return targets
    for name in BUILTIN:
        adapter = fw.get_adapter(name)
        if not adapter.is_installed():
            continue
        try:
            devices = adapter.devices()
        except Exception:  # noqa: BLE001 - a broken install has no GPU to test
            continue
        targets += [(name, d.device) for d in devices if d.device.startswith("cuda")]
    return targets


TARGETS = _gpu_targets()
NO_GPU = "no CUDA device visible to any installed framework: GPU adapter paths not exercised"

RNG = np.random.default_rng(3)
X = RNG.uniform(0, 1, (2, 16, 18, 32))
W = RNG.uniform(-1, 1, (3, 3, 32, 24))
B = RNG.uniform(-1, 1, 24)
GEOMETRY = dict(stride=2, padding="SAME")


def _check_bound(run, u_inputs, u_acc):
    """|y - exact(inputs seen)| <= (2 u_inputs + (n+1) u_acc) sum|x w| + u_acc |exact| (Blanchard et al. 2020)."""
    spec = ConvSpec.from_arrays(X, W, B, **GEOMETRY)
    xs, ws, bs = run.inputs_seen["x"], run.inputs_seen["w"], run.inputs_seen["b"]
    exact = refconv.conv2d(xs, ws, bs, **GEOMETRY)
    mag = float_conv_nhwc(np.abs(xs), np.abs(ws), spec) + np.abs(bs)
    n = spec.n_terms + 1
    bound = (2 * u_inputs + 1.01 * n * u_acc) * mag + u_acc * np.abs(exact)
    err = np.abs(run.output - exact)
    assert (err <= bound).all(), f"{run.label}: max |err| {err.max():.3e}, bound there {bound.flat[err.argmax()]:.3e}"


@pytest.mark.skipif(not TARGETS, reason=NO_GPU)
@pytest.mark.gpu
@pytest.mark.parametrize("framework, device", TARGETS or [("none", "none")])
def test_gpu_float32_modes_and_low_precision(framework, device):
    for math in fw.MATH_MODES:
        run = fw.run(framework, X, W, B, device=device, dtype="float32", math=math, **GEOMETRY)
        assert run.ok and run.device == device, run.error
        u_in = 0.0 if math == "ieee" else 2.0**-11  # default may be TF32 (TF, jax, cuDNN conv)
        _check_bound(run, u_in, 2.0**-24)
    for dtype, u in (("float16", 2.0**-11), ("bfloat16", 2.0**-8)):
        run = fw.run(framework, X, W, B, device=device, dtype=dtype, **GEOMETRY)
        if dtype not in fw.get_adapter(framework).dtypes(device):
            assert not run.ok, f"{run.label} ran although its dtype table says no kernel"
            continue
        assert run.ok and run.output_dtype == dtype, (run.error, run.output_dtype)
        _check_bound(run, 0.0, u)


@pytest.mark.skipif(not [t for t in TARGETS if t[0] == "torch"], reason=NO_GPU + " (torch)")
@pytest.mark.gpu
def test_torch_gpu_math_restores_flags():
    import torch

    device = [d for f, d in TARGETS if f == "torch"][0]
    before = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    for math in ("ieee", "tf32"):
        run = fw.run("torch", X, W, device=device, math=math, **GEOMETRY)
        assert run.ok and run.precision_knobs["torch.backends.cudnn.conv.fp32_precision"] == math, run.precision_knobs
    after = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    assert after == before, f"flags {before} -> {after}"
