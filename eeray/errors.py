"""The one shape of eeray's input errors, the one check of "a number", and an exception's chain of causes.

Every refusal of a value names the field, the value and what would be valid; :class:`FieldError` is that shape.
``ConfigError`` (configs and studies), ``DiagnosticsError`` (the diagnostics' arguments) and ``LossError`` (a
loss and its labels) are its kinds, so a caller catches them apart or together. They survive pickling (Ray and
Tune copy exceptions between processes) whatever their constructor's signature.

Imports nothing of eeray, torch or Ray: every layer may raise these.
"""
from __future__ import annotations

import math
import numbers
from typing import Any


class FieldError(ValueError):
    """``field`` was ``value``; ``valid`` says what would work."""

    def __init__(self, field: str, value: Any, valid: str):
        self.field, self.value, self.valid = field, value, valid
        super().__init__(self.describe(field, value, valid))

    @staticmethod
    def describe(field: str, value: Any, valid: str) -> str:
        return f"{field} = {value!r} is invalid: {valid}"

    def __reduce__(self):
        return _rebuild, (type(self), self.__dict__, self.args)


def _rebuild(cls: type, state: dict, args: tuple) -> FieldError:
    err = cls.__new__(cls)
    ValueError.__init__(err, *args)
    err.__dict__.update(state)
    return err


def is_number(v: Any, finite: bool = True) -> bool:
    """A real number, not a bool (Python's or numpy's: True is an int to Python), and finite unless told."""
    if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, numbers.Real):
        return False
    return math.isfinite(v) if finite else True


def is_integer(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def chain(exc: BaseException | None):
    """``exc``, then what caused it (``raise ... from``) or what it was raised while handling, outermost first:
    what a library's wrapper (Tune's ``TuneError``, SQLAlchemy's ``OperationalError``) hides."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
