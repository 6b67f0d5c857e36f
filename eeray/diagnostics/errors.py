"""Errors raised by :mod:`eeray.diagnostics`. All are ``ValueError`` subclasses that name the argument, the
value that was given and what would be valid, so a bad call fails before any expensive work starts. A loss name
or labels that do not fit the loss raise :class:`eeray.losses.LossError` (also a ``ValueError``, with the same
fields): the loss conventions live in :mod:`eeray.losses`, shared with training."""
from __future__ import annotations

from typing import Any

from eeray.errors import FieldError


class DiagnosticsError(FieldError):
    """An argument to a diagnostic is invalid: ``field`` was ``value``; ``valid`` says what would work."""

    @staticmethod
    def describe(field: str, value: Any, valid: str) -> str:
        text = repr(value)  # a tensor or a long list: its head is enough
        return f"{field} = {text if len(text) <= 120 else text[:117] + '...'} is invalid: {valid}"


class NonFiniteOutputError(DiagnosticsError):
    """The model produced NaN or inf on the diagnostic data; no rank or residual of such outputs is meaningful."""


class MemoryBudgetError(DiagnosticsError):
    """No chunking of the computation fits ``memory_budget_bytes``; ``needed_bytes`` is the smallest budget
    that would work for this method."""

    def __init__(self, value: int, needed_bytes: int, what: str):
        self.needed_bytes = int(needed_bytes)
        super().__init__("memory_budget_bytes", value,
                         f"{what} needs at least {needed_bytes:,} bytes ({needed_bytes / 2**30:.3g} GiB); "
                         f"raise memory_budget_bytes to >= {needed_bytes}, or pass fewer samples")


class SafeExplorationError(DiagnosticsError):
    """Assumption 4 cannot hold for these sizes (m_H·m_{H−1} < n); the message gives the smallest m_H."""
