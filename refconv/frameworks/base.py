"""The result type of one framework run, shared by adapters, attribution and reports."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..spec import ConvSpec

DTYPES = ("float64", "float32", "float16", "bfloat16")
MATH_MODES = ("default", "ieee", "tf32")


@dataclasses.dataclass
class FrameworkRun:
    """What one framework computed for one conv, and how.

    ``output`` is float64 in the caller's data_format (None when the run failed,
    with ``error`` holding the message). ``inputs_seen`` holds x, w and b
    (float64, caller's layouts) exactly as the framework received them after its
    casts, so input-cast error can be separated from arithmetic error.
    ``precision_knobs`` is the precision/algorithm state captured at run time;
    ``notes`` records compositions (e.g. a dilated conv run at stride 1 and
    subsampled) and anything else the adapter did beyond a single native call.

    >>> r = FrameworkRun("mykernel", "1.0", "cpu", "cpu", "float32", "default", None, error="boom")
    >>> r.ok, r.label
    (False, 'mykernel:cpu:float32')
    """

    framework: str
    version: str
    device: str
    device_name: str
    dtype: str
    math: str
    output: np.ndarray | None
    inputs_seen: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)
    precision_knobs: dict[str, Any] = dataclasses.field(default_factory=dict)
    elapsed_s: float = 0.0
    error: str | None = None
    spec: ConvSpec | None = None
    output_dtype: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.output is not None

    @property
    def label(self) -> str:
        """"framework:device:dtype", with ":math" appended when not "default"."""
        base = f"{self.framework}:{self.device}:{self.dtype}"
        return base if self.math == "default" else f"{base}:{self.math}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready metadata (arrays are summarized by shape, not dumped)."""
        return {
            "label": self.label,
            "framework": self.framework,
            "version": self.version,
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype,
            "math": self.math,
            "output_dtype": self.output_dtype,
            "output_shape": None if self.output is None else list(self.output.shape),
            "inputs_seen": {k: None if v is None else list(np.shape(v)) for k, v in self.inputs_seen.items()},
            "precision_knobs": {k: _jsonable(v) for k, v in self.precision_knobs.items()},
            "elapsed_s": self.elapsed_s,
            "error": self.error,
            "notes": list(self.notes),
            "spec": None if self.spec is None else self.spec.to_dict(),
        }


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)
