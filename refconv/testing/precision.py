"""The precision models a kernel can claim to follow.

:data:`PRECISION_MODELS` says, for each ``precision=`` a kernel claims, in which
format (:data:`refconv.formats.FORMATS`) it may round its inputs, accumulate by
default, and store its output.

>>> PRECISION_MODELS["tf32"].inputs, PRECISION_MODELS["tf32"].accumulation
('tf32', 'float32')
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import unknown_name
from ..formats import ALIASES

__all__ = ["PrecisionModel", "PRECISION_MODELS", "PRECISION_ALIASES", "precision_name", "get_precision"]


@dataclasses.dataclass(frozen=True)
class PrecisionModel:
    """What ``precision=name`` allows a kernel to do.

    ``inputs``: the format x, w and b may be rounded to before multiplying;
    ``accumulation``: the default format of products and sums;
    ``output``: the format the result may be rounded to;
    ``input_rounding_factor``: the per-input relative error allowed, in units of
    the input format's u (1 for round-to-nearest; 2 for TF32, whose hardware
    conversion may truncate).

    >>> PRECISION_MODELS["float16"].accumulation, PRECISION_MODELS["tf32"].input_rounding_factor
    ('float32', 2.0)
    """

    name: str
    inputs: str
    accumulation: str
    output: str
    input_rounding_factor: float = 1.0


PRECISION_MODELS: dict[str, PrecisionModel] = {
    "float64": PrecisionModel("float64", "float64", "float64", "float64"),
    "float32": PrecisionModel("float32", "float32", "float32", "float32"),
    "tf32": PrecisionModel("tf32", "tf32", "float32", "float32", 2.0),
    "float16": PrecisionModel("float16", "float16", "float32", "float16"),
    "bfloat16": PrecisionModel("bfloat16", "bfloat16", "float32", "bfloat16"),
}


PRECISION_ALIASES = {**ALIASES, "ieee": "float32"}


def precision_name(name: object) -> str:
    """Canonical precision name: case-insensitive, common aliases (fp16, bf16, half, ...) and dtypes accepted.

    >>> precision_name("FP16"), precision_name(np.float32), precision_name("TF32")
    ('float16', 'float32', 'tf32')
    """
    key = name
    if not isinstance(name, str):
        try:
            key = np.dtype(name).name  # type: ignore[arg-type]
        except TypeError:
            key = str(name)
    key = str(key).strip().lower()
    key = PRECISION_ALIASES.get(key, key)
    if key not in PRECISION_MODELS:
        raise unknown_name("precision", name, tuple(PRECISION_MODELS))
    return key


def get_precision(name: object) -> PrecisionModel:
    """Look up a precision model by name (see :func:`precision_name`), raising the standard "unknown precision" error.

    >>> get_precision("tf32").inputs
    'tf32'
    """
    return PRECISION_MODELS[precision_name(name)]
