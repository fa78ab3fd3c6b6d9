"""Config schema of the kdsweep Optuna sweeper, registered in Hydra's ConfigStore.

The sweeper of ``python run.py -m`` (``conf/config.yaml``); pick a sampler with
``hydra/sweeper/sampler=grid`` (auto, tpe, random, grid, cmaes, nsgaii) and a pruner with ``hydra/sweeper/pruner=median`` (none,
median, hyperband). The sweeper's options are declared once, in
:class:`kdsweep.sweep.settings.Settings` (name, type, default, meaning); this module builds the
Hydra node from them and adds only Hydra's own keys and the sampler and pruner config groups. See
docs/sweeps.md.

This module is imported by Hydra's plugin scan on every ``run.py`` start: keep it light. No
``from __future__ import annotations`` here: the scan executes modules outside ``sys.modules``
and dataclasses cannot resolve string annotations there.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from kdsweep.sweep.settings import Settings

PROVIDER = "kdsweep_optuna_sweeper"


@dataclass
class SamplerConfig:
    _target_: str = MISSING
    seed: int | None = None


@dataclass
class TPESamplerConfig(SamplerConfig):
    """https://optuna.readthedocs.io/en/stable/reference/samplers/generated/optuna.samplers.TPESampler.html"""

    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = True   # spreads the trials of one parallel batch


@dataclass
class AutoSamplerConfig(TPESamplerConfig):
    """The default: a grid when every swept key is a list or choice(), else TPE with the options
    above (kdsweep/sweep/auto.py)."""

    _target_: str = "auto"


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class GridSamplerConfig(SamplerConfig):
    """Every point of the grid of ``params`` (choice()/range() only), or exactly ``points``.

    kdsweep enumerates the grid itself (in order, each point claimed once in the storage) instead
    of asking Optuna's GridSampler, which may repeat points when several processes share a study.
    """

    _target_: str = "optuna.samplers.GridSampler"


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    """Needs the ``cmaes`` package (``pip install cmaes``)."""

    _target_: str = "optuna.samplers.CmaEsSampler"
    sigma0: float | None = None
    n_startup_trials: int = 1
    consider_pruned_trials: bool = False
    use_separable_cma: bool = False
    with_margin: bool = False


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class NopPrunerConfig:
    """No pruning: every trial runs its whole schedule (the default)."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig:
    """Stop a trial whose val_acc at an epoch is below the median of earlier trials at that epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5     # finished trials before any pruning
    n_warmup_steps: int = 0       # epochs of each trial never pruned
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1         # epochs
    max_resource: Any = "auto"    # epochs, or "auto" (from the first finished trials)
    reduction_factor: int = 3
    bootstrap_count: int = 0


#: The node's keys that are Hydra's, not the sweep's: the target class, and the defaults list
#: that selects the sampler and pruner config groups.
HYDRA_KEYS: list[tuple[str, Any, Any]] = [
    ("_target_", str, field(default="hydra_plugins.kdsweep_optuna_sweeper.kdsweep_optuna_sweeper."
                                    "KDSweepOptunaSweeper")),
    ("_recursive_", bool, field(default=False)),  # sampler/pruner stay configs: the pruner is
                                                  # stored with the study
    ("defaults", list[Any], field(default_factory=lambda: [{"sampler": "auto"}, {"pruner": "none"}])),
]
#: Options that Hydra fills from a config group (hydra/sweeper/sampler, hydra/sweeper/pruner):
#: their type and default here, everything else about them in Settings.
GROUP_OPTIONS: dict[str, tuple[Any, Any]] = {"sampler": (SamplerConfig, MISSING),
                                             "pruner": (Any, MISSING)}


def _node_fields() -> list[tuple[str, Any, Any]]:
    """HYDRA_KEYS, then every option of :class:`kdsweep.sweep.settings.Settings` (name, type and
    default from there, the config-group options typed as their group)."""
    types = typing.get_type_hints(Settings)
    out = list(HYDRA_KEYS)
    for f in dataclasses.fields(Settings):
        if f.name in GROUP_OPTIONS:
            kind, default = GROUP_OPTIONS[f.name]
            out.append((f.name, kind, field(default=default)))
        else:
            out.append((f.name, types[f.name],
                        field(default=f.default, default_factory=f.default_factory)))
    return out


# Built from Settings, so a sweeper option is declared once (kdsweep/sweep/settings.py). A
# module-level name equal to the class's own, in this module: launchers pickle composed configs,
# which refer to their schema class by module and name.
KDSweepOptunaSweeperConf = dataclasses.make_dataclass("KDSweepOptunaSweeperConf", _node_fields())
KDSweepOptunaSweeperConf.__module__ = __name__
KDSweepOptunaSweeperConf.__doc__ = ("``hydra/sweeper=kdsweep_optuna``: the options of "
                                    "kdsweep.sweep.settings.Settings, and Hydra's keys.")


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="kdsweep_optuna", node=KDSweepOptunaSweeperConf,
             provider=PROVIDER)
    for name, node in (("auto", AutoSamplerConfig), ("tpe", TPESamplerConfig),
                       ("random", RandomSamplerConfig),
                       ("grid", GridSamplerConfig), ("cmaes", CmaEsSamplerConfig),
                       ("nsgaii", NSGAIISamplerConfig)):
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider=PROVIDER)
    for name, node in (("none", NopPrunerConfig), ("median", MedianPrunerConfig),
                       ("hyperband", HyperbandPrunerConfig)):
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider=PROVIDER)


register()
