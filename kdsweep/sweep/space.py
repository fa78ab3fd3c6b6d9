"""The search space: Hydra sweep overrides -> Optuna distributions, grid points, override strings.

Grammar (as hydra-optuna-sweeper): ``choice(a,b)`` -> categorical; ``range(start,stop[,step])`` ->
int/float with step, **stop included**; ``interval(lo,hi)`` -> uniform float (Hydra makes its
bounds floats; use range() for integers);
``tag(log, interval(lo,hi))`` -> log-uniform. Anything else is a fixed override passed to every
trial verbatim (``dataset=embedded``, ``+experiment=...``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

LABEL_KEY = "_label_"
_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./:@+\-]*$")
_RESERVED = {"null", "true", "false", "nan", "inf", "none"}


class SearchSpaceError(ValueError):
    """The sweep definition is inconsistent (one line naming the key and what is allowed)."""


def format_value(value: Any) -> str:
    """A Python value as the right-hand side of a Hydra override that parses back to it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        if _SAFE.match(value) and value.lower() not in _RESERVED:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise SearchSpaceError(f"cannot pass {value!r} ({type(value).__name__}) as an override value")


def format_override(key: str, value: Any) -> str:
    return f"{key}={format_value(value)}"


def point_text(params: dict[str, Any], label: str | None = None) -> str:
    """What a trial varies, short: ``alpha=0.4 T=4`` (the last part of each key), or its label."""
    if label:
        return label
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items())


def _short(v: Any) -> str:
    """A value as a name shows it: floats a search drew (0.24824030047002132) to 4 digits."""
    return f"{v:.4g}" if isinstance(v, float) else format_value(v)


def _grid_float(low: float, high: float, step: float) -> list[float]:
    n = int(math.floor((high - low) / step + 1e-9))
    decimals = max(0, -int(math.floor(math.log10(abs(step))))) + 6 if step else 6
    return [round(low + i * step, decimals) for i in range(n + 1)]


def distribution_from_override(o: Override) -> BaseDistribution:
    key = o.get_key_element()
    v = o.value()
    if o.is_choice_sweep():
        assert isinstance(v, ChoiceSweep)
        choices = list(o.sweep_iterator(transformer=Transformer.identity))
        for c in choices:
            if not isinstance(c, (str, int, float, bool, type(None))):
                raise SearchSpaceError(f"{key}: choice() takes str/int/float/bool/null values, got {c!r}")
        return CategoricalDistribution(choices)
    if o.is_range_sweep():
        assert isinstance(v, RangeSweep)
        if v.shuffle:
            return CategoricalDistribution(list(o.sweep_iterator(transformer=Transformer.identity)))
        start, stop, step = v.start, v.stop, v.step if v.step is not None else 1
        if start is None or stop is None:
            raise SearchSpaceError(f"{key}: range() needs a start and a stop")
        if any(isinstance(x, float) for x in (start, stop, step)):
            return FloatDistribution(float(start), float(stop), step=float(step))
        return IntDistribution(int(start), int(stop), step=int(step))
    if o.is_interval_sweep():
        assert isinstance(v, IntervalSweep)
        # Hydra parses interval() bounds as floats: integers are swept with range().
        return FloatDistribution(float(v.start), float(v.end), log="log" in v.tags)
    raise SearchSpaceError(f"{key}: unsupported sweep {o.input_line!r}; use choice(), range(), "
                           "interval() or tag(log, interval())")


def grid_values(key: str, dist: BaseDistribution) -> list[Any]:
    """The values of one grid axis, in order (range() includes its stop value)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        return _grid_float(dist.low, dist.high, dist.step)
    raise SearchSpaceError(
        f"{key}: the grid sampler needs choice() or range() values, not a continuous interval")


def check_values(dist: BaseDistribution) -> list[Any]:
    """The values of a distribution that a check before the sweep tries: every choice, or the
    bounds of a range (a value between them is valid when both are, for the checks kdsweep makes)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high] if dist.low != dist.high else [dist.low]


@dataclass
class Point:
    """One grid point: ordered {override key: value}, and a label for the report."""

    values: dict[str, Any]
    label: str | None = None

    @property
    def key(self) -> str:
        """Canonical identity of the point (used to claim it once in the storage)."""
        return json.dumps({k: format_value(v) for k, v in sorted(self.values.items())},
                          separators=(",", ":"))

    def overrides(self) -> list[str]:
        return [format_override(k, v) for k, v in self.values.items()]


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)          # overrides passed verbatim
    points: list[Point] | None = None                      # grid mode: every point, in order
    axes: list[tuple[str, list[Any]]] | None = None        # product grid axes (for the report)

    @property
    def is_grid(self) -> bool:
        return self.points is not None

    def describe(self) -> dict[str, Any]:
        """JSON-able description (stored with the study and the MLflow parent run)."""
        d: dict[str, Any] = {
            "params": {k: _describe_dist(v) for k, v in self.distributions.items()},
            "fixed": list(self.fixed),
        }
        if self.axes is not None:
            d["axes"] = [[k, list(v)] for k, v in self.axes]
        if self.points is not None:
            d["points"] = [{"label": p.label, "values": p.values} for p in self.points]
        return d

    def identity(self) -> str:
        """Short hash of the sweep definition: the default study name derives from it."""
        blob = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _describe_dist(d: BaseDistribution) -> dict[str, Any]:
    if isinstance(d, CategoricalDistribution):
        return {"type": "choice", "values": list(d.choices)}
    if isinstance(d, IntDistribution):
        return {"type": "int", "low": d.low, "high": d.high, "step": d.step, "log": d.log}
    if isinstance(d, FloatDistribution):
        return {"type": "float", "low": d.low, "high": d.high, "step": d.step, "log": d.log}
    return {"type": type(d).__name__}


def params_to_overrides(params: Mapping[str, Any] | None) -> list[str]:
    """``hydra.sweeper.params`` ({key: "choice(...)" or a value}) as override strings."""
    out = []
    for k, v in (params or {}).items():
        out.append(f"{k}={v}" if isinstance(v, str) else format_override(str(k), v))
    return out


def parse(lines: Sequence[str]) -> tuple[dict[str, Override], list[str]]:
    """Split override strings into sweep overrides (by key; later wins) and fixed ones."""
    parsed = OverridesParser.create().parse_overrides(list(lines))
    sweeps: dict[str, Override] = {}
    fixed: dict[str, str] = {}
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            sweeps[key] = o
            fixed.pop(key, None)
        else:
            fixed[key] = o.input_line or f"{key}={o.get_value_element_as_str()}"
            sweeps.pop(key, None)
    return sweeps, list(fixed.values())


def _points_from_config(points: Iterable[Any]) -> list[Point]:
    out: list[Point] = []
    for i, raw in enumerate(points):
        if not isinstance(raw, Mapping) or not raw:
            raise SearchSpaceError(f"hydra.sweeper.points[{i}] must be a non-empty mapping "
                                   "{override_key: value}")
        values = {str(k): v for k, v in raw.items() if k != LABEL_KEY}
        for k, v in values.items():
            format_value(v)  # checks the type
            if isinstance(v, str) and ("(" in v and v.split("(")[0] in ("choice", "range", "interval", "tag")):
                raise SearchSpaceError(f"hydra.sweeper.points[{i}].{k}={v!r}: points take plain values")
        label = raw.get(LABEL_KEY)
        out.append(Point(values, str(label) if label is not None else None))
    keys = [p.key for p in out]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise SearchSpaceError(f"hydra.sweeper.points lists the same point twice: {sorted(dup)[0]}")
    return out


def build(params: Mapping[str, Any] | None, arguments: Sequence[str], *, grid: bool,
          points: Iterable[Any] | None) -> SearchSpace:
    """The search space of a sweep: ``params`` of the config, then the command-line overrides."""
    sweeps, fixed = parse([*params_to_overrides(params), *arguments])
    space = SearchSpace(fixed=fixed)
    if points is not None:
        if sweeps:
            raise SearchSpaceError(
                "hydra.sweeper.points is set: the sweep runs exactly those points, so "
                f"{', '.join(sweeps)} cannot also be swept (make it a plain value or a point key)")
        space.points = _points_from_config(points)
        for p in space.points:
            for k, v in p.values.items():
                d = space.distributions.get(k)
                choices = list(d.choices) if isinstance(d, CategoricalDistribution) else []
                if not any(c == v and type(c) is type(v) for c in choices):
                    choices.append(v)
                space.distributions[k] = CategoricalDistribution(choices)
        return space
    space.distributions = {k: distribution_from_override(o) for k, o in sweeps.items()}
    if grid:
        if not space.distributions:
            raise SearchSpaceError("the grid sampler needs at least one swept parameter "
                                   "(hydra.sweeper.params or key=choice(...) on the command line)")
        space.axes = [(k, grid_values(k, d)) for k, d in space.distributions.items()]
        space.points = [Point(dict(zip([k for k, _ in space.axes], combo, strict=True)))
                        for combo in _product([v for _, v in space.axes])]
    return space


def _product(axes: list[list[Any]]) -> Iterable[tuple[Any, ...]]:
    if not axes:
        yield ()
        return
    for head in axes[0]:
        for rest in _product(axes[1:]):
            yield (head, *rest)


def suggest(trial: Any, name: str, d: Any) -> Any:
    """Ask an Optuna trial for ``name`` from distribution ``d``."""
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    raise SearchSpaceError(f"unsupported distribution for {name}: {d}")
