"""The sweep's settings (``hydra.sweeper.*``) and what the launching framework provides.

:class:`Settings` is the one declaration of the sweeper's options: each one's name, type, default
and meaning, here once; :func:`check_settings` checks their values. The Hydra plugin's config node
(``hydra_plugins/kdsweep_optuna_sweeper/config.py``) is built from these fields, so an option added
here is at once ``hydra.sweeper.<name>``, typed by Hydra (a wrong type is refused at composition,
naming the key). Recipe: docs/architecture.md, "Add a sweeper option".
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from kdsweep.errors import SweepError


@dataclass
class ReportSettings:
    """``hydra.sweeper.report``: the Markdown tables and plots written to the study directory when
    a sweep ends (:func:`kdsweep.report.write_report`)."""

    enabled: bool = True
    metric: str = "best_val_acc"  # the child runs' MLflow metric shown in the tables
    rows: str | None = None       # override key of the table rows (default: first swept key)
    cols: str | None = None       # override key of the columns (default: second swept key)
    title: str | None = None
    label_header: str | None = None  # header of the label column of one-row-per-point tables
    published: str | None = None  # id of a published table (kdsweep.report.published) to compare


@dataclass
class Settings:
    """The sweeper's options (``hydra.sweeper.*``), as plain values.

    Types are ones Hydra's structured configs accept (int, float, bool, str, ``X | None``,
    ``dict[str, Any]``, ``list[Any]``, a nested dataclass): the plugin's config node is these
    fields. The keys are those of hydra-optuna-sweeper (``params``, ``sampler``, ``direction``,
    ``study_name``, ``storage``, ``n_trials``, ``n_jobs``, ``max_failure_rate``) so sweep configs
    port both ways; the additions are ``pruner``, ``points``, ``study_dir``, the heartbeat settings,
    ``report`` and ``fuse``.
    """

    # The Optuna sampler, {_target_: optuna.samplers.NAME, **arguments}; Hydra fills it from the
    # config group hydra/sweeper/sampler (auto, tpe, random, grid, cmaes, nsgaii). auto or empty:
    # a grid when every swept key is a list or choice(), else TPE (kdsweep/sweep/auto.py).
    sampler: dict[str, Any] = field(default_factory=dict)
    # The Optuna pruner, stored with the study; Hydra fills it from hydra/sweeper/pruner (none,
    # median, hyperband). Empty: no pruning.
    pruner: dict[str, Any] = field(default_factory=dict)
    # "maximize" (kdsweep's objective is the best validation accuracy) or "minimize".
    # hydra-optuna-sweeper defaults to minimize: set it explicitly in configs that must port.
    direction: str = "maximize"
    # Any SQLAlchemy URL (sqlite:///..., postgresql://...). null: sqlite:///<study_dir>/optuna.db
    storage: str | None = None
    # null: "sweep-<hash of the swept and fixed overrides>", so the same command resumes its study
    study_name: str | None = None
    # null: <launch dir>/multirun/<study_name>; holds the default storage, sweep.json and the report
    study_dir: str | None = None
    # The study's total: a re-run only runs what is missing. null: the whole grid, or 20 trials
    # for a search.
    n_trials: int | None = None
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
    # The tables and plots written when the sweep ends (hydra.sweeper.report.*).
    report: ReportSettings = field(default_factory=ReportSettings)
    # Fused trials: up to this many trials that share the data set, teacher, batch size, seed and
    # epochs train as one job, with one batch stream and one teacher pass (1: every trial alone).
    # auto: a grid's trials in one job per launcher slot (at most 64; split by the memory check),
    # 4 per job for a search.
    fuse: Any = "auto"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        """Settings from the options' plain values (a nested option, such as ``report``, as a
        mapping); an option left out, or a mapping option given as null, keeps its default."""
        kinds = typing.get_type_hints(cls)
        factories = {f.name: f.default_factory for f in fields(cls)}
        unknown = [k for k in options if k not in factories]
        if unknown:
            raise SweepError(f"hydra.sweeper.{unknown[0]}: not an option of the kdsweep sweeper "
                             f"(options: {', '.join(factories)})")
        values = {}
        for name, value in options.items():
            if value is None and factories[name] is not MISSING:
                continue
            kind = kinds[name]
            values[name] = kind(**value) if is_dataclass(kind) and isinstance(value, Mapping) \
                else value
        return cls(**values)


@dataclass
class Context:
    """What the launching framework (the Hydra plugin) provides."""

    launch_dir: Path
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    lock_dir: Path
    launcher: str
    prefix: str                                        # "sweep." or "++sweep."
    add_threads: bool                                  # parallel CPU jobs: set cpu_threads
    launch: Callable[[list[list[str]]], list[Outcome]]
    compose: Callable[[list[str]], Mapping[str, Any]] | None = None
    # The checks a run makes before any work, on a trial's composed config (raises one line).
    check: Callable[..., None] | None = None
    # Writes the sweep's report from its study dir (kdsweep.report.write_report).
    report: Callable[..., Any] | None = None


@dataclass
class Outcome:
    """What a job returned: its value (a number, or one entry per member trial when fused), or
    the error it raised."""

    value: Any = None
    error: BaseException | str | None = None


def check_settings(s: Settings) -> None:
    """The values Hydra's types let through but the sweep cannot use: one line each, naming
    ``hydra.sweeper.<option>`` (a new option's check goes here)."""
    if s.direction not in ("maximize", "minimize"):
        raise SweepError(f"hydra.sweeper.direction={s.direction!r} must be maximize or minimize")
    if s.n_jobs < 1:
        raise SweepError(f"hydra.sweeper.n_jobs={s.n_jobs} must be >= 1")
    if s.fuse != "auto" and (isinstance(s.fuse, bool) or not isinstance(s.fuse, int)
                             or s.fuse < 1):
        raise SweepError(f"hydra.sweeper.fuse={s.fuse!r} must be auto or an integer >= 1 (1: "
                         "every trial its own job)")
    if not 0.0 <= s.max_failure_rate <= 1.0:
        raise SweepError(f"hydra.sweeper.max_failure_rate={s.max_failure_rate} must be in [0, 1]")
    if s.heartbeat_interval < 1:
        raise SweepError(f"hydra.sweeper.heartbeat_interval={s.heartbeat_interval} must be >= 1")
    if s.grace_period <= s.heartbeat_interval:
        raise SweepError(f"hydra.sweeper.grace_period={s.grace_period} must be > "
                         f"hydra.sweeper.heartbeat_interval={s.heartbeat_interval}")
