"""What the sweeper's ``auto`` defaults mean, decided once per sweep from its search space.

* ``hydra/sweeper/sampler=auto`` (the default): a **grid** when every swept key is a list or a
  ``choice()`` (``method.alpha=0.2,0.4 method.T=2,4``), or when ``points`` are given; a **TPE
  search** as soon as one key is a ``range()`` or an ``interval()``.
* ``n_trials=null`` (the default): the whole grid; :data:`SEARCH_TRIALS` trials for a search.
* ``fuse=auto`` (the default): a grid's trials share one job per launcher slot (up to
  :data:`MAX_FUSE`; the job trains them in parts when they do not fit the device's memory,
  ``train.fuse_memory``, and prints its estimate); a search fuses :data:`SEARCH_FUSE` trials per
  job, because TPE learns from finished trials and a large batch is close to a random search.

The decision depends only on the command and the config, never on what is already done, so a
re-run makes the same one (the parent run's params cannot change).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from kdsweep.sweep import space as _space
from kdsweep.sweep.settings import Settings
from kdsweep.sweep.storage import short

SEARCH_TRIALS = 20
SEARCH_FUSE = 4
MAX_FUSE = 64
AUTO = "auto"
GRID = "optuna.samplers.GridSampler"
TPE = "optuna.samplers.TPESampler"


def is_auto(sampler: dict) -> bool:
    return str(sampler.get("_target_") or AUTO) == AUTO


def resolve(s: Settings, arguments: Sequence[str]) -> tuple[Settings, str | None]:
    """``s`` with a concrete sampler and ``n_trials``, and what ``auto`` chose (or None)."""
    sampler, why = dict(s.sampler), None
    if is_auto(sampler):
        sweeps, _ = _space.parse([*_space.params_to_overrides(s.params), *arguments])
        grid = s.points is not None or (bool(sweeps) and all(o.is_choice_sweep()
                                                             for o in sweeps.values()))
        if grid:
            sampler = {"_target_": GRID, "seed": sampler.get("seed")}
            why = "a grid (every swept key is a list or choice())"
        else:
            ranged = [k for k, o in sweeps.items() if not o.is_choice_sweep()]
            sampler = {**sampler, "_target_": TPE}
            verb = "is a range or interval" if len(ranged) == 1 else "are ranges or intervals"
            why = f"a TPE search ({', '.join(ranged) or 'no swept key'} {verb})"
    grid = s.points is not None or short(sampler["_target_"]) == "GridSampler"
    n_trials = s.n_trials if s.n_trials is not None or grid else SEARCH_TRIALS
    return replace(s, sampler=sampler, n_trials=n_trials), why


def total(s: Settings, space: _space.SearchSpace) -> int:
    """The study's number of trials: the grid's points (at most ``n_trials``), or ``n_trials``."""
    if space.points is not None:
        n = len(space.points)
        return n if s.n_trials is None else min(int(s.n_trials), n)
    return int(s.n_trials)


def fuse_size(s: Settings, n_total: int, grid: bool) -> int:
    """Trials per job: ``fuse``, or what ``fuse=auto`` means for this sweep (see the module)."""
    if s.fuse != AUTO:
        return int(s.fuse)
    if not grid:
        return SEARCH_FUSE
    return max(1, min(MAX_FUSE, math.ceil(n_total / s.n_jobs)))


def with_fuse(s: Settings, n_total: int, grid: bool, chosen: str | None) -> Settings:
    """``s`` with ``fuse`` made concrete; prints what the sweep will do (one line)."""
    n = fuse_size(s, n_total, grid)
    how = f"fuse={s.fuse}" if s.fuse == AUTO else "hydra.sweeper.fuse"
    print(f"kdsweep: {n_total} trials" + (f", {chosen}" if chosen else "") + ": "
          + (f"up to {n} per job, sharing one batch stream and teacher pass ({how})" if n > 1
             else "one job each (hydra.sweeper.fuse=1)"), flush=True)
    return replace(s, fuse=n)


__all__ = ["AUTO", "MAX_FUSE", "SEARCH_FUSE", "SEARCH_TRIALS", "fuse_size", "is_auto", "resolve",
           "total", "with_fuse"]
