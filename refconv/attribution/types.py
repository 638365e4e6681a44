"""Typed results of attribution: :class:`Attribution`, :class:`PairComparison`, :class:`Report`.

The label vocabulary is fixed; tools and tests depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

PRECISIONS = ("float64", "float32", "tf32", "bfloat16", "float16")
MISMATCHES = ("padding", "kernel_layout", "kernel_flip", "bias", "stride", "dilation", "unexplained")
VERDICTS = ("ok", "degraded", "mismatch", "unexplained")


def _py(v: Any) -> Any:
    """numpy scalars/arrays -> plain Python for JSON."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _py(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return v


@dataclasses.dataclass
class Attribution:
    """How far one output is from the exact conv, why, and whether that is acceptable.

    Scalar fields serialize with :meth:`to_dict`; the per-element arrays
    (``exact``, ``error``, ``magnitude``, ``ulp``, ``bound_ratio``) are kept for
    reports and plots but not serialized.
    """

    label: str
    requested_dtype: str
    output_dtype: str
    precision: str | None
    candidates: list[str]
    mismatch: str | None
    mismatch_detail: str | None
    verdict: str
    n_terms: int
    max_abs_error: float
    median_abs_error: float
    max_rel_error: float
    median_rel_error: float
    max_ulp: float
    p99_ulp: float
    median_ulp: float
    max_bound_ratio: float
    median_bound_ratio: float
    p99_bound_ratio: float
    deterministic_bound: float  # ≈ n: the deterministic bound on the bound ratio
    probabilistic_bound: float  # ≈ √n
    condition_number: float
    input_cast_error: float  # max |exact(inputs_seen) - exact(inputs)|
    arithmetic_error: float  # max |y - exact(inputs_seen)|
    worst_positions: list[dict[str, Any]]
    explanation: str
    suggested_tolerance: dict[str, Any]
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    exact: np.ndarray | None = dataclasses.field(default=None, repr=False)
    error: np.ndarray | None = dataclasses.field(default=None, repr=False)
    magnitude: np.ndarray | None = dataclasses.field(default=None, repr=False)
    ulp: np.ndarray | None = dataclasses.field(default=None, repr=False)
    bound_ratio: np.ndarray | None = dataclasses.field(default=None, repr=False)

    _ARRAYS = ("exact", "error", "magnitude", "ulp", "bound_ratio")

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _py(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in self._ARRAYS
        }


@dataclasses.dataclass
class PairComparison:
    """Two runs that disagree: how much of their difference each side carries."""

    a: str
    b: str
    max_abs_diff: float
    share_a: float  # fraction of |y_a - y_b| explained by |y_a - exact| (0..1)
    share_b: float
    wrong: str  # "a", "b", "both" or "neither"
    statement: str

    def to_dict(self) -> dict[str, Any]:
        return _py(dataclasses.asdict(self))


@dataclasses.dataclass
class Report:
    """Several runs of one conv, each attributed, plus pairwise conclusions."""

    spec: dict[str, Any]
    runs: list[Any]  # FrameworkRun
    attributions: list[Attribution | None]  # None where the run failed
    pairs: list[PairComparison]
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    oracle: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        runs = []
        for run, att in zip(self.runs, self.attributions):
            d = run.to_dict() if hasattr(run, "to_dict") else {"label": str(run)}
            if att is not None:
                d.update(att.to_dict())
            runs.append(d)
        return {
            "runs": runs,
            "pairs": [p.to_dict() for p in self.pairs],
            "spec": self.spec,
            "environment": _py(self.environment),
            "oracle": _py(self.oracle),
        }
