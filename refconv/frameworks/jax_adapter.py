"""JAX adapter: ``jax.lax.conv_general_dilated`` on CPU or GPU.

Translation: ``jnp.asarray(x, dtype)`` casts on the chosen device; the caller's
layouts go straight into ``dimension_numbers`` (no transposes); pads are passed
as explicit (low, high) pairs; dilation is ``rhs_dilation``; groups are
``feature_group_count``; bias is added in the run's dtype.

math: "default" passes ``precision=None`` (jax's ``default_matmul_precision``
decides), "ieee" passes ``Precision.HIGHEST``, "tf32" ``Precision.HIGH``
(tensorfloat32 on GPUs). Nothing global changes. float64 runs enable x64 for
the duration of the run (``jax.enable_x64``) when it is off, and say so.

Importing this module does not import jax.

>>> ADAPTER.name, ADAPTER.extra
('jax', 'jax')
"""

from __future__ import annotations

import contextlib
from typing import Any

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


class JaxAdapter(Adapter):
    """JAX through ``lax.conv_general_dilated`` (see the module docstring for the translation).

    ``preferred_element_type`` (a dtype name) is passed to ``conv_general_dilated``.

    >>> JaxAdapter().options
    ('preferred_element_type',)
    """

    name = "jax"
    module = "jax"
    extra = "jax"
    options = ("preferred_element_type",)

    def _gpus(self) -> list[Any]:
        jax = self.load()
        try:
            return list(jax.devices("gpu"))
        except RuntimeError:
            return []

    def devices(self) -> list[DeviceInfo]:
        devs = [DeviceInfo("cpu", cpu_name(), self.dtypes("cpu"))]
        for i, d in enumerate(self._gpus()):
            devs.append(DeviceInfo(f"cuda:{i}", str(d.device_kind), self.dtypes(f"cuda:{i}")))
        return devs

    def knobs(self, device: str) -> dict[str, Any]:
        jax = self.load()
        k = {
            "jax.config.jax_default_matmul_precision": safe_read(lambda: jax.config.jax_default_matmul_precision),
            "jax.config.jax_enable_x64": safe_read(lambda: bool(jax.config.jax_enable_x64)),
            "jax.default_backend()": safe_read(jax.default_backend),
        }
        if device.startswith("cuda"):
            cap = safe_read(lambda: str(self._gpus()[cuda_index(device)].compute_capability))
            k["cuda.compute_capability"] = cap
            k["tf32_hardware"] = safe_read(lambda: float(cap) >= 8.0)
        else:
            k["tf32_hardware"] = False
        k.update(env_knobs(("NVIDIA_TF32_OVERRIDE", "XLA_FLAGS", "JAX_DEFAULT_MATMUL_PRECISION", "JAX_ENABLE_X64")))
        return k

    def compute(self, x, w, b, spec, *, device, dtype, math, options) -> Computed:
        jax = self.load()
        import jax.numpy as jnp
        from jax import lax

        notes: list[str] = []
        knobs: dict[str, Any] = {}
        dev = jax.devices("cpu")[0] if device == "cpu" else self._gpus()[cuda_index(device)]
        precision = {"default": None, "ieee": lax.Precision.HIGHEST, "tf32": lax.Precision.HIGH}[math]
        knobs["precision argument"] = None if precision is None else str(precision)
        if math != "default" and device == "cpu":
            notes.append(f"math={math!r}: TF32 does not apply on CPU; precision={precision} passed anyway")
        x64_ctx: Any = contextlib.nullcontext()
        if dtype == "float64" and not jax.config.jax_enable_x64:
            x64_ctx = jax.enable_x64(True)
            notes.append("jax_enable_x64 was off: enabled for this run only (float64 is otherwise truncated)")
        pet = options.get("preferred_element_type")
        with x64_ctx, jax.default_device(dev):
            jdt = getattr(jnp, dtype)
            xj = jax.device_put(jnp.asarray(x, dtype=jdt), dev)
            wj = jax.device_put(jnp.asarray(w, dtype=jdt), dev)
            bj = None if b is None else jax.device_put(jnp.asarray(b, dtype=jdt), dev)
            seen = {"x": _back(xj), "w": _back(wj), "b": None if bj is None else _back(bj)}
            y = lax.conv_general_dilated(
                xj, wj,
                window_strides=spec.stride,
                padding=[tuple(p) for p in spec.pads],
                rhs_dilation=spec.dilation,
                dimension_numbers=(spec.data_format, spec.kernel_format, spec.data_format),
                feature_group_count=spec.groups,
                precision=precision,
                preferred_element_type=None if pet is None else getattr(jnp, pet),
            )  # fmt: skip
            if bj is not None:
                shape = (1, 1, 1, -1) if spec.data_format == "NHWC" else (1, -1, 1, 1)
                y = y + bj.astype(y.dtype).reshape(shape)
            y.block_until_ready()
            out_dtype = dtype_name(y.dtype)
            out = _back(y)
        return Computed(out, out_dtype, seen, notes, knobs)


def _back(a: Any) -> Any:
    import numpy as np

    return to_float64_numpy(np.asarray(a))


ADAPTER = JaxAdapter()
