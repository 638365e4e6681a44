"""Floating-point formats as grids: rounding onto them once, and their ulp.

A format is (precision p incl. the implicit bit, smallest normal exponent,
largest finite value). Rounding goes *once* from the float64 value to the
format (round to nearest, ties to even, or truncation toward zero), with
gradual underflow and overflow to ±inf, so emulating TF32/bfloat16/float16 does
not double-round through float32. The registry :data:`FORMATS` is the single
source of truth for names and unit roundoffs; attribution and
:mod:`refconv.testing` both use it.

>>> import numpy as np
>>> round_to(np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 70000.0]), "float16").tolist()
[1.0, 1.001953125, inf]
>>> ulp(np.array([1.0, 1000.0]), "float32")
array([1.19209290e-07, 6.10351562e-05])
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import unknown_name

__all__ = [
    "NumberFormat", "FORMATS", "ALIASES", "get_format", "round_to", "ulp", "unit_roundoff", "format_of_dtype",
    "on_grid",
]


@dataclasses.dataclass(frozen=True)
class NumberFormat:
    """A binary floating-point grid.

    ``precision`` counts the implicit bit (float32: 24); ``min_exp`` is the
    exponent of the smallest normal number (float32: -126); ``max_value`` is the
    largest finite value. ``u = 2**-precision`` is the unit roundoff.

    >>> FORMATS["tf32"].u == 2.0**-11
    True
    """

    name: str
    precision: int
    min_exp: int
    max_value: float

    @property
    def u(self) -> float:
        return 2.0**-self.precision

    @property
    def tiny(self) -> float:
        """Smallest positive subnormal."""
        return 2.0 ** (self.min_exp - self.precision + 1)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal number."""
        return 2.0**self.min_exp


FORMATS: dict[str, NumberFormat] = {}


def _register(fmt: NumberFormat) -> None:
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} registered twice")
    FORMATS[fmt.name] = fmt


_register(NumberFormat("float64", 53, -1022, float(np.finfo(np.float64).max)))
_register(NumberFormat("float32", 24, -126, float(np.finfo(np.float32).max)))
_register(NumberFormat("tf32", 11, -126, (2 - 2.0**-10) * 2.0**127))
_register(NumberFormat("float16", 11, -14, 65504.0))
_register(NumberFormat("bfloat16", 8, -126, (2 - 2.0**-7) * 2.0**127))


ALIASES = {
    "fp64": "float64", "double": "float64", "f64": "float64",
    "fp32": "float32", "single": "float32", "float": "float32", "f32": "float32",
    "fp16": "float16", "half": "float16", "f16": "float16",
    "bf16": "bfloat16",
    "tensorfloat32": "tf32", "tensor_float_32": "tf32",
}


def get_format(name: str | NumberFormat) -> NumberFormat:
    """Look up a format by name (case-insensitive; aliases such as fp16, bf16, half accepted).

    >>> get_format("BF16").precision
    8
    """
    if isinstance(name, NumberFormat):
        return name
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise unknown_name("number format", name, tuple(FORMATS))
    return FORMATS[key]


_fmt = get_format


def unit_roundoff(name: str) -> float:
    """u of a registered format.

    >>> unit_roundoff("bfloat16")
    0.00390625
    """
    return _fmt(name).u


def _exponent(v: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """frexp exponent clamped at the subnormal range: the grid spacing is 2**(e - p)."""
    with np.errstate(invalid="ignore"):
        e = np.frexp(np.where(np.isfinite(v), v, 0.0))[1]
    return np.where(v == 0, fmt.min_exp + 1, np.maximum(e, fmt.min_exp + 1))


_NUMPY_CASTS = {"float32": np.float32, "float16": np.float16}


def round_to(a: np.ndarray, fmt: str | NumberFormat, mode: str = "nearest") -> np.ndarray:
    """Round float64 values once onto a format's grid, returned as float64.

    ``mode`` is "nearest" (ties to even) or "truncate" (toward zero, as some
    TF32 conversions do). Overflow gives ±inf under "nearest" and the largest
    finite value under "truncate"; NaN and inf pass through.

    >>> round_to(np.array([1 + 2.0**-10 + 2.0**-12]), "tf32", mode="truncate")
    array([1.00097656])
    """
    f = _fmt(fmt)
    if mode not in ("nearest", "truncate"):
        raise unknown_name("rounding mode", mode, ("nearest", "truncate"))
    x = np.asarray(a, dtype=np.float64)
    if f.name == "float64":
        return x.copy()
    if mode == "nearest" and f.name in _NUMPY_CASTS:  # numpy's casts round once to nearest-even, same semantics
        with np.errstate(over="ignore"):
            return x.astype(_NUMPY_CASTS[f.name]).astype(np.float64)
    shift = f.precision - _exponent(x, f)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.ldexp(x, shift)
        q = np.rint(scaled) if mode == "nearest" else np.trunc(scaled)
        out = np.ldexp(q, -shift)
    big = np.abs(out) > f.max_value
    if big.any():
        fin = np.isfinite(x)
        over = big & fin
        out[over] = np.copysign(np.inf if mode == "nearest" else f.max_value, x[over])
    return out


def ulp(v: np.ndarray, fmt: str | NumberFormat) -> np.ndarray:
    """Spacing of the format's grid at |v| (ulp of v in that format; subnormal spacing at 0;
    the spacing at the largest finite value for ±inf and NaN).

    >>> ulp(np.array([0.0, 1.0]), "bfloat16")
    array([9.18354962e-41, 7.81250000e-03])
    """
    f = _fmt(fmt)
    v = np.abs(np.asarray(v, dtype=np.float64))
    v = np.where(np.isfinite(v), v, f.max_value)
    return np.ldexp(1.0, _exponent(v, f) - f.precision)


def on_grid(a: np.ndarray, fmt: str | NumberFormat) -> bool:
    """True when every finite value of ``a`` is representable in the format.

    >>> on_grid(np.array([1.5, 2.0**-26]), "float16"), on_grid(np.array([1.5, 2.0**-26]), "float32")
    (False, True)
    """
    a = np.asarray(a, dtype=np.float64)
    fin = a[np.isfinite(a)]
    return bool(np.array_equal(round_to(fin, fmt), fin))


def format_of_dtype(dtype: object) -> str | None:
    """The registered format name of a numpy/torch/tf/ml_dtypes dtype, or None.

    >>> format_of_dtype(np.float32), format_of_dtype("torch.bfloat16"), format_of_dtype(np.int32)
    ('float32', 'bfloat16', None)
    """
    name = getattr(dtype, "name", None) if not isinstance(dtype, str) else dtype
    if name is None:
        try:
            name = np.dtype(dtype).name  # type: ignore[call-overload]
        except TypeError:
            name = str(dtype)
    name = str(name).lower().removeprefix("torch.").removeprefix("tf.")
    name = ALIASES.get(name, name)
    return name if name in FORMATS else None
