"""Typed hyper-parameter declarations of methods: ranges, choices, and how an ``__init__``
signature becomes a list of :class:`HParam` (checked values, generated config nodes and docs)."""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from kdsweep.errors import ConfigError


# ---------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric hyper-parameter: ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def describe(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{'(' if self.lo_open else '['}{lo}, {hi}]"

    def contains(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or v <= self.hi


@dataclass(frozen=True)
class OneOf:
    """Allowed values of a string hyper-parameter (compared case-insensitively)."""

    choices: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Length:
    """A list hyper-parameter with exactly ``n`` items."""

    n: int


#: A loss weight, >= 0.
Weight = Annotated[float, Range(0.0)]
#: A softmax temperature, > 0.
Temperature = Annotated[float, Range(0.0, lo_open=True)]
#: A fraction in [0, 1].
Fraction = Annotated[float, Range(0.0, 1.0)]
#: A count >= 1.
Count = Annotated[int, Range(1)]


@dataclass(frozen=True)
class HParam:
    """One declared hyper-parameter of a method."""

    name: str
    type: Any  # float, int, str, bool, list[float], Any; Optional[...] when ``nullable``
    default: Any
    nullable: bool = False
    range: Range | None = None
    choices: OneOf | None = None
    length: int | None = None

    @property
    def type_name(self) -> str:
        base = getattr(self.type, "__name__", None) or str(self.type).replace("typing.", "")
        if typing.get_origin(self.type) is list:
            base = f"list[{typing.get_args(self.type)[0].__name__}]"
        return f"{base} | None" if self.nullable else base

    def allowed(self) -> str:
        if self.choices is not None:
            return self.choices.describe()
        if self.range is not None:
            return self.range.describe()
        return ""

    def check(self, value: Any, prefix: str = "method.") -> Any:
        """``value`` converted to the declared type, or a one-line :class:`ConfigError`."""
        key = f"{prefix}{self.name}"
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{key}=null is not allowed; expected a {self.type_name}")
        if self.type is Any:
            return value
        if typing.get_origin(self.type) is list:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ConfigError(f"{key}={value!r} must be a list of {self.type_name}")
            items = [HParam(self.name, typing.get_args(self.type)[0], None, range=self.range)
                     .check(v, prefix) for v in value]
            if self.length is not None and len(items) != self.length:
                raise ConfigError(f"{key}={items} needs exactly {self.length} values")
            return items
        return self._scalar(key, value)

    def _scalar(self, key: str, value: Any) -> Any:
        if self.type is str:
            if self.choices is None:
                return str(value)
            choices = self.choices.choices
            match = {c.lower(): c for c in choices}.get(str(value).lower())
            if match is None:
                raise ConfigError(f"{key}={value!r} is not valid; valid: {', '.join(choices)}")
            return match
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{key}={value!r} must be true or false")
            return value
        try:
            v = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number") from None
        shown = f"{v:g}" if isinstance(value, (int, float)) else value
        if self.range is not None and not self.range.contains(v):
            raise ConfigError(f"{key}={shown} is out of range; allowed: {self.range.describe()}")
        if not math.isfinite(v):
            raise ConfigError(f"{key}={shown} must be a finite number")
        if self.type is int:
            if v != int(v):
                raise ConfigError(f"{key}={shown} must be an integer")
            return int(v)
        return v


def _declared_type(hint: Any) -> tuple[Any, bool, tuple[Any, ...]]:
    """(base type, nullable, metadata) of an ``__init__`` annotation."""
    meta: tuple[Any, ...] = ()
    if typing.get_origin(hint) is Annotated:
        hint, *rest = typing.get_args(hint)
        meta = tuple(rest)
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else Any
        if typing.get_origin(hint) is Annotated:
            hint, *rest = typing.get_args(hint)
            meta += tuple(rest)
    if typing.get_origin(hint) in (list, Sequence, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        hint = list[args[0] if args and args[0] is not Ellipsis else Any]
    return hint, nullable, meta


@functools.cache
def hparams_of(init: Callable[..., Any]) -> tuple[HParam, ...]:
    hints = typing.get_type_hints(init, include_extras=True)
    out = []
    for p in list(inspect.signature(init).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints or p.default is inspect.Parameter.empty:
            raise TypeError(f"{init.__qualname__}: hyper-parameter {p.name!r} needs a type and a "
                            "default")
        base, nullable, meta = _declared_type(hints[p.name])
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        out.append(HParam(
            p.name, base, default, nullable=nullable or p.default is None,
            range=next((m for m in meta if isinstance(m, Range)), None),
            choices=next((m for m in meta if isinstance(m, OneOf)), None),
            length=next((m.n for m in meta if isinstance(m, Length)), None)))
    return tuple(out)
