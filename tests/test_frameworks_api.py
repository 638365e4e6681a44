"""refconv.frameworks API: registry, names, failure paths, casts, math modes (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import refconv
from refconv import frameworks as fw
from refconv.errors import FrameworkUnavailableError, UnknownNameError
from refconv.frameworks.registry import BUILTIN

RNG = np.random.default_rng(7)
X = RNG.uniform(-1, 1, (1, 6, 5, 4))
W = RNG.uniform(-1, 1, (3, 2, 4, 3))
B = RNG.uniform(-1, 1, 3)
GEOMETRY = dict(stride=2, padding="SAME")


def _installed(name):
    adapter = fw.get_adapter(name)
    if not adapter.is_installed():
        pytest.skip(f'{name} is not installed (pip install "refconv[{adapter.extra}]")')
    return adapter


# ---- registry and names -----------------------------------------------------------------
def test_registry_holds_the_four_frameworks():
    assert set(BUILTIN) == {"torch", "tensorflow", "jax", "onnxruntime"}, f"registry: {list(fw.FRAMEWORKS)}"


def test_unknown_framework_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        fw.run("caffe", X, W)
    for name in fw.FRAMEWORKS:
        assert repr(name) in str(info.value), f"{name!r} missing from: {info.value}"


@pytest.mark.parametrize("framework", BUILTIN)
def test_unknown_device_lists_valid_devices(framework):
    _installed(framework)
    with pytest.raises(UnknownNameError, match=r"valid choices: 'cpu'"):
        fw.run(framework, X, W, device="tpu:0")


@pytest.mark.parametrize("kw, kind", [({"dtype": "float8"}, "dtype"), ({"math": "fast"}, "math mode")])
def test_unknown_dtype_and_math_list_valid_names(kw, kind):
    with pytest.raises(UnknownNameError, match=f"unknown {kind}") as info:
        fw.run("torch", X, W, **kw)
    valid = fw.DTYPES if kind == "dtype" else fw.MATH_MODES
    assert all(repr(v) in str(info.value) for v in valid), str(info.value)


def test_unknown_option_raises():
    _installed("torch")
    with pytest.raises(UnknownNameError, match="option for torch"):
        fw.run("torch", X, W, no_such_option=1)


def test_bad_shapes_raise_shape_error_even_in_run_many():
    with pytest.raises(refconv.ShapeError, match="groups"):
        fw.run_many("torch:cpu:float32", X, W, groups=3)


def test_register_twice_raises_and_unregister_frees_the_name():
    def mine(x, w, b, spec):
        return refconv.conv2d(x, w, b, stride=spec.stride, padding=spec.pads)

    fw.register("test_mine", mine)
    try:
        with pytest.raises(fw.DuplicateNameError, match="already registered"):
            fw.register("test_mine", mine)
        with pytest.raises(fw.DuplicateNameError):
            fw.register("torch", mine)
        run = fw.run_many("test_mine:cpu:float64", X, W, B, **GEOMETRY)[0]
        assert run.ok, run.error
        np.testing.assert_array_equal(run.output, refconv.conv2d(X, W, B, **GEOMETRY), err_msg="registered callable")
    finally:
        fw.unregister("test_mine")
    assert "test_mine" not in fw.FRAMEWORKS, "unregister left the name behind"


def test_callable_receives_cast_arrays_in_caller_layout():
    got = {}

    def probe(x, w, b, spec):
        got.update(x=x, w=w, b=b, spec=spec)
        return np.zeros(spec.output_shape, x.dtype)

    xn = X.transpose(0, 3, 1, 2)
    run = fw.run(probe, xn, W, B, data_format="NCHW", kernel_format="HWIO", dtype="bfloat16", **GEOMETRY)
    assert run.ok, run.error
    assert got["x"].shape == xn.shape and str(got["x"].dtype) == "bfloat16", (got["x"].shape, got["x"].dtype)
    np.testing.assert_array_equal(run.inputs_seen["x"], got["x"].astype(np.float64), err_msg="inputs_seen != received")
    assert run.output_dtype == "bfloat16", run.output_dtype
    assert got["spec"].data_format == "NCHW", got["spec"]


# ---- failure paths --------------------------------------------------------------------------
def test_callable_that_raises_is_recorded_and_run_many_continues():
    def broken(x, w, b, spec):
        raise RuntimeError("kernel exploded")

    fw.register("test_broken", broken)
    try:
        runs = fw.run_many(["test_broken:cpu:float32", "test_ok:cpu:float32"], X, W)
    finally:
        fw.unregister("test_broken")
    assert [r.ok for r in runs] == [False, False], [r.error for r in runs]
    assert "kernel exploded" in runs[0].error, runs[0].error
    assert "unknown framework 'test_ok'" in runs[1].error, runs[1].error
    single = fw.run(broken, X, W)
    assert not single.ok and single.output is None and "RuntimeError: kernel exploded" in single.error, single.error


def test_callable_with_wrong_output_shape_is_recorded():
    run = fw.run(lambda x, w, b, spec: np.zeros((1, 1, 1, 1)), X, W, **GEOMETRY)
    assert not run.ok and "returned shape (1, 1, 1, 1), expected" in run.error, run.error


@pytest.mark.parametrize("framework", BUILTIN)
def test_missing_framework_raises_with_extra_and_run_many_records_it(framework, monkeypatch):
    adapter = fw.get_adapter(framework)
    monkeypatch.setitem(sys.modules, adapter.module, None)  # blocks `import <module>`
    with pytest.raises(FrameworkUnavailableError, match=rf'pip install "refconv\[{adapter.extra}\]"') as info:
        fw.run(framework, X, W)
    assert isinstance(info.value, ImportError), type(info.value)
    fw.register("test_zero", lambda x, w, b, spec: np.zeros(spec.output_shape, x.dtype))
    try:
        runs = fw.run_many([f"{framework}:cpu:float32", fw.RunRequest("test_zero")], X, W)
    finally:
        fw.unregister("test_zero")
    assert not runs[0].ok and "refconv[" in runs[0].error, runs[0].error
    assert runs[0].version == "not installed", runs[0].version
    assert runs[1].ok, runs[1].error
    assert framework not in [i.name for i in fw.available()], "a blocked framework is listed as available"
    missing = {i.name: i for i in fw.available([framework], include_missing=True)}
    assert not missing[framework].installed, missing[framework]


def test_import_is_lazy_and_missing_frameworks_do_not_crash_listing():
    code = (
        "import sys\n"
        "for m in ('torch', 'tensorflow', 'jax', 'onnxruntime', 'onnx'): sys.modules[m] = None\n"
        "import refconv.frameworks as f\n"
        "heavy = [m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] in "
        "('torch', 'tensorflow', 'jax', 'onnxruntime', 'onnx', 'numba', 'mpmath')]\n"
        "print(len(heavy), [i.name for i in f.available()], [i.installed for i in f.available(include_missing=True)])\n"
        "print(f.run_many('torch,jax', [[[[1.0]]]], [[[[1.0]]]])[1].error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().splitlines()
    assert first == "0 [] [False, False, False, False]", first
    assert 'pip install "refconv[jax]"' in second, second


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_onnxruntime_cpu_lacks_float64_and_bfloat16_conv_clearly(dtype):
    _installed("onnxruntime")
    run = fw.run("onnxruntime", X, W, dtype=dtype)
    assert not run.ok and run.output is None, run
    assert f"ONNX Runtime's CPU provider has no {dtype} Conv kernel" in run.error, run.error
    assert dtype not in fw.get_adapter("onnxruntime").dtypes("cpu"), "dtype table disagrees with the failure"


def test_onnxruntime_float16_records_inserted_casts():
    _installed("onnxruntime")
    run = fw.run("onnxruntime", X, W, dtype="float16")
    assert run.ok, run.error
    assert run.output_dtype == "float16", run.output_dtype
    casts = run.precision_knobs["ort.inserted_casts"]
    assert isinstance(casts, bool), run.precision_knobs
    assert casts == any("inserted Cast" in n for n in run.notes), (casts, run.notes)


# ---- casts, dtypes and metadata -----------------------------------------------------------
@pytest.mark.parametrize("framework", BUILTIN)
def test_inputs_seen_are_roundings_of_the_inputs_and_output_dtype_is_real(framework):
    import ml_dtypes

    adapter = _installed(framework)
    for dtype in adapter.dtypes("cpu"):
        run = fw.run(framework, X, W, B, dtype=dtype, **GEOMETRY)
        assert run.ok, f"{run.label}: {run.error}"
        assert run.output_dtype == dtype, f"{run.label}: output dtype {run.output_dtype}"
        assert run.precision_knobs["tf32_hardware"] is False, f"{run.label}: CPU run claims TF32 hardware"
        npdt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        eps = float(ml_dtypes.finfo(npdt).eps)
        for key, orig in (("x", X), ("w", W), ("b", B)):
            seen = run.inputs_seen[key]
            assert seen.shape == orig.shape, f"{run.label} {key}: shape {seen.shape}"
            np.testing.assert_array_equal(
                seen.astype(npdt).astype(np.float64), seen, err_msg=f"{run.label} {key} not representable in {dtype}"
            )
            np.testing.assert_array_less(
                np.abs(seen - orig), eps * np.abs(orig) + 1e-300, err_msg=f"{run.label} {key}: not a rounding of input"
            )
        json.dumps(run.to_dict())  # JSON-ready


@pytest.mark.parametrize("framework", BUILTIN)
def test_available_and_knobs(framework):
    _installed(framework)
    info = fw.available([framework])[0]
    assert info.version and info.devices[0].device == "cpu", info
    assert "float32" in info.devices[0].dtypes, info.devices[0]
    probed = fw.available([framework], probe=True)[0].devices[0].dtypes
    assert probed == info.devices[0].dtypes, f"{framework}: dtype table {info.devices[0].dtypes}, probed {probed}"
    knobs = fw.precision_knobs(framework)[framework]
    assert knobs and "env.NVIDIA_TF32_OVERRIDE" in knobs, knobs
    json.dumps(info.to_dict())
    json.dumps(knobs, default=str)


def test_parse_runs_and_default_runs():
    reqs = fw.parse_runs("torch:cpu:float64, tensorflow:cpu:float32:tf32, jax:cuda:1:bf16, onnxruntime")
    assert [r.label for r in reqs] == [
        "torch:cpu:float64",
        "tensorflow:cpu:float32:tf32",
        "jax:cuda:1:bfloat16",
        "onnxruntime:cpu:float32",
    ], reqs
    with pytest.raises(UnknownNameError, match="valid choices"):
        fw.parse_runs("torch:cpu:float99")
    with pytest.raises(UnknownNameError, match="unknown framework"):
        fw.parse_runs("caffe:cpu")
    installed = [f for f in BUILTIN if fw.get_adapter(f).is_installed()]
    labels = [r.label for r in fw.default_runs(installed)]
    for f in installed:
        assert f"{f}:cpu:float32" in labels, labels
    if "onnxruntime" in installed:
        assert "onnxruntime:cpu:float64" not in labels, labels
    if "torch" in installed:
        assert "torch:cpu:float64" in labels, labels


# ---- math modes ---------------------------------------------------------------------------
def _torch_flags():
    import torch

    b = torch.backends
    return {
        "cudnn.conv.fp32_precision": b.cudnn.conv.fp32_precision,
        "cuda.matmul.fp32_precision": b.cuda.matmul.fp32_precision,
        "cudnn.allow_tf32": b.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": b.cuda.matmul.allow_tf32,
    }


@pytest.mark.parametrize("math, expected", [("ieee", "ieee"), ("tf32", "tf32"), ("default", None)])
def test_torch_math_mode_is_recorded_and_restored(math, expected):
    _installed("torch")
    before = _torch_flags()
    run = fw.run("torch", X, W, math=math)
    assert run.ok, run.error
    recorded = run.precision_knobs["torch.backends.cudnn.conv.fp32_precision"]
    assert recorded == (expected or before["cudnn.conv.fp32_precision"]), run.precision_knobs
    assert _torch_flags() == before, f"torch flags not restored after math={math!r}"
    if math != "default":
        assert any("does not apply on CPU" in n for n in run.notes), run.notes
    if math == "ieee":  # torch refuses to read the legacy cuDNN flag while conv's fp32_precision disagrees with it
        legacy = run.precision_knobs["torch.backends.cudnn.allow_tf32"]
        assert legacy == "unreadable: superseded by the fp32_precision flags", legacy


def test_math_mode_is_restored_when_the_run_fails(monkeypatch):
    adapter = _installed("torch")
    before = _torch_flags()

    def boom(*args, **kwargs):
        raise MemoryError("simulated out of memory")

    monkeypatch.setattr(adapter, "compute", boom)
    run = fw.run("torch", X, W, math="ieee")
    assert not run.ok and "MemoryError: simulated out of memory" in run.error, run.error
    assert run.precision_knobs["torch.backends.cudnn.conv.fp32_precision"] == "ieee", run.precision_knobs
    assert _torch_flags() == before, "torch flags not restored after a failed run"


@pytest.mark.parametrize("math", ["ieee", "tf32", "default"])
def test_tensorflow_math_mode_is_recorded_and_restored(math):
    _installed("tensorflow")
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    run = fw.run("tensorflow", X, W, math=math)
    assert run.ok, run.error
    key = "tf.config.experimental.tensor_float_32_execution_enabled()"
    expected = {"ieee": False, "tf32": True, "default": before}[math]
    assert run.precision_knobs[key] is expected, run.precision_knobs
    assert tf.config.experimental.tensor_float_32_execution_enabled() == before, "TF32 flag not restored"


@pytest.mark.parametrize("math, precision", [("ieee", "HIGHEST"), ("tf32", "HIGH"), ("default", None)])
def test_jax_math_mode_is_recorded_and_x64_restored(math, precision):
    _installed("jax")
    import jax

    x64 = bool(jax.config.jax_enable_x64)
    run = fw.run("jax", X, W, math=math, dtype="float64")
    assert run.ok and run.output_dtype == "float64", (run.error, run.output_dtype)
    assert run.precision_knobs["precision argument"] == precision, run.precision_knobs
    assert bool(jax.config.jax_enable_x64) == x64, "jax_enable_x64 not restored"


@pytest.mark.parametrize("framework", BUILTIN)
def test_math_modes_do_not_change_cpu_float32_results_beyond_the_bound(framework):
    """On CPU, TF32 does not apply: "ieee" and "tf32" give float32-accurate results."""
    _installed(framework)
    exact = refconv.conv2d(X.astype(np.float32), W.astype(np.float32), **GEOMETRY)
    for math in fw.MATH_MODES:
        run = fw.run(framework, X, W, math=math, **GEOMETRY)
        assert run.ok and run.math == math, run.error
        np.testing.assert_allclose(run.output, exact, rtol=0, atol=24 * 2.0**-24 * 24, err_msg=f"{run.label}")


# ---- translation choices are recorded -------------------------------------------------------
def test_tensorflow_uses_native_same_and_valid_and_explicit_otherwise():
    _installed("tensorflow")
    native = fw.run("tensorflow", X, W, stride=2, padding="SAME")
    explicit = fw.run("tensorflow", X, W, stride=2, padding=((0, 2), (1, 0)))
    composed = fw.run("tensorflow", X, W, stride=2, dilation=2, padding="SAME")
    assert native.ok and not any("explicit TF padding" in n for n in native.notes), native.notes
    assert explicit.ok and any("[[0, 0], [0, 2], [1, 0], [0, 0]]" in n for n in explicit.notes), explicit.notes
    assert composed.ok and any("subsampled by the stride" in n for n in composed.notes), composed.notes


def test_onnxruntime_uses_auto_pad_only_where_it_matches():
    _installed("onnxruntime")
    same = fw.run("onnxruntime", X, W, stride=2, padding="SAME_LOWER")
    dilated = fw.run("onnxruntime", X, W, stride=2, dilation=2, padding="SAME")
    explicit_only = fw.run("onnxruntime", X, W, stride=2, padding="SAME", auto_pad=False)
    assert same.ok and any("auto_pad=SAME_LOWER" in n for n in same.notes), same.notes
    assert dilated.ok and not any("auto_pad" in n for n in dilated.notes), dilated.notes
    assert explicit_only.ok and not any("auto_pad" in n for n in explicit_only.notes), explicit_only.notes
    np.testing.assert_array_equal(
        explicit_only.output, fw.run("onnxruntime", X, W, stride=2, padding="SAME").output,
        err_msg="auto_pad SAME_UPPER and explicit pads disagree",
    )  # fmt: skip


def test_torch_asymmetric_pads_use_f_pad_and_channels_last_option():
    _installed("torch")
    sym = fw.run("torch", X, W, padding=1, dtype="float64")
    asym = fw.run("torch", X, W, stride=2, padding="SAME", dtype="float64", channels_last=True)
    assert sym.ok and not any("F.pad" in n for n in sym.notes), sym.notes
    assert asym.ok and any("F.pad" in n for n in asym.notes) and any("channels_last" in n for n in asym.notes)
    np.testing.assert_allclose(
        asym.output, refconv.conv2d(X, W, stride=2, padding="SAME"), rtol=0, atol=1e-13, err_msg="channels_last run"
    )


def test_tensorflow_grouped_native_and_split_agree():
    _installed("tensorflow")
    w = RNG.uniform(-1, 1, (3, 2, 2, 4))
    native = fw.run("tensorflow", X, w, groups=2, padding="SAME", dtype="float64")
    split = fw.run("tensorflow", X, w, groups=2, padding="SAME", dtype="float64", grouped="split")
    assert native.ok and any("native grouped" in n for n in native.notes), (native.error, native.notes)
    assert split.ok and any("one tf.nn.conv2d per group" in n for n in split.notes), (split.error, split.notes)
    exact = refconv.conv2d(X, w, groups=2, padding="SAME")
    for run in (native, split):
        np.testing.assert_allclose(run.output, exact, rtol=0, atol=1e-14, err_msg=f"{run.label} {run.notes}")
