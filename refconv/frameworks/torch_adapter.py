"""PyTorch adapter: ``torch.nn.functional.conv2d`` on CPU or CUDA.

Translation: the caller's arrays become float64 tensors and torch casts them
(``Tensor.to(dtype)``) on the target device. NHWC/HWIO are permuted to
NCHW/OIHW. Symmetric pads use conv2d's own ``padding=(ph, pw)``; asymmetric pads
(TF SAME at even sizes, explicit pads) go through ``F.pad`` first, never
``padding=int``. Groups, dilation, stride and bias map one to one.

math: "ieee"/"tf32" set cuDNN's conv and CUDA matmul float32 precision (the
``fp32_precision`` API where present, else the legacy ``allow_tf32`` flags) and
restore them afterwards; on CPU they do not apply and a note says so.

Importing this module does not import torch.

>>> ADAPTER.name, ADAPTER.extra
('torch', 'torch')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._adapter import Adapter, Computed, DeviceInfo, cpu_name, dtype_name, env_knobs, safe_read, to_float64_numpy

#: Precision knobs that torch reads as ``torch.backends.<path>`` attributes.
_BACKEND_FLAGS = (
    "cuda.matmul.allow_tf32",
    "cudnn.allow_tf32",
    "fp32_precision",
    "cuda.matmul.fp32_precision",
    "cudnn.fp32_precision",
    "cudnn.conv.fp32_precision",
    "mkldnn.fp32_precision",
    "mkldnn.conv.fp32_precision",
    "cudnn.benchmark",
    "cudnn.deterministic",
    "cudnn.enabled",
    "mkldnn.enabled",
)


def _getpath(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _has_new_api(torch: Any) -> bool:
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    return conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision")


class TorchAdapter(Adapter):
    """PyTorch through ``F.conv2d`` (see the module docstring for the translation).

    >>> TorchAdapter().options
    ('channels_last',)
    """

    name = "torch"
    module = "torch"
    extra = "torch"
    options = ("channels_last",)

    def devices(self) -> list[DeviceInfo]:
        torch = self.load()
        devs = [DeviceInfo("cpu", cpu_name(), self.dtypes("cpu"))]
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                devs.append(DeviceInfo(f"cuda:{i}", torch.cuda.get_device_name(i), self.dtypes(f"cuda:{i}")))
        return devs

    def knobs(self, device: str) -> dict[str, Any]:
        torch = self.load()
        k: dict[str, Any] = {}
        for path in _BACKEND_FLAGS:
            v = safe_read(lambda p=path: _getpath(torch.backends, p))
            if path.endswith("allow_tf32") and str(v).startswith("<error") and "new API" in str(v):
                # torch ≥ 2.9 refuses to read a legacy flag once the fp32_precision flags disagree with it
                v = "unreadable: superseded by the fp32_precision flags"
            k[f"torch.backends.{path}"] = v
        k["torch.get_float32_matmul_precision()"] = safe_read(torch.get_float32_matmul_precision)
        k["torch.are_deterministic_algorithms_enabled()"] = safe_read(torch.are_deterministic_algorithms_enabled)
        k["torch.get_num_threads()"] = safe_read(torch.get_num_threads)
        k["torch.backends.cudnn.version()"] = safe_read(torch.backends.cudnn.version)
        if device.startswith("cuda"):
            cap = safe_read(lambda: torch.cuda.get_device_capability(int(device.split(":")[1])))
            k["cuda.compute_capability"] = cap
            k["tf32_hardware"] = isinstance(cap, tuple) and cap[0] >= 8
        else:
            k["tf32_hardware"] = False
        k.update(env_knobs(("NVIDIA_TF32_OVERRIDE", "ONEDNN_DEFAULT_FPMATH_MODE", "TORCH_CUDNN_V8_API_DISABLED")))
        return k

    @contextlib.contextmanager
    def math_mode(self, math: str, device: str, dtype: str) -> Iterator[list[str]]:
        torch = self.load()
        notes: list[str] = []
        if math == "default":
            yield notes
            return
        if not device.startswith("cuda"):
            notes.append(f"math={math!r}: TF32 does not apply on CPU (float32 arithmetic unchanged); flags set anyway")
        if dtype != "float32":
            notes.append(f"math={math!r} only affects float32; this run is {dtype}")
        b = torch.backends
        if _has_new_api(torch):
            value = "ieee" if math == "ieee" else "tf32"
            saved = (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision)
            try:
                b.cudnn.conv.fp32_precision = value
                b.cuda.matmul.fp32_precision = value
                notes.append(f"set torch.backends.cudnn.conv.fp32_precision = cuda.matmul.fp32_precision = {value!r}")
                yield notes
            finally:
                b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision = saved
        else:
            flag = math == "tf32"
            saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
            try:
                b.cudnn.allow_tf32 = flag
                b.cuda.matmul.allow_tf32 = flag
                notes.append(f"set torch.backends.cudnn.allow_tf32 = cuda.matmul.allow_tf32 = {flag}")
                yield notes
            finally:
                b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved

    def compute(self, x, w, b, spec, *, device, dtype, math, options) -> Computed:
        torch = self.load()
        F = torch.nn.functional
        tdt = getattr(torch, dtype)
        notes: list[str] = []
        with torch.no_grad():
            # torch performs the cast, on the target device (what a user's .to(device, dtype) does).
            xt = torch.from_numpy(np.ascontiguousarray(x)).to(device).to(tdt)
            wt = torch.from_numpy(np.ascontiguousarray(w)).to(device).to(tdt)
            bt = None if b is None else torch.from_numpy(np.ascontiguousarray(b)).to(device).to(tdt)
            seen = {"x": _back(xt), "w": _back(wt), "b": None if bt is None else _back(bt)}
            if spec.data_format == "NHWC":
                xt = xt.permute(0, 3, 1, 2)
            if spec.kernel_format == "HWIO":
                wt = wt.permute(3, 2, 0, 1)
            xt, wt = xt.contiguous(), wt.contiguous()
            if options.get("channels_last"):
                xt = xt.to(memory_format=torch.channels_last)
                wt = wt.to(memory_format=torch.channels_last)
                notes.append("input and weight in torch.channels_last memory format")
            (t, bo), (le, r) = spec.pads
            if t == bo and le == r:
                padding = (t, le)
            else:
                xt = F.pad(xt, (le, r, t, bo))
                padding = (0, 0)
                notes.append(f"asymmetric pads ((top, bottom), (left, right))={spec.pads} applied with F.pad")
            y = F.conv2d(xt, wt, bt, stride=spec.stride, padding=padding, dilation=spec.dilation, groups=spec.groups)
            out_dtype = dtype_name(y.dtype)
            if spec.data_format == "NHWC":
                y = y.permute(0, 2, 3, 1)
            out = _back(y)
        return Computed(out, out_dtype, seen, notes)


def _back(t: Any) -> np.ndarray:
    """A tensor of any float dtype on any device as exact float64 numpy (float64 holds every bf16/fp16/fp32)."""
    return to_float64_numpy(t.detach().to("cpu").double().numpy())


ADAPTER = TorchAdapter()
