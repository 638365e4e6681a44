"""The framework registry: ``name -> lazy adapter loader``, the single source of truth.

Built-in names are "torch", "tensorflow", "jax" and "onnxruntime"; each loader
imports only its small adapter module, never the framework itself.
:func:`register` adds a user callable ``fn(x, w, b, spec) -> array`` under a
name; registering a name twice raises.

>>> from refconv.frameworks import FRAMEWORKS
>>> sorted(FRAMEWORKS)[:4]
['jax', 'onnxruntime', 'tensorflow', 'torch']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DuplicateNameError, unknown_name
from ..spec import ConvSpec
from ._adapter import Adapter, Computed, DeviceInfo, cpu_name, dtype_name, numpy_cast, to_float64_numpy

__all__ = ["FRAMEWORKS", "DuplicateNameError", "register", "unregister", "get_adapter", "CallableAdapter"]


def _builtin(module: str) -> Callable[[], Adapter]:
    def load() -> Adapter:
        return importlib.import_module(f"refconv.frameworks.{module}").ADAPTER

    load.__name__ = f"load_{module}"
    return load


#: name -> zero-argument loader returning the :class:`Adapter`. Enumerate this, don't repeat it.
FRAMEWORKS: dict[str, Callable[[], Adapter]] = {
    "torch": _builtin("torch_adapter"),
    "tensorflow": _builtin("tensorflow_adapter"),
    "jax": _builtin("jax_adapter"),
    "onnxruntime": _builtin("onnxruntime_adapter"),
}
BUILTIN = tuple(FRAMEWORKS)


class CallableAdapter(Adapter):
    """Adapter around a user callable ``fn(x, w, b, spec) -> array``.

    The callable receives numpy arrays in the caller's layouts (``spec.data_format``
    / ``spec.kernel_format``), already cast by refconv to the requested dtype
    (float64, float32, float16, or ``ml_dtypes.bfloat16``; round to nearest even
    from the float64 inputs), and ``b`` is None without bias. It returns any
    array-like (numpy, torch, tf, jax) of shape ``spec.output_shape``; its dtype is
    recorded as ``output_dtype``. ``device`` is only a label for callables (the
    callable decides where it runs) and ``math`` is recorded but not applied.

    >>> a = CallableAdapter("ref", lambda x, w, b, spec: np.zeros(spec.output_shape))
    >>> a.name, [d.device for d in a.devices()]
    ('ref', ['cpu'])
    """

    def __init__(self, name: str, fn: Callable[..., Any]):
        self.name = name
        self.fn = fn

    def version(self) -> str:
        return str(getattr(self.fn, "__version__", "user"))

    def devices(self) -> list[DeviceInfo]:
        return [DeviceInfo("cpu", cpu_name(), self.dtypes("cpu"))]

    def accepts_any_device(self) -> bool:
        return True

    def compute(self, x, w, b, spec, *, device, dtype, math, options) -> Computed:
        xs, ws = numpy_cast(x, dtype), numpy_cast(w, dtype)
        bs = None if b is None else numpy_cast(b, dtype)
        y = self.fn(xs, ws, bs, spec)
        out_dtype = dtype_name(getattr(y, "dtype", np.asarray(y).dtype))
        seen = {"x": xs.astype(np.float64), "w": ws.astype(np.float64)}
        seen["b"] = None if bs is None else bs.astype(np.float64)
        return Computed(
            to_float64_numpy(y),
            out_dtype,
            seen,
            notes=[f"user callable {getattr(self.fn, '__qualname__', repr(self.fn))}; inputs cast by numpy/ml_dtypes"],
        )


def register(name: str, fn: Callable[[Any, Any, Any, ConvSpec], Any]) -> None:
    """Register a user conv ``fn(x, w, b, spec) -> array`` under ``name`` (see :class:`CallableAdapter`).

    Raises :class:`DuplicateNameError` when ``name`` is taken.

    >>> from refconv import frameworks
    >>> def window_sums(x, w, b, spec):  # a toy kernel: 2x2 box filter, VALID, stride 1, one channel
    ...     return (x[:, :-1, :-1] + x[:, 1:, :-1] + x[:, :-1, 1:] + x[:, 1:, 1:]) * w[0, 0]
    >>> frameworks.register("doc_ref", window_sums)
    >>> frameworks.run("doc_ref", np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1)), dtype="float64").output[0, :, :, 0]
    array([[4., 4.],
           [4., 4.]])
    >>> frameworks.unregister("doc_ref")
    """
    if not isinstance(name, str) or not name:
        raise DuplicateNameError(f"framework name must be a non-empty string, got {name!r}")
    if name in FRAMEWORKS:
        taken = ", ".join(map(repr, FRAMEWORKS))
        raise DuplicateNameError(f"framework {name!r} is already registered; registered: {taken}")
    if not callable(fn):
        raise TypeError(f"register({name!r}, fn): fn must be callable, got {type(fn).__name__}")
    adapter = CallableAdapter(name, fn)
    FRAMEWORKS[name] = lambda: adapter


def unregister(name: str) -> None:
    """Remove a user-registered framework (built-in names cannot be removed).

    >>> unregister("torch")
    Traceback (most recent call last):
    ...
    refconv.errors.DuplicateNameError: 'torch' is built in and cannot be unregistered
    """
    if name in BUILTIN:
        raise DuplicateNameError(f"{name!r} is built in and cannot be unregistered")
    if name not in FRAMEWORKS:
        raise unknown_name("framework", name, list(FRAMEWORKS))
    del FRAMEWORKS[name]


def get_adapter(framework: str | Callable[..., Any]) -> Adapter:
    """The adapter for a registered name, or a :class:`CallableAdapter` around a callable.

    Unknown names raise :class:`~refconv.errors.UnknownNameError` listing the valid ones.

    >>> get_adapter("torch").name  # loads the small adapter module, not torch itself
    'torch'
    """
    if isinstance(framework, Adapter):
        return framework
    if callable(framework) and not isinstance(framework, str):
        return CallableAdapter(getattr(framework, "__name__", "callable"), framework)
    if framework not in FRAMEWORKS:
        raise unknown_name("framework", framework, list(FRAMEWORKS))
    return FRAMEWORKS[framework]()
