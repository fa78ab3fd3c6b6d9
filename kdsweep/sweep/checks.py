"""Before a sweep starts: every trial it would run checked as a single run is, in one line.

A sweep must never stop halfway on a value a single run refuses (``method.alpha=1.5`` in one
point). So before the sweeper creates its study, its MLflow parent run or any folder, each trial's
config is composed (``Context.compose``, as the launcher will) and put through the checks a run
makes before any work (``Context.check``: :func:`kdsweep.run.job.check`, wired in by the Hydra
plugin, so this package does not depend on the run pipeline).
"""

from __future__ import annotations

from kdsweep.errors import KDSweepError, SweepError
from kdsweep.sweep import space as _space
from kdsweep.sweep.settings import Context
from kdsweep.sweep.space import format_override

#: A grid of at most this many points is checked point by point before it starts; a larger one
#: value by value (each value of each axis once, the other axes at their first value).
PREFLIGHT_ALL_POINTS = 64


def preflight_variants(space: _space.SearchSpace) -> list[list[str]]:
    """The overrides to check before a sweep starts: every point of a small grid, else each
    value of each swept key once (a sampler's ranges: their bounds)."""
    if space.points is not None and (len(space.points) <= PREFLIGHT_ALL_POINTS or not space.axes):
        return [p.overrides() for p in space.points]
    if space.axes:
        values = {k: list(v) for k, v in space.axes}
    else:
        values = {k: _space.check_values(d) for k, d in space.distributions.items()}
    first = {k: v[0] for k, v in values.items()}
    variants = [dict(first)]
    for k, vs in values.items():
        variants += [{**first, k: v} for v in vs[1:]]
    return [[format_override(k, v) for k, v in var.items()] for var in variants]


def preflight(space: _space.SearchSpace, ctx: Context) -> None:
    """Refuse the sweep, in one line, if any trial it would run would be refused: the same
    checks a single run gets (``Context.check``), on each trial's composed config."""
    if ctx.check is None or ctx.compose is None:
        return
    for i, overrides in enumerate(preflight_variants(space)):
        cfg = ctx.compose([*space.fixed, *overrides])
        try:
            ctx.check(cfg, reach=i == 0)
        except KDSweepError as e:
            where = f"sweep point {' '.join(overrides)}: " if overrides else ""
            raise SweepError(f"{where}{e}") from None
