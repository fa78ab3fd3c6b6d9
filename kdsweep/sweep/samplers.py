"""The Optuna sampler of a sweep, from ``hydra.sweeper.sampler`` (checked, one line when bad)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from kdsweep.errors import SweepError

SAMPLERS = {"TPESampler", "RandomSampler", "GridSampler", "CmaEsSampler", "NSGAIISampler",
            "QMCSampler", "GPSampler", "BruteForceSampler"}


def make_sampler(sampler: Mapping[str, Any]) -> optuna.samplers.BaseSampler:
    """``{_target_: optuna.samplers.NAME, **kwargs}`` -> the sampler (grid: kdsweep enumerates
    the grid itself, so a seeded RandomSampler stands in)."""
    target = str(sampler.get("_target_", "optuna.samplers.TPESampler"))
    module, _, name = target.rpartition(".")
    kwargs = {k: v for k, v in sampler.items() if k != "_target_"}
    if module != "optuna.samplers" or name not in SAMPLERS:
        raise SweepError(f"hydra.sweeper.sampler._target_={target!r}: use one of "
                         "tpe, random, grid, cmaes, nsgaii (optuna.samplers.*)")
    if name == "GridSampler":
        return optuna.samplers.RandomSampler(seed=kwargs.get("seed"))
    if name == "CmaEsSampler":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SweepError("hydra/sweeper/sampler=cmaes needs the cmaes package: "
                             "pip install cmaes") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers, name)(**kwargs)
