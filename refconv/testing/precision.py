"""Floating-point formats and the precision models a kernel can claim to follow.

:data:`FORMATS` describes each storage/arithmetic format (significand bits with
the implicit bit, smallest normal exponent, largest finite value).
:data:`PRECISION_MODELS` says, for each ``precision=`` a kernel claims, in which
format it may round its inputs, accumulate by default, and store its output.
Both registries are the single source of truth for :mod:`refconv.testing`.

>>> FORMATS["float32"].u == 2.0**-24, PRECISION_MODELS["tf32"].accumulation
(True, 'float32')
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import unknown_name

__all__ = [
    "FloatFormat", "PrecisionModel", "FORMATS", "PRECISION_MODELS", "PRECISION_ALIASES", "round_to_format",
    "ulp_in_format", "precision_name", "get_format", "get_precision",
]


@dataclasses.dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: ``p`` significand bits (implicit bit included).

    ``emin`` is the exponent of the smallest normal number and ``max_finite`` the
    largest finite value. ``u = 2**-p`` is the unit roundoff of round-to-nearest.

    >>> FORMATS["float16"].min_normal, FORMATS["float16"].max_finite
    (6.103515625e-05, 65504.0)
    """

    name: str
    p: int
    emin: int
    max_finite: float

    @property
    def u(self) -> float:
        return 2.0**-self.p

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.p + 1)


def _fmt(name: str, p: int, emin: int, emax: int) -> FloatFormat:
    return FloatFormat(name, p, emin, float((2.0 - 2.0 ** (1 - p)) * 2.0**emax))


FORMATS: dict[str, FloatFormat] = {
    "float64": _fmt("float64", 53, -1022, 1023),
    "float32": _fmt("float32", 24, -126, 127),
    "tf32": _fmt("tf32", 11, -126, 127),  # 10 stored mantissa bits, float32 exponent range
    "float16": _fmt("float16", 11, -14, 15),
    "bfloat16": _fmt("bfloat16", 8, -126, 127),
}


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


def get_format(name: object) -> FloatFormat:
    """Look up a format by name (aliases as in :func:`precision_name`), raising the standard "unknown format" error.

    >>> get_format("bfloat16").p
    8
    """
    key = PRECISION_ALIASES.get(str(name).lower(), str(name).lower()) if isinstance(name, str) else name
    try:
        return FORMATS[key]  # type: ignore[index]
    except (KeyError, TypeError):
        raise unknown_name("format", name, tuple(FORMATS)) from None


PRECISION_ALIASES = {
    "fp64": "float64", "double": "float64", "f64": "float64",
    "fp32": "float32", "single": "float32", "f32": "float32", "ieee": "float32",
    "fp16": "float16", "half": "float16", "f16": "float16",
    "bf16": "bfloat16",
    "tensorfloat32": "tf32", "tensor_float_32": "tf32",
}


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


_NUMPY_CASTS = {"float32": np.float32, "float16": np.float16}


def _exponent(a: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """floor(log2|a|), clipped below at the format's emin (subnormal spacing); 0 maps to emin."""
    _, e = np.frexp(a)
    return np.where(a == 0, fmt.emin, np.maximum(e.astype(np.int64) - 1, fmt.emin))


def round_to_format(a: np.ndarray, fmt: FloatFormat | str, *, truncate: bool = False) -> np.ndarray:
    """Round float64 values to the nearest value of ``fmt`` (ties to even), once.

    Rounds straight from float64 (no double rounding through float32), keeps
    subnormals of the format, and overflows to ±inf like IEEE round-to-nearest.
    ``truncate=True`` rounds toward zero instead (as some TF32 hardware
    conversions do). The result is float64.

    >>> round_to_format(np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 70000.0]), "float16")
    array([1.        , 1.00195312,        inf])
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    a = np.asarray(a, dtype=np.float64)
    if fmt.p >= 53:
        return a.copy()
    if not truncate and fmt.name in _NUMPY_CASTS:  # numpy's casts round to nearest-even once, same semantics
        with np.errstate(over="ignore"):
            return a.astype(_NUMPY_CASTS[fmt.name]).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        q = np.ldexp(1.0, _exponent(a, fmt) - fmt.p + 1)
        r = (np.trunc(a / q) if truncate else np.round(a / q)) * q  # exact: power-of-two scaling
        r = np.where(np.isfinite(a), r, a)
        big = np.abs(r) > fmt.max_finite
    return np.where(big, np.copysign(np.inf, a), r)


def ulp_in_format(a: np.ndarray, fmt: FloatFormat | str) -> np.ndarray:
    """Spacing of ``fmt`` at |a| (one unit in the last place), as float64.

    >>> ulp_in_format(np.array([1.0, 1600.0, 0.0]), "float32")
    array([1.19209290e-07, 1.22070312e-04, 1.40129846e-45])
    """
    fmt = get_format(fmt) if isinstance(fmt, str) else fmt
    a = np.abs(np.asarray(a, dtype=np.float64))
    a = np.where(np.isfinite(a), a, fmt.max_finite)
    return np.ldexp(1.0, _exponent(a, fmt) - fmt.p + 1)
