"""refconv: the ground truth for 2-D convolution.

* :func:`conv2d` — the oracle: exact (correctly rounded) cross-correlation.
* :mod:`refconv.frameworks` — run the same conv in PyTorch, TensorFlow, JAX, ONNX Runtime.
* :func:`attribute` / :func:`explain` — measure runs against the oracle and say who is wrong.
* :mod:`refconv.testing` — bound-derived assertions for custom kernels.

``import refconv`` imports numpy only; numba, mpmath and every framework are
imported lazily by the code that needs them.

>>> import numpy as np, refconv
>>> refconv.conv2d(np.ones((1, 3, 3, 1)), np.ones((3, 3, 1, 1)), padding="SAME")[0, :, :, 0]
array([[4., 6., 4.],
       [6., 9., 6.],
       [4., 6., 4.]])
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    DTypeError,
    FrameworkRunError,
    FrameworkUnavailableError,
    RefconvError,
    ShapeError,
    UnknownNameError,
)
from .oracle import METHODS, OracleResult, PointValues, conv2d, conv2d_points, conv2d_with_info
from .spec import ConvSpec, resolve_padding, tf_same_padding

__version__ = "0.1.0"

# Public names that live in heavier modules, loaded on first access.
_LAZY = {
    "attribute": "refconv.attribution",
    "explain": "refconv.attribution",
    "Attribution": "refconv.attribution",
    "Report": "refconv.attribution",
    "frameworks": "refconv.frameworks",
    "testing": "refconv.testing",
}

__all__ = [
    "conv2d",
    "conv2d_with_info",
    "conv2d_points",
    "OracleResult",
    "PointValues",
    "METHODS",
    "ConvSpec",
    "resolve_padding",
    "tf_same_padding",
    "RefconvError",
    "ShapeError",
    "DTypeError",
    "UnknownNameError",
    "FrameworkUnavailableError",
    "FrameworkRunError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'refconv' has no attribute {name!r}")
