"""Run the same convolution in PyTorch, TensorFlow, JAX, ONNX Runtime or your own kernel.

* :func:`run` — one framework, device, dtype and math mode -> :class:`FrameworkRun`
  (float64 output in the caller's layout, the inputs as the framework saw them after
  its casts, the precision knobs at run time, notes on any composition).
* :func:`run_many`, :func:`parse_runs`, :func:`default_runs`, :class:`RunRequest` — several runs
  that never abort because one failed.
* :func:`available`, :func:`precision_knobs` — what is installed, on which devices, in what state.
* :data:`FRAMEWORKS`, :func:`register`, :func:`unregister` — the registry (``name -> lazy adapter
  loader``); a user callable ``fn(x, w, b, spec) -> array`` can be registered or passed directly.

Conventions: cross-correlation; ``data_format`` NHWC (default) or NCHW, kernel HWIO or
OIHW; dtypes :data:`DTYPES`; math modes :data:`MATH_MODES`. ``import refconv.frameworks``
imports no framework; each adapter imports its framework on first use.

>>> import numpy as np
>>> from refconv import frameworks
>>> def my_conv(x, w, b, spec):  # x, w already cast to the requested dtype, caller's layouts
...     return np.zeros(spec.output_shape, x.dtype)
>>> r = frameworks.run(my_conv, np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1)), dtype="float32")
>>> r.label, r.output.shape, r.output_dtype, r.inputs_seen["x"].dtype
('my_conv:cpu:float32', (1, 2, 2, 1), 'float32', dtype('float64'))
>>> frameworks.run(lambda x, w, b, spec: x, np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1))).error  # doctest: +ELLIPSIS
"<lambda> returned shape (1, 3, 3, 1), expected (1, 2, 2, 1) (x(1, 3, 3, 1) NHWC * w(2, 2, 1, 1) HWIO, ...)"
"""

from ._adapter import Adapter, Computed, DeviceInfo
from .base import DTYPES, MATH_MODES, FrameworkRun
from .registry import FRAMEWORKS, CallableAdapter, DuplicateNameError, get_adapter, register, unregister
from .runner import (
    FrameworkInfo,
    RunRequest,
    available,
    default_runs,
    parse_runs,
    precision_knobs,
    run,
    run_many,
)

__all__ = [
    "FrameworkRun",
    "DTYPES",
    "MATH_MODES",
    "FRAMEWORKS",
    "register",
    "unregister",
    "get_adapter",
    "run",
    "run_many",
    "RunRequest",
    "parse_runs",
    "default_runs",
    "available",
    "FrameworkInfo",
    "precision_knobs",
    "Adapter",
    "CallableAdapter",
    "Computed",
    "DeviceInfo",
    "DuplicateNameError",
]
