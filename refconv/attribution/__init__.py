"""Attribution: measure runs against the oracle (filled in by the attribution issue)."""

from .types import MISMATCHES, PRECISIONS, VERDICTS, Attribution, PairComparison, Report

__all__ = ["Attribution", "PairComparison", "Report", "PRECISIONS", "MISMATCHES", "VERDICTS"]
