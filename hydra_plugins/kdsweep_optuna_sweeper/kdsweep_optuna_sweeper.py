"""The Hydra plugin class. Hydra's plugin scan imports this module on every start, so the heavy
implementation (optuna, mlflow, sqlalchemy) is imported only when a sweep is instantiated."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from . import config as _config  # noqa: F401  (registers hydra/sweeper=kdsweep_optuna)


class KDSweepOptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: Any, storage: str | None,
                 study_name: str | None, study_dir: str | None, n_trials: int | None, n_jobs: int,
                 max_failure_rate: float, params: Any, points: Any, heartbeat_interval: int,
                 grace_period: int, report: Any) -> None:
        from ._impl import KDSweepOptunaSweeperImpl

        self.sweeper = KDSweepOptunaSweeperImpl(
            sampler=sampler, pruner=pruner, direction=direction, storage=storage,
            study_name=study_name, study_dir=study_dir, n_trials=n_trials, n_jobs=n_jobs,
            max_failure_rate=max_failure_rate, params=params, points=points,
            heartbeat_interval=heartbeat_interval, grace_period=grace_period, report=report)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
