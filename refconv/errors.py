"""One error hierarchy for refconv, rooted in :class:`RefconvError`.

Each subclass also derives from the matching built-in, so ``except ValueError``
keeps working for callers that do not know refconv.
"""

from __future__ import annotations

__all__ = [
    "RefconvError",
    "ShapeError",
    "DTypeError",
    "UnknownNameError",
    "DuplicateNameError",
    "FrameworkUnavailableError",
    "FrameworkRunError",
]


class RefconvError(Exception):
    """Base class of every error refconv raises on purpose."""


class ShapeError(RefconvError, ValueError):
    """Array shapes or conv geometry are inconsistent (names every relevant value)."""


class DTypeError(RefconvError, TypeError):
    """An array has a dtype refconv cannot convert exactly to float64."""


class UnknownNameError(RefconvError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(RefconvError, ValueError):
    """A registry name is already taken (register it under another name, or unregister it first).

    >>> issubclass(DuplicateNameError, ValueError)
    True
    """


class FrameworkUnavailableError(RefconvError, ImportError):
    """An optional framework is not installed; the message names the extra."""


class FrameworkRunError(RefconvError, RuntimeError):
    """A framework could not run the requested convolution (dtype, device, ...)."""


def unknown_name(kind: str, name: object, valid: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the standard "unknown X" error listing the valid choices."""
    return UnknownNameError(f"unknown {kind} {name!r}; valid choices: {', '.join(map(repr, valid))}")
