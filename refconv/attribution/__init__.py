"""Attribution: measure runs against the oracle and say which side is wrong.

* :func:`attribute` — one output against the exact conv: errors, ulps, bound
  ratios, precision found by emulation, semantic mismatches, verdict.
* :func:`explain` — several runs of one conv, each attributed, plus pairwise
  statements of which side carries the difference.

Registries: :data:`PRECISION_MODELS` (arithmetic models),
:data:`HYPOTHESES` (semantic mistakes), :data:`FORMATS` (number grids).
Importing this package imports numpy only.

Decisions worth knowing:

* ``precision`` is the requested precision whenever the data cannot rule it
  out; otherwise the least precise surviving label at least as precise as
  requested ("ok"), else the most precise survivor ("degraded"). It can never
  be finer than the output's own grid (bfloat16 values in a float32 array are
  bfloat16 arithmetic).
* TF32 and float16 round identically inside float16's range; when the data
  cannot separate them both are ``candidates`` and "tf32" is preferred (unless
  float16 was requested). So float16 storage upstream of a float32 conv gives
  precision "tf32" (float16 among the candidates), verdict "degraded"; with
  ``inputs_seen`` the cast is separated (``input_cast_error``) and the float32
  arithmetic is "ok".
* ``precision`` is None for "mismatch" (see ``extra["precision_under_mismatch"]``)
  and "unexplained" (see ``extra["precision_elsewhere"]``); localized outliers
  are named in ``mismatch_detail`` and ``worst_positions``.
"""

from ..formats import FORMATS, round_to, ulp
from .attribute import Problem, attribute, choose_precision
from .hypotheses import HYPOTHESES
from .models import PRECISION_MODELS
from .runs import LabeledRun, compare_pair, explain
from .types import MISMATCHES, PRECISIONS, VERDICTS, Attribution, PairComparison, Report

__all__ = [
    "attribute",
    "explain",
    "compare_pair",
    "Problem",
    "LabeledRun",
    "choose_precision",
    "Attribution",
    "PairComparison",
    "Report",
    "PRECISIONS",
    "MISMATCHES",
    "VERDICTS",
    "PRECISION_MODELS",
    "HYPOTHESES",
    "FORMATS",
    "round_to",
    "ulp",
]

