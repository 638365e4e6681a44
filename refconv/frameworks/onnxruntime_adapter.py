"""ONNX Runtime adapter: a one-node ONNX ``Conv`` graph built with ``onnx.helper``.

Translation: inputs are cast by numpy/ml_dtypes (ONNX Runtime takes typed
arrays) and transposed to NCHW/OIHW; the node carries ``kernel_shape``,
``strides``, ``dilations``, ``group`` and ``pads = [top, left, bottom, right]``.
``auto_pad`` ("SAME_UPPER"/"SAME_LOWER") is used instead of ``pads`` only where
ONNX's own formula gives exactly the spec's pads (the spec asked for SAME or
SAME_LOWER and dilation is 1), so ORT's own padding logic is exercised where
it is meant to match. The CPU provider runs by default; "cuda:N" uses the CUDA
provider with CPU fallback disabled, so the conv cannot silently move to CPU.

A dtype without a Conv kernel on the provider fails with a clear message (the
CPU provider has no float64 or bfloat16 Conv). When ORT inserts Cast nodes
around the Conv (it computes some float16 nodes in float32 on CPU), a note says
so and ``precision_knobs["ort.inserted_casts"]`` is True.

math on CUDA: "ieee"/"tf32" set the CUDA provider's ``use_tf32`` option (per
session; nothing global changes).

Importing this module does not import onnx or onnxruntime.

>>> ADAPTER.name, ADAPTER.extra
('onnxruntime', 'onnx')
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from ..errors import FrameworkRunError
from ._adapter import (
    Adapter,
    Computed,
    DeviceInfo,
    cpu_name,
    cuda_index,
    dtype_name,
    env_knobs,
    import_framework,
    numpy_cast,
    nvidia_gpus,
    to_float64_numpy,
)

DEFAULT_OPSET = 22
_ORT_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


class OnnxRuntimeAdapter(Adapter):
    """ONNX Runtime through a one-node Conv model (see the module docstring for the translation).

    Options: ``opset`` (default 22), ``graph_optimization_level`` (an ``ORT_*`` name),
    ``auto_pad`` (False forces explicit ``pads``).

    >>> OnnxRuntimeAdapter().dtypes("cpu")
    ('float32', 'float16')
    """

    name = "onnxruntime"
    module = "onnxruntime"
    extra = "onnx"
    options = ("opset", "graph_optimization_level", "auto_pad")

    def load(self) -> Any:
        import_framework("onnx", self.name, self.extra)
        return super().load()

    def devices(self) -> list[DeviceInfo]:
        ort = self.load()
        devs = [DeviceInfo("cpu", cpu_name(), self.dtypes("cpu"))]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            names = nvidia_gpus() or ("CUDA GPU",)
            devs += [DeviceInfo(f"cuda:{i}", n, self.dtypes(f"cuda:{i}")) for i, n in enumerate(names)]
        return devs

    def dtypes(self, device: str) -> tuple[str, ...]:
        if device == "cpu":
            return ("float32", "float16")  # no float64 / bfloat16 Conv kernel on the CPU provider
        return ("float64", "float32", "float16")

    def knobs(self, device: str) -> dict[str, Any]:
        ort = self.load()
        k: dict[str, Any] = {
            "ort.available_providers": list(ort.get_available_providers()),
            "ort.default_graph_optimization_level": str(ort.SessionOptions().graph_optimization_level),
        }
        k.update(env_knobs(("NVIDIA_TF32_OVERRIDE", "ONEDNN_DEFAULT_FPMATH_MODE", "OMP_NUM_THREADS")))
        return k

    def compute(self, x, w, b, spec, *, device, dtype, math, options) -> Computed:
        ort = self.load()
        import onnx
        from onnx import TensorProto, helper

        notes = ["inputs cast by numpy/ml_dtypes (ONNX Runtime takes typed arrays)"]
        opset = int(options.get("opset", DEFAULT_OPSET))
        xs, ws = numpy_cast(x, dtype), numpy_cast(w, dtype)
        bs = None if b is None else numpy_cast(b, dtype)
        seen = {"x": xs.astype(np.float64), "w": ws.astype(np.float64)}
        seen["b"] = None if bs is None else bs.astype(np.float64)
        xn = np.ascontiguousarray(xs.transpose(0, 3, 1, 2) if spec.data_format == "NHWC" else xs)
        wn = np.ascontiguousarray(ws.transpose(3, 2, 0, 1) if spec.kernel_format == "HWIO" else ws)

        elem = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
                "bfloat16": TensorProto.BFLOAT16}[dtype]  # fmt: skip
        attrs: dict[str, Any] = dict(
            kernel_shape=[spec.KH, spec.KW], strides=list(spec.stride), dilations=list(spec.dilation), group=spec.groups
        )
        auto = _auto_pad(spec) if options.get("auto_pad", True) else None
        if auto:
            attrs["auto_pad"] = auto
            notes.append(f"auto_pad={auto} (ONNX's formula gives exactly the spec's pads {spec.pads})")
        else:
            (t, bo), (le, r) = spec.pads
            attrs["pads"] = [t, le, bo, r]
        inputs = ["X", "W"] + (["B"] if bs is not None else [])
        node = helper.make_node("Conv", inputs, ["Y"], **attrs)
        vi = [helper.make_tensor_value_info("X", elem, list(xn.shape)),
              helper.make_tensor_value_info("W", elem, list(wn.shape))]  # fmt: skip
        if bs is not None:
            vi.append(helper.make_tensor_value_info("B", elem, [spec.O]))
        graph = helper.make_graph([node], "refconv_conv", vi, [helper.make_tensor_value_info("Y", elem, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="refconv")
        model.ir_version = min(model.ir_version, 10)

        so = ort.SessionOptions()
        so.log_severity_level = 3
        level = options.get("graph_optimization_level")
        if level is not None:
            if level not in _ORT_LEVELS:
                raise ValueError(f"graph_optimization_level={level!r}: expected one of {_ORT_LEVELS}")
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        if device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
            provider_name = "CPU provider"
        else:
            cuda_opts: dict[str, Any] = {"device_id": cuda_index(device)}
            if math != "default":
                cuda_opts["use_tf32"] = "1" if math == "tf32" else "0"
            providers = [("CUDAExecutionProvider", cuda_opts)]
            provider_name = "CUDA provider"
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if math != "default" and device == "cpu":
            notes.append(f"math={math!r}: TF32 does not apply on CPU (no ORT option set)")
        with tempfile.TemporaryDirectory() as tmp:
            so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
            save_graph = True
            try:
                sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=providers)
            except Exception as exc:
                text = str(exc)
                if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text:
                    raise FrameworkRunError(
                        f"ONNX Runtime's {provider_name} has no {dtype} Conv kernel (Conv-{opset}); ORT said: {text}"
                    ) from exc
                # Some providers cannot serialize their optimized graph; the graph is informative only.
                so.optimized_model_filepath = ""
                save_graph = False
                sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=providers)
            ops = _optimized_ops(onnx, os.path.join(tmp, "optimized.onnx")) if save_graph else None
        feeds = {"X": xn, "W": wn}
        if bs is not None:
            feeds["B"] = np.ascontiguousarray(bs)
        y = sess.run(None, feeds)[0]
        knobs: dict[str, Any] = {
            "ort.session_providers": sess.get_providers(),
            "ort.provider_options": {k: dict(v) for k, v in sess.get_provider_options().items()},
            "ort.graph_optimization_level": str(so.graph_optimization_level),
            "ort.opset": opset,
            "ort.optimized_graph_ops": ops,
            "ort.inserted_casts": ops is not None and "Cast" in ops,
        }
        if knobs["ort.inserted_casts"]:
            notes.append(f"ONNX Runtime inserted Cast nodes (optimized graph: {ops}): the Conv ran in another dtype")
        out_dtype = dtype_name(y.dtype)
        if spec.data_format == "NHWC":
            y = y.transpose(0, 2, 3, 1)
        return Computed(to_float64_numpy(y), out_dtype, seen, notes, knobs)


def _auto_pad(spec) -> str | None:
    """ONNX auto_pad name when it means exactly the spec's pads, else None (explicit pads)."""
    mode = spec.padding.upper() if isinstance(spec.padding, str) else None
    if mode in ("SAME", "SAME_UPPER", "SAME_LOWER") and spec.dilation == (1, 1):
        return "SAME_LOWER" if mode == "SAME_LOWER" else "SAME_UPPER"
    return None


def _optimized_ops(onnx: Any, path: str) -> list[str] | None:
    try:
        return [n.op_type for n in onnx.load(path).graph.node]
    except Exception:  # noqa: BLE001 - the optimized graph is informative only
        return None


ADAPTER = OnnxRuntimeAdapter()
