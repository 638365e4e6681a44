"""TensorFlow adapter: ``tf.nn.conv2d`` / ``tf.nn.depthwise_conv2d`` on CPU or GPU, eager.

Translation:

* TF casts the float64 inputs itself (``tf.cast``); layouts become NHWC/HWIO
  (``tf.transpose``), since TF's CPU conv supports NHWC only.
* Padding: TF's native "SAME" when the spec's pads equal TF's own SAME pads,
  "VALID" when they are all zero, else TF's explicit list
  ``[[0, 0], [top, bottom], [left, right], [0, 0]]``.
* groups == 1: ``tf.nn.conv2d``; depthwise (groups == C): ``tf.nn.depthwise_conv2d``
  with the HWIO filter reshaped to (KH, KW, C, multiplier); other groups:
  ``tf.nn.conv2d`` with C/groups filter channels (TF infers the groups), or, if
  the device has no grouped kernel, one conv per group concatenated (noted).
* dilation > 1 together with stride > 1 (which TF documents as unsupported),
  and depthwise with unequal strides (TF's kernel rejects it), run the stride-1
  conv with explicit pads and subsample (noted).
* bias: ``tf.nn.bias_add`` in the run's dtype.

math: "ieee"/"tf32" call ``tf.config.experimental.enable_tensor_float_32_execution``
and restore it afterwards (it affects GPUs only). TF's C++ log noise is silenced
(``TF_CPP_MIN_LOG_LEVEL=3``) unless the user already set that variable.

Importing this module does not import tensorflow.

>>> ADAPTER.name, ADAPTER.extra
('tensorflow', 'tensorflow')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..spec import tf_same_padding
from ._adapter import (
    Adapter,
    Computed,
    DeviceInfo,
    cpu_name,
    cuda_index,
    dtype_name,
    env_knobs,
    safe_read,
    to_float64_numpy,
)


class TensorFlowAdapter(Adapter):
    """TensorFlow through ``tf.nn`` ops (see the module docstring for the translation).

    ``grouped="split"`` forces one conv per group (concatenated) instead of TF's native grouped conv.

    >>> TensorFlowAdapter().options
    ('grouped',)
    """

    name = "tensorflow"
    module = "tensorflow"
    extra = "tensorflow"
    options = ("grouped",)  # "native" (default) or "split": one conv per group, concatenated

    def load(self) -> Any:
        if "tensorflow" not in __import__("sys").modules:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        tf = super().load()
        with contextlib.suppress(Exception):
            if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3":
                tf.get_logger().setLevel("ERROR")
        return tf

    def devices(self) -> list[DeviceInfo]:
        tf = self.load()
        devs = [DeviceInfo("cpu", cpu_name(), self.dtypes("cpu"))]
        for i, gpu in enumerate(tf.config.list_physical_devices("GPU")):
            details = safe_read(lambda g=gpu: tf.config.experimental.get_device_details(g))
            name = details.get("device_name", gpu.name) if isinstance(details, dict) else gpu.name
            devs.append(DeviceInfo(f"cuda:{i}", name, self.dtypes(f"cuda:{i}")))
        return devs

    def knobs(self, device: str) -> dict[str, Any]:
        tf = self.load()
        cfg = tf.config
        k: dict[str, Any] = {
            "tf.config.experimental.tensor_float_32_execution_enabled()": safe_read(
                lambda: cfg.experimental.tensor_float_32_execution_enabled()
            ),
            "op_determinism_enabled": safe_read(_op_determinism),
            "tf.config.threading.intra_op_parallelism_threads": safe_read(
                lambda: cfg.threading.get_intra_op_parallelism_threads()
            ),
            "tf.config.threading.inter_op_parallelism_threads": safe_read(
                lambda: cfg.threading.get_inter_op_parallelism_threads()
            ),
            "tf.test.is_built_with_cuda()": safe_read(lambda: tf.test.is_built_with_cuda()),
        }
        k.update(
            env_knobs(
                (
                    "TF_ENABLE_ONEDNN_OPTS",
                    "ONEDNN_DEFAULT_FPMATH_MODE",
                    "NVIDIA_TF32_OVERRIDE",
                    "TF_DETERMINISTIC_OPS",
                    "TF_CUDNN_USE_AUTOTUNE",
                    "TF_CPP_MIN_LOG_LEVEL",
                )
            )
        )
        if device.startswith("cuda"):
            gpus = safe_read(lambda: tf.config.list_physical_devices("GPU"))
            details = safe_read(lambda: tf.config.experimental.get_device_details(gpus[cuda_index(device)]))
            cap = details.get("compute_capability") if isinstance(details, dict) else None
            k["cuda.compute_capability"] = cap
            k["tf32_hardware"] = None if not isinstance(cap, tuple) else cap[0] >= 8
        else:
            k["tf32_hardware"] = False
        if k["env.TF_ENABLE_ONEDNN_OPTS"] == "unset":
            k["env.TF_ENABLE_ONEDNN_OPTS"] = "unset (oneDNN on by default on Linux x86)"
        return k

    @contextlib.contextmanager
    def math_mode(self, math: str, device: str, dtype: str) -> Iterator[list[str]]:
        tf = self.load()
        notes: list[str] = []
        if math == "default":
            yield notes
            return
        if not device.startswith("cuda"):
            notes.append(f"math={math!r}: TF32 does not apply on CPU (float32 arithmetic unchanged); flag set anyway")
        if dtype != "float32":
            notes.append(f"math={math!r} only affects float32; this run is {dtype}")
        exp = tf.config.experimental
        saved = exp.tensor_float_32_execution_enabled()
        try:
            exp.enable_tensor_float_32_execution(math == "tf32")
            notes.append(f"set tf.config.experimental.enable_tensor_float_32_execution({math == 'tf32'})")
            yield notes
        finally:
            exp.enable_tensor_float_32_execution(saved)

    def compute(self, x, w, b, spec, *, device, dtype, math, options) -> Computed:
        tf = self.load()
        tdt = getattr(tf, dtype)
        notes: list[str] = []
        grouped = options.get("grouped", "native")
        if grouped not in ("native", "split"):
            raise ValueError(f"grouped={grouped!r}: expected 'native' or 'split'")
        tf_device = "/CPU:0" if device == "cpu" else f"/GPU:{cuda_index(device)}"
        with tf.device(tf_device):
            xt = tf.cast(tf.constant(x), tdt)
            wt = tf.cast(tf.constant(w), tdt)
            bt = None if b is None else tf.cast(tf.constant(b), tdt)
            seen = {"x": _back(tf, xt), "w": _back(tf, wt), "b": None if bt is None else _back(tf, bt)}
            if spec.data_format == "NCHW":
                xt = tf.transpose(xt, (0, 2, 3, 1))
                notes.append("NCHW input transposed to NHWC (TF's CPU conv is NHWC only)")
            if spec.kernel_format == "OIHW":
                wt = tf.transpose(wt, (2, 3, 1, 0))
            depthwise = 1 < spec.groups == spec.C
            dilated_strided = max(spec.dilation) > 1 and max(spec.stride) > 1
            unequal_depthwise = depthwise and spec.stride[0] != spec.stride[1]
            compose = dilated_strided or unequal_depthwise
            stride = (1, 1) if compose else spec.stride
            if compose:
                why = (
                    "TF does not support dilation > 1 with stride > 1"
                    if dilated_strided
                    else "TF's depthwise conv needs equal strides"
                )
                notes.append(
                    f"stride={spec.stride}, dilation={spec.dilation}: ran the stride-1 conv with explicit pads "
                    f"{spec.pads} and subsampled by the stride ({why})"
                )
            padding = _tf_padding(spec, allow_same=not compose)
            if not isinstance(padding, str):
                notes.append(f"explicit TF padding {padding}")
            y = self._conv(tf, xt, wt, spec, stride, padding, grouped, notes)
            if compose:
                y = y[:, :: spec.stride[0], :: spec.stride[1], :]
            if bt is not None:
                y = tf.nn.bias_add(y, bt)
            out_dtype = dtype_name(y.dtype)
            if spec.data_format == "NCHW":
                y = tf.transpose(y, (0, 3, 1, 2))
            out = _back(tf, y)
        return Computed(out, out_dtype, seen, notes)

    def _conv(self, tf, xt, wt, spec, stride, padding, grouped, notes):
        g, C = spec.groups, spec.C
        if g == 1:
            return tf.nn.conv2d(xt, wt, strides=(1, *stride, 1), padding=padding, dilations=spec.dilation)
        if g == C:
            mult = spec.O // C
            notes.append(f"depthwise (groups=C={C}): tf.nn.depthwise_conv2d with channel multiplier {mult}")
            wd = tf.reshape(wt, (spec.KH, spec.KW, C, mult))
            return tf.nn.depthwise_conv2d(xt, wd, strides=(1, *stride, 1), padding=padding, dilations=spec.dilation)
        if grouped == "native":
            try:
                y = tf.nn.conv2d(xt, wt, strides=(1, *stride, 1), padding=padding, dilations=spec.dilation)
                notes.append(f"groups={g}: native grouped tf.nn.conv2d (filter has C/groups={C // g} input channels)")
                return y
            except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as exc:
                notes.append(f"native grouped conv failed ({type(exc).__name__}); composed per group")
        notes.append(f"groups={g}: one tf.nn.conv2d per group, concatenated on channels")
        cg, og = C // g, spec.O // g
        parts = [
            tf.nn.conv2d(
                xt[..., i * cg : (i + 1) * cg],
                wt[..., i * og : (i + 1) * og],
                strides=(1, *stride, 1),
                padding=padding,
                dilations=spec.dilation,
            )  # fmt: skip
            for i in range(g)
        ]
        return tf.concat(parts, axis=-1)


def _tf_padding(spec, *, allow_same: bool) -> Any:
    """TF's native "SAME"/"VALID" when they mean exactly the spec's pads, else TF's explicit list."""
    if spec.pads == ((0, 0), (0, 0)) and (spec.padding == "VALID" or not allow_same):
        return "VALID"
    if allow_same:
        same = tuple(
            tf_same_padding(n, k, s, d)
            for n, k, s, d in zip((spec.H, spec.W), (spec.KH, spec.KW), spec.stride, spec.dilation)
        )
        if same == spec.pads:
            return "SAME"
    if spec.pads == ((0, 0), (0, 0)):
        return "VALID"
    (t, bo), (le, r) = spec.pads
    return [[0, 0], [t, bo], [le, r], [0, 0]]


def _op_determinism() -> bool:
    # Not exported in tf.config (TF 2.21); the private module is the only reader.
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())


def _back(tf: Any, t: Any) -> np.ndarray:
    return to_float64_numpy(tf.cast(t, tf.float64).numpy())


ADAPTER = TensorFlowAdapter()
