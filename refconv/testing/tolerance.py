"""Per-element tolerances for a conv kernel, derived from its precision's error model.

For every output element the tolerance on |actual - exact| is the sum of

* **input rounding**: the kernel may round x, w and b to the precision's input
  format. Where an input is already representable it is left alone (any sane
  rounding keeps it), otherwise |x̂ - x| ≤ f·u_in·|x| (f = 1 for round-to-nearest,
  2 for TF32, whose hardware conversion may truncate); inputs in the subnormal
  range may also be flushed to zero. The product term is
  Σ|x̂ŵ - xw| ≤ Σ(δx·|w| + |x|·δw + δx·δw), evaluated exactly per element;
* **accumulation**: ``bound="deterministic"``: γ_m(u_acc)·Σ|x̂·ŵ| with
  γ_m = m·u/(1 - m·u), m = n + 1 with a bias (Higham 2002, §3.1, eq. 3.5: any
  summation order, FMA or not). ``bound="probabilistic"``:
  min(γ_m, γ̃_m(λ)) with γ̃_m(λ) = exp(λ·√m·u + m·u²/(1-u)) - 1 and λ = 6
  (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019: holds with probability at
  least 1 - 2m·exp(-λ²(1-u)²/2) per element if rounding errors are independent
  and mean zero; not rigorous for structured data such as constant inputs);
* **output rounding**: u_out·(|exact| + the two terms above), plus half the
  smallest subnormal of the output format (gradual underflow);
* **a bias added after the output rounding**: with a bias and an output format
  narrower than the accumulation's, the conv may be rounded to the output format
  before the bias is added by a separate op in that format (jax's ``conv + b``,
  TensorFlow's ``bias_add``): one more rounding, u_out·(|exact - b| + the terms
  above), as attribution's models of a narrower output allow;
* **underflow in the accumulator**: (2m + 1)·(smallest normal of the accumulation
  format), so flush-to-zero arithmetic (CPU FTZ/DAZ) is accepted;
* **reference slack**: 2^-52·(|exact| + tol) for the float64 rounding of the
  oracle's correctly rounded value and of Σ|x·w| itself.

Σ|x·w| is computed with the plain float64 im2col conv and inflated by
(1 + 2(n + 2)·2^-53) to cover its own rounding. Where an input overflows the
input format, or Σ|x̂·ŵ| can overflow the accumulator, any value is accepted
(``overflow`` mask). Non-finite exact values must be matched exactly (NaN for
NaN, same-signed inf for inf).

>>> import numpy as np
>>> x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1) / 3
>>> t = conv2d_tolerance(x, np.ones((2, 2, 1, 1), np.float32), precision="float32")
>>> t.tol.shape, bool(np.all(t.tol < 1e-5)), t.n_terms
((1, 2, 2, 1), True, 4)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import unknown_name
from ..formats import NumberFormat, get_format, round_to
from ..spec import ConvSpec, Padding, prepare
from .precision import get_precision

__all__ = ["Tolerance", "conv2d_tolerance", "BOUNDS", "PROBABILISTIC_LAMBDA", "tolerance_nhwc", "nhwc_spec"]

PROBABILISTIC_LAMBDA = 6.0
_U64 = 2.0**-53


def _gamma_deterministic(m: int, u: float) -> float:
    """γ_m = m·u / (1 - m·u) (Higham 2002, §3.1); inf when m·u ≥ 1."""
    mu = m * u
    return mu / (1.0 - mu) if mu < 1.0 else math.inf


def _gamma_probabilistic(m: int, u: float) -> float:
    """min(γ_m, γ̃_m(λ)), γ̃_m(λ) = exp(λ√m·u + m·u²/(1-u)) - 1 (Higham & Mary 2019)."""
    tilde = math.expm1(PROBABILISTIC_LAMBDA * math.sqrt(m) * u + m * u * u / (1.0 - u))
    return min(_gamma_deterministic(m, u), tilde)


BOUNDS: dict[str, Callable[[int, float], float]] = {
    "deterministic": _gamma_deterministic,
    "probabilistic": _gamma_probabilistic,
}


@dataclasses.dataclass
class Tolerance:
    """Per-element tolerance of a conv, with the pieces it was built from.

    Arrays are float64 in NHWC (``*_nhwc``) for internal use; :attr:`tol` and
    :attr:`exact` are in the caller's ``data_format``. ``magnitude`` is
    Σ|x̂·ŵ| + |b̂| (the scale of the deterministic bound), ``overflow`` marks
    elements where any value is accepted because the precision's range can
    overflow there. ``description`` states the model in one line.
    """

    spec: ConvSpec
    precision: str
    accumulation: str
    output: str
    bound: str
    n_terms: int
    gamma: float
    exact_nhwc: np.ndarray
    tol_nhwc: np.ndarray
    magnitude_nhwc: np.ndarray
    input_term_nhwc: np.ndarray
    overflow_nhwc: np.ndarray
    description: str
    user_override: str | None = None

    @property
    def tol(self) -> np.ndarray:
        """Tolerance in the caller's data_format."""
        return self.spec.y_from_nhwc(self.tol_nhwc)

    @property
    def exact(self) -> np.ndarray:
        """Correctly rounded exact output (float64) in the caller's data_format."""
        return self.spec.y_from_nhwc(self.exact_nhwc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (arrays reduced to their extremes)."""
        return {
            "precision": self.precision,
            "accumulation": self.accumulation,
            "output": self.output,
            "bound": self.bound,
            "n_terms": self.n_terms,
            "gamma": self.gamma,
            "max_tol": float(np.max(self.tol_nhwc, initial=0.0)),
            "min_tol": float(np.min(self.tol_nhwc, initial=0.0)),
            "description": self.description,
            "user_override": self.user_override,
            "spec": self.spec.to_dict(),
        }


def _input_delta(a: np.ndarray, fmt: NumberFormat, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """(δa, overflow): a bound on |â - a| for any rounding of a to fmt, and where it overflows."""
    with np.errstate(invalid="ignore"):
        absa = np.abs(a)
        rounded = round_to(a, fmt)
        representable = (rounded == a) | ~np.isfinite(a)
        overflow = np.isfinite(a) & (absa > fmt.max_value * (1 + 2 * fmt.u))
        delta = np.where(representable, 0.0, factor * fmt.u * absa)
        # subnormal-range inputs may be flushed to zero (DAZ); keeps the bound valid with or without it
        delta = np.where((absa < fmt.min_normal) & (a != 0) & np.isfinite(a), np.maximum(delta, absa), delta)
        # inputs rounded below the smallest subnormal: |δ| ≤ half the smallest subnormal, already ≤ |a|
    return np.where(overflow, 0.0, delta), overflow


def _finite_abs(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a), np.abs(a), 0.0)


def tolerance_nhwc(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    spec: ConvSpec,
    *,
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
    exact_nhwc: np.ndarray | None = None,
    input_rounding: bool = True,
    output: str | None = None,
) -> Tolerance:
    """Tolerance for float64 NHWC ``x``/HWIO ``w`` (the core of :func:`conv2d_tolerance`).

    ``input_rounding=False`` drops the input-rounding term (for inputs already
    rounded by the caller, as the diagnosis of precision faults does);
    ``output`` overrides the output format of the precision model.

    >>> s = ConvSpec.from_shapes((1, 2, 2, 1), (2, 2, 1, 1))
    >>> float(tolerance_nhwc(np.ones((1, 2, 2, 1)), np.ones((2, 2, 1, 1)), None, s).tol_nhwc[0, 0, 0, 0]) > 0
    True
    """
    from ..oracle import conv2d
    from ..oracle._im2col import float_conv_nhwc

    model = get_precision(precision)
    precision = model.name
    acc = get_format(accumulation if accumulation is not None else model.accumulation)
    fin, fout = get_format(model.inputs), get_format(output if output is not None else model.output)
    if bound not in BOUNDS:
        raise unknown_name("bound", bound, tuple(BOUNDS))
    n = spec.n_terms
    m = n + (1 if b is not None else 0)
    if exact_nhwc is None:
        exact_nhwc = conv2d(x, w, b, padding=spec.pads, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)

    ax, aw = _finite_abs(x), _finite_abs(w)
    inflate = 1.0 + 2.0 * (n + 2) * _U64
    with np.errstate(invalid="ignore", over="ignore"):
        base = float_conv_nhwc(ax, aw, spec) * inflate
        input_term = np.zeros_like(base)
        overflow = np.zeros(base.shape, dtype=bool)
        bias_abs = _finite_abs(b) if b is not None else 0.0
        bias_delta = 0.0
        if input_rounding:
            dx, ovx = _input_delta(x, fin, model.input_rounding_factor)
            dw, ovw = _input_delta(w, fin, model.input_rounding_factor)
            if dx.any() or dw.any():
                input_term = (
                    float_conv_nhwc(dx, aw, spec) + float_conv_nhwc(ax, dw, spec) + float_conv_nhwc(dx, dw, spec)
                ) * inflate
            if ovx.any() or ovw.any():
                hit = float_conv_nhwc(ovx.astype(np.float64), (w != 0).astype(np.float64), spec)
                hit += float_conv_nhwc((x != 0).astype(np.float64), ovw.astype(np.float64), spec)
                overflow |= hit > 0
            if b is not None:
                db, ovb = _input_delta(b, fin, model.input_rounding_factor)
                bias_delta = db
                overflow |= np.broadcast_to(ovb, overflow.shape)
        magnitude = base + input_term + bias_abs + bias_delta
        gamma = BOUNDS[bound](m, acc.u)
        acc_term = gamma * magnitude
        underflow = (2 * m + 1) * acc.min_normal
        inner = input_term + bias_delta + acc_term + underflow
        abs_exact = _finite_abs(exact_nhwc)
        bias_after = b is not None and fout.precision < acc.precision
        if bias_after:  # (the conv rounded to the output format, then the bias added: exact - b rounded once more)
            inner = inner + fout.u * (_finite_abs(exact_nhwc - b) + inner) + 0.5 * fout.tiny
        out_term = fout.u * (abs_exact + inner) + 0.5 * fout.tiny
        tol = inner + out_term
        tol = tol + 2.0**-52 * (abs_exact + tol)
        # Σ|x̂ŵ| beyond the accumulator's range, or |exact| beyond the output's: overflow is legitimate
        overflow |= magnitude * (1 + gamma) >= acc.max_value
        overflow |= abs_exact + inner >= fout.max_value
        overflow |= ~np.isfinite(magnitude)
    tol = np.where(overflow, np.inf, tol)
    desc = (
        f"precision={model.name}: inputs may be rounded to {fin.name} (u=2^{-fin.precision}"
        f"{', truncation allowed' if model.input_rounding_factor > 1 else ''}), "
        f"{bound} accumulation bound in {acc.name} (u=2^{-acc.precision}, "
        f"m={m} terms{' incl. bias' if b is not None else ''}, "
        f"gamma={gamma:.3g}), output rounded to {fout.name}"
        f"{' (the bias possibly added after that rounding)' if bias_after else ''}"
    )
    return Tolerance(
        spec=spec,
        precision=model.name,
        accumulation=acc.name,
        output=fout.name,
        bound=bound,
        n_terms=n,
        gamma=gamma,
        exact_nhwc=exact_nhwc,
        tol_nhwc=tol,
        magnitude_nhwc=magnitude,
        input_term_nhwc=input_term,
        overflow_nhwc=overflow,
        description=desc,
    )


def conv2d_tolerance(
    x: Any,
    w: Any,
    b: Any = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: Padding = "VALID",
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "NHWC",
    kernel_format: str | None = None,
    precision: str = "float32",
    accumulation: str | None = None,
    bound: str = "deterministic",
) -> Tolerance:
    """Per-element tolerance on |actual - exact| for a kernel claiming ``precision``.

    ``precision`` is one of :data:`~refconv.testing.precision.PRECISION_MODELS`
    ("float64", "float32", "tf32", "float16", "bfloat16"); ``accumulation``
    overrides its default accumulation format (float32 for the low-precision
    ones); ``bound`` is "deterministic" (rigorous, γ_n) or "probabilistic"
    (λ√n·u, λ = 6). The operation is cross-correlation; ``tol`` and ``exact``
    come back float64 in ``data_format``. See the module docstring for the terms.

    >>> import numpy as np
    >>> x, w = np.ones((1, 4, 4, 3), np.float32), np.ones((3, 3, 3, 2), np.float32)
    >>> t32 = conv2d_tolerance(x, w, padding="SAME")
    >>> t16 = conv2d_tolerance(x, w, padding="SAME", precision="float16")
    >>> bool(np.all(t16.tol > t32.tol)), float(t32.exact[0, 1, 1, 0])
    (True, 27.0)
    """
    precision = get_precision(precision).name
    xf, wf, bf, spec = prepare(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        data_format=data_format, kernel_format=kernel_format,
    )
    t = tolerance_nhwc(
        spec.x_to_nhwc(xf), spec.w_to_hwio(wf), bf, nhwc_spec(spec),
        precision=precision, accumulation=accumulation, bound=bound,
    )
    return dataclasses.replace(t, spec=spec)


def nhwc_spec(spec: ConvSpec) -> ConvSpec:
    """The same geometry in NHWC/HWIO layouts with explicit pads.

    >>> nhwc_spec(ConvSpec.from_shapes((1, 2, 5, 5), (4, 2, 3, 3), data_format="NCHW")).x_shape
    (1, 5, 5, 2)
    """
    if spec.data_format == "NHWC" and spec.kernel_format == "HWIO":
        return spec
    return ConvSpec.from_shapes(
        (spec.N, spec.H, spec.W, spec.C), (spec.KH, spec.KW, spec.C // spec.groups, spec.O),
        (spec.O,) if spec.has_bias else None, stride=spec.stride, padding=spec.pads, dilation=spec.dilation,
        groups=spec.groups,
    )
