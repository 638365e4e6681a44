"""Arithmetic models a run can be explained by: input format, rounding, accumulator.

A model says: the inputs were rounded once to ``input_format`` (with
``rounding``), the bias was stored in ``bias_format``, the products were
accumulated in ``accumulation`` and the result rounded to the output dtype.
Its emulation is the exact conv of the rounded inputs; its per-element bound
is the mixed-precision bound of Blanchard, Higham, Lopez, Mary and Pranesh
(SIAM J. Sci. Comput. 42(3), 2020) with the input term removed by emulation:
γ_(n+2)(u_acc)·Σ|x̂·ŵ| (Higham 2002, eq. 3.5, any summation order).

:data:`PRECISION_MODELS` is the single source of truth; ``label`` is the
public precision vocabulary (:data:`refconv.attribution.types.PRECISIONS`).
Where a framework may keep the bias in float32 while rounding x and w (mixed
precision), both bias storages are registered, and every low-precision model
also has a variant whose inputs went through float32 first. TF32 hardware never
rounds the bias, but emulations often do, so TF32 has both bias storages too.

>>> sorted({m.label for m in PRECISION_MODELS.values()}) == sorted(PRECISIONS)
True
>>> PRECISION_MODELS["tf32_truncate"].rounding
'truncate'
"""

from __future__ import annotations

import dataclasses

from .types import PRECISIONS

__all__ = ["PrecisionModel", "PRECISION_MODELS", "PRECISION_RANK", "register_model"]

# Lower rank = more precise. TF32 and float16 share a mantissa, so they tie.
PRECISION_RANK = {"float64": 0, "float32": 1, "tf32": 2, "float16": 2, "bfloat16": 3}
# Preference among labels when the data cannot tell them apart (TF32's range is float32's).
LABEL_ORDER = ("float64", "float32", "tf32", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class PrecisionModel:
    """One arithmetic hypothesis for a run (see the module docstring).

    ``fallback`` models are only tried when nothing else, semantic hypotheses
    included, explains the output (float16 or bfloat16 accumulation has a bound so
    loose that it would swallow real mistakes).

    >>> PRECISION_MODELS["bfloat16"].accumulation
    'float32'
    """

    name: str
    label: str
    input_format: str
    rounding: str
    bias_format: str
    accumulation: str
    description: str
    fallback: bool = False
    via: str | None = None  # inputs cast to this format first (float64 -> float32 -> bfloat16, as frameworks do)


PRECISION_MODELS: dict[str, PrecisionModel] = {}


def register_model(model: PrecisionModel) -> PrecisionModel:
    """Add a model to :data:`PRECISION_MODELS`; a name registered twice raises.

    >>> register_model(PRECISION_MODELS["float32"])
    Traceback (most recent call last):
    ...
    ValueError: precision model 'float32' registered twice
    """
    if model.name in PRECISION_MODELS:
        raise ValueError(f"precision model {model.name!r} registered twice")
    if model.label not in PRECISIONS:
        raise ValueError(f"precision model {model.name!r}: label {model.label!r} not in {PRECISIONS}")
    PRECISION_MODELS[model.name] = model
    return model


for _m in (
    PrecisionModel("float64", "float64", "float64", "nearest", "float64", "float64", "float64 inputs and accumulation"),
    PrecisionModel("float32", "float32", "float32", "nearest", "float32", "float32", "float32 inputs and accumulation"),
    PrecisionModel(
        "tf32", "tf32", "tf32", "nearest", "float32", "float32",
        "inputs rounded to TF32 (nearest), float32 accumulation",
    ),
    PrecisionModel(
        "tf32_truncate", "tf32", "tf32", "truncate", "float32", "float32",
        "inputs truncated to TF32, float32 accumulation",
    ),
    PrecisionModel(
        "tf32_bias_tf32", "tf32", "tf32", "nearest", "tf32", "float32",
        "inputs and bias rounded to TF32 (nearest), float32 accumulation",
    ),
    PrecisionModel(
        "tf32_truncate_bias_tf32", "tf32", "tf32", "truncate", "tf32", "float32",
        "inputs and bias truncated to TF32, float32 accumulation",
    ),
    PrecisionModel(
        "float16", "float16", "float16", "nearest", "float16", "float32", "float16 inputs, float32 accumulation"
    ),
    PrecisionModel(
        "float16_bias32", "float16", "float16", "nearest", "float32", "float32",
        "float16 inputs, float32 bias and accumulation",
    ),
    PrecisionModel(
        "bfloat16", "bfloat16", "bfloat16", "nearest", "bfloat16", "float32", "bfloat16 inputs, float32 accumulation"
    ),
    PrecisionModel(
        "bfloat16_bias32", "bfloat16", "bfloat16", "nearest", "float32", "float32",
        "bfloat16 inputs, float32 bias and accumulation",
    ),
    PrecisionModel(
        "float16_acc16", "float16", "float16", "nearest", "float16", "float16",
        "float16 inputs and float16 accumulation", fallback=True,
    ),
    PrecisionModel(  # (TensorFlow's CPU depthwise conv in bfloat16)
        "bfloat16_acc16", "bfloat16", "bfloat16", "nearest", "bfloat16", "bfloat16",
        "bfloat16 inputs and bfloat16 accumulation", fallback=True,
    ),
):
    register_model(_m)

# Frameworks cast float64 tensors to bfloat16/float16 through float32 (torch and TensorFlow both do), and
# TF32 hardware rounds float32 operands: the double rounding differs from one rounding at rare midpoints.
for _m in [m for m in PRECISION_MODELS.values() if m.input_format in ("tf32", "float16", "bfloat16")
           and not m.fallback]:
    register_model(dataclasses.replace(
        _m, name=f"{_m.name}_via_float32", via="float32", description=f"{_m.description}, cast through float32"))
