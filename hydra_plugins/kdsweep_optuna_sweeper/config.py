"""Config schema of the kdsweep Optuna sweeper, registered in Hydra's ConfigStore.

Select it with ``hydra/sweeper=kdsweep_optuna``; pick a sampler with ``hydra/sweeper/sampler=grid``
(tpe, random, grid, cmaes, nsgaii) and a pruner with ``hydra/sweeper/pruner=median`` (none,
median, hyperband). The keys are those of hydra-optuna-sweeper (``params``, ``sampler``,
``direction``, ``study_name``, ``storage``, ``n_trials``, ``n_jobs``, ``max_failure_rate``) so
sweep configs port both ways; the additions are ``pruner``, ``points``, ``study_dir``, the
heartbeat settings and ``report``. See docs/sweeps.md.

This module is imported by Hydra's plugin scan on every ``run.py`` start: keep it light. No
``from __future__ import annotations`` here: the scan executes modules outside ``sys.modules``
and dataclasses cannot resolve string annotations there.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

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


@dataclass
class ReportConfig:
    """The Markdown tables and plots written to the study directory when a sweep ends."""

    enabled: bool = True
    metric: str = "best_val_acc"  # the child runs' MLflow metric shown in the tables
    rows: str | None = None       # override key of the table rows (default: first swept key)
    cols: str | None = None       # override key of the columns (default: second swept key)
    title: str | None = None
    label_header: str | None = None  # header of the label column of one-row-per-point tables
    published: str | None = None  # id of a published table (kdsweep.report.published) to compare


@dataclass
class KDSweepOptunaSweeperConf:
    _target_: str = "hydra_plugins.kdsweep_optuna_sweeper.kdsweep_optuna_sweeper.KDSweepOptunaSweeper"
    _recursive_: bool = False  # sampler/pruner stay configs: the pruner is stored with the study
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    sampler: SamplerConfig = MISSING
    pruner: Any = MISSING

    # "maximize" (kdsweep's objective is the best validation accuracy) or "minimize".
    # hydra-optuna-sweeper defaults to minimize: set it explicitly in configs that must port.
    direction: str = "maximize"
    # Any SQLAlchemy URL (sqlite:///..., postgresql://...). null: sqlite:///<study_dir>/optuna.db
    storage: str | None = None
    # null: "sweep-<hash of the swept and fixed overrides>", so the same command resumes its study
    study_name: str | None = None
    # null: <launch dir>/multirun/<study_name>; holds the default storage, sweep.json and the report
    study_dir: str | None = None
    # The study's total: a re-run only runs what is missing. null with a grid = the whole grid.
    n_trials: int | None = 20
    # Trials launched at once (one batch per launcher call): parallel with the joblib launcher.
    n_jobs: int = 1
    # Abort the sweep when more than this fraction of one batch failed (1.0: never abort).
    max_failure_rate: float = 1.0
    # Search space in Hydra's override grammar: choice(), range() (end included), interval(),
    # tag(log, interval()); plain values are passed to every trial unchanged.
    params: dict[str, Any] | None = None
    # Explicit points instead of a product grid (a sparse grid, or a table of named variants):
    # a list of {override_key: value} mappings, optional "_label_" for the report.
    points: list[Any] | None = None
    # A trial whose sweeper has not written a heartbeat for grace_period seconds is failed (and
    # rerun) by the next sweeper of the study; dead processes on this host are detected at once.
    heartbeat_interval: int = 20
    grace_period: int = 60
    report: ReportConfig = field(default_factory=ReportConfig)
    # Fused trials: up to this many trials that share the data set, teacher, batch size, seed and
    # epochs train as one job, with one batch stream and one teacher pass (1: every trial alone).
    fuse: int = 1


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="kdsweep_optuna", node=KDSweepOptunaSweeperConf,
             provider=PROVIDER)
    for name, node in (("tpe", TPESamplerConfig), ("random", RandomSamplerConfig),
                       ("grid", GridSamplerConfig), ("cmaes", CmaEsSamplerConfig),
                       ("nsgaii", NSGAIISamplerConfig)):
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider=PROVIDER)
    for name, node in (("none", NopPrunerConfig), ("median", MedianPrunerConfig),
                       ("hyperband", HyperbandPrunerConfig)):
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider=PROVIDER)


register()
