"""Attribution: measure runs against the oracle and say which side is wrong.

* :func:`attribute` — one output against the exact conv: errors, ulps, bound
  ratios, precision found by emulation, semantic mismatches, verdict.
* :func:`explain` — several runs of one conv, each attributed, plus pairwise
  statements of which side carries the difference.

Registries: :data:`PRECISION_MODELS` (arithmetic models),
:data:`HYPOTHESES` (semantic mistakes), :data:`FORMATS` (number grids).
Importing this package imports numpy only.
"""

from .attribute import Problem, attribute, choose_precision
from .formats import FORMATS, round_to, ulp
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

