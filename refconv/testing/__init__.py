"""Validate custom conv kernels against the exact result, with tolerances derived from error bounds.

* :func:`assert_conv2d_close` — one assertion: passes honest rounding for the
  claimed ``precision``, fails real bugs and names them (padding, flipped or
  transposed kernel, missing bias, lower precision, corrupted elements).
* :func:`conv2d_tolerance` — the per-element tolerance itself.
* :func:`check_conv2d` — run a kernel over a corpus of problems, per-problem report.
* :mod:`refconv.testing.strategies` — hypothesis strategies for conv problems
  (hypothesis is imported only there).
* A pytest plugin (``refconv.testing.plugin``) with the ``conv_oracle`` and
  ``refconv_check`` fixtures.

``import refconv.testing`` imports numpy only.

>>> import numpy as np, refconv
>>> x, w = np.ones((1, 4, 4, 1), np.float32), np.ones((3, 3, 1, 1), np.float32)
>>> refconv.testing.assert_conv2d_close(np.full((1, 2, 2, 1), 9, np.float32), x, w)
"""

from __future__ import annotations

import importlib
from typing import Any

from ..formats import FORMATS, NumberFormat, round_to, ulp
from .assertions import ConvComparison, assert_conv2d_close, call_kernel, compare_conv2d
from .check import CheckReport, ProblemResult, check_conv2d
from .diagnosis import HYPOTHESES, Finding, diagnose
from .precision import PRECISION_MODELS, PrecisionModel
from .problems import VALUE_FAMILIES, ConvProblem, default_problems, random_problems
from .tolerance import BOUNDS, PROBABILISTIC_LAMBDA, Tolerance, conv2d_tolerance

__all__ = [
    "assert_conv2d_close",
    "compare_conv2d",
    "ConvComparison",
    "conv2d_tolerance",
    "Tolerance",
    "BOUNDS",
    "PROBABILISTIC_LAMBDA",
    "FORMATS",
    "PRECISION_MODELS",
    "NumberFormat",
    "PrecisionModel",
    "round_to",
    "ulp",
    "diagnose",
    "Finding",
    "HYPOTHESES",
    "call_kernel",
    "check_conv2d",
    "CheckReport",
    "ProblemResult",
    "ConvProblem",
    "VALUE_FAMILIES",
    "default_problems",
    "random_problems",
    "strategies",
]


def __getattr__(name: str) -> Any:
    if name == "strategies":
        return importlib.import_module("refconv.testing.strategies")
    raise AttributeError(f"module 'refconv.testing' has no attribute {name!r}")
