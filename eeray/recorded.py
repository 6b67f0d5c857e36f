"""A recorded trial's config, rebuilt from its ``trials`` row: ``trial_config(results, trial) -> TrialConfig``.

The ``trials`` table stores the config as one ``cfg.<dotted key>`` column per field (``eeray.config.to_flat``),
typed from the field's annotation, and what a Parquet/pandas round trip gives back is not what went in: tuples
and mappings are JSON text (``optim.betas`` reads ``'[0.9, 0.999]'``), integers are numpy scalars (which
``torch.Generator().manual_seed`` rejects), and an integer column with nulls reads as float64 with NaN. So each
value is decoded to the type its dataclass field declares — never guessed from the value — and a value that does
not fit, a column the current config has no field for, or a field the row has no column for is an error naming
it: a config rebuilt with a silently dropped or defaulted field would not be the config the trial ran with.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import types
import typing
from typing import Any, Mapping

import numpy as np

from eeray.config import EEConfig, OptimConfig, TrialConfig, to_flat

PREFIX = "cfg."
_EXPLOIT = "ee.exploit_optim"  # the one nested section: to_flat expands it to ee.exploit_optim.* (all null: None)
_EXACT_INT = 2 ** 53  # an int column with nulls reads as float64: integers beyond this may have been rounded


class RecordError(ValueError):
    """A recorded row cannot be turned back into what the trial ran with; the message names the column."""


def trial_config(results: Any, trial: str) -> TrialConfig:
    """The exact :class:`TrialConfig` the recorded trial ``trial`` (its ``trial_id`` or ``trial_name``) ran with.
    ``results``: what ``eeray.results.load`` returns, or its ``trials`` frame."""
    return config_from_row(find_trial(results, trial))


def find_trial(results: Any, trial: str) -> Mapping[str, Any]:
    """The ``trials`` row (a dict) whose ``trial_id`` or ``trial_name`` is ``trial``; an unknown or ambiguous
    name is an error that lists some valid ones."""
    trials = getattr(results, "trials", results)
    hits = trials[(trials["trial_id"] == trial) | (trials["trial_name"] == trial)]
    if len(hits) == 1:
        return hits.iloc[0].to_dict()
    if len(hits) > 1:
        raise RecordError(f"{trial!r} names {len(hits)} trials ({', '.join(hits['trial_id'])}); give the trial_id")
    names = [f"{i} ({n})" for i, n in zip(trials["trial_id"], trials["trial_name"])]
    shown = "; ".join(names[:5]) + (f"; ... ({len(names)} in all)" if len(names) > 5 else "")
    raise RecordError(f"no trial {trial!r} in the record (neither a trial_id nor a trial_name); valid: "
                      f"{shown or 'none: the trials table is empty'}")


def config_from_row(row: Mapping[str, Any]) -> TrialConfig:
    """A ``trials`` row (or any mapping holding its ``cfg.*`` columns) -> the TrialConfig it records."""
    flat = {k[len(PREFIX):]: v for k, v in row.items() if k.startswith(PREFIX)}
    keys = set(to_flat(TrialConfig()))
    extra = sorted(set(flat) - keys)
    if extra:
        raise RecordError(f"column(s) {[PREFIX + k for k in extra]} = {[flat[k] for k in extra]!r} are not fields "
                          "of the current config (renamed or removed since the record was written); rebuild with "
                          "the eeray version that wrote it (the trial's git_commit)")
    missing = sorted(keys - set(flat))
    if missing:
        raise RecordError(f"the row has no column(s) {[PREFIX + k for k in missing]}: fields the current config has "
                          "but the record does not (added since it was written); a default would be a guess")
    sections = {}
    for name, cls in typing.get_type_hints(TrialConfig).items():
        if name != "seed":
            sections[name] = _section(cls, name, flat)
    return TrialConfig(seed=decode("seed", flat["seed"], int), **sections)


def _section(cls: type, prefix: str, flat: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        if cls is EEConfig and key == _EXPLOIT:
            sub = {k: v for k, v in flat.items() if k.startswith(_EXPLOIT + ".")}
            # G̃ = G is recorded as every ee.exploit_optim.* column null; a set G̃ has a name, so never all null
            values[f.name] = None if all(_null(v) for v in sub.values()) else _section(OptimConfig, key, flat)
        else:
            values[f.name] = decode(key, flat[key], hints[f.name])
    return cls(**values)


def decode(key: str, value: Any, tp: Any) -> Any:
    """``value`` as read from column ``cfg.<key>`` -> the Python value of annotation ``tp``, or RecordError."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None (the only unions the config has)
        if _null(value) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise RecordError(_why(key, value, f"a field of type {tp} cannot be decoded"))
        return decode(key, value, inner[0])
    if _null(value):
        raise RecordError(_why(key, value, f"null, but the field ({_name(tp)}) is not optional"))
    if tp is bool:
        if _is_bool(value):
            return bool(value)
    elif tp is int:
        if isinstance(value, numbers.Integral) and not _is_bool(value):
            return int(value)
        if isinstance(value, numbers.Real) and not _is_bool(value) and float(value).is_integer() \
                and abs(value) <= _EXACT_INT:  # an int column with nulls reads as float64
            return int(value)
    elif tp is float:
        if isinstance(value, numbers.Real) and not _is_bool(value):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return str(value)  # numpy.str_ -> str
    elif origin is tuple:
        items = _json(key, value, list)
        if len(items) == len(args):
            return tuple(decode(key, v, a) for v, a in zip(items, args))
    elif origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return _json(key, value, dict)
    else:
        raise RecordError(_why(key, value, f"a field of type {tp} cannot be decoded"))
    raise RecordError(_why(key, value, f"the field is {_name(tp)}"))


def _json(key: str, value: Any, kind: type) -> Any:
    """A tuple or mapping field: the record holds it as JSON text (``eeray.results`` writes non-scalars so)."""
    if isinstance(value, (list, tuple, dict)):  # already decoded (a row built from to_flat, not read back)
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordError(_why(key, value, f"not JSON ({exc})")) from exc
    else:
        raise RecordError(_why(key, value, f"the field is stored as JSON text of a {kind.__name__}"))
    if not isinstance(parsed, (list, tuple) if kind is list else dict):
        raise RecordError(_why(key, value, f"JSON of a {kind.__name__} expected"))
    return list(parsed) if kind is list else dict(parsed)


def _null(value: Any) -> bool:
    if value is None:
        return True
    try:  # NaN (float columns) and pandas' NA; an array or a string is not null
        return bool(value != value) if isinstance(value, numbers.Real) else type(value).__name__ == "NAType"
    except (TypeError, ValueError):
        return False


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))  # numpy's is not a subclass of bool (nor of int)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _why(key: str, value: Any, reason: str) -> str:
    return f"column '{PREFIX}{key}' = {value!r} ({type(value).__name__}) cannot be rebuilt: {reason}"


