"""Framework adapters (filled in by the adapters issue)."""

from .base import DTYPES, MATH_MODES, FrameworkRun

__all__ = ["FrameworkRun", "DTYPES", "MATH_MODES"]
