"""The job side of a sweep: MLflow parent/child links and Optuna pruning reports.

The kdsweep Optuna sweeper (``hydra_plugins/``) launches each trial as an ordinary run with
``sweep.*`` overrides: the sweep's MLflow parent run id, and the Optuna storage, study name and
trial id. This module turns those into MLflow tags and into per-epoch ``trial.report`` calls, so
pruning works whether the trial runs in the sweeper's process or in another one (joblib, SLURM):
everything goes through the study's storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def parent_tags(sweep: Mapping[str, Any] | None) -> dict[str, str]:
    """MLflow tags that make this run a child of the sweep's parent run, plus the Optuna trial."""
    if not sweep:
        return {}
    tags: dict[str, str] = {}
    if sweep.get("parent_run_id"):
        tags["mlflow.parentRunId"] = str(sweep["parent_run_id"])
    if sweep.get("study_name"):
        tags["optuna.study"] = str(sweep["study_name"])
    if sweep.get("trial_number") is not None:
        tags["optuna.trial"] = str(sweep["trial_number"])
    return tags


class TrialReporter:
    """Reports the objective of each epoch to an Optuna trial and asks whether to prune it."""

    def __init__(self, storage: str, study_name: str, trial_id: int):
        import optuna

        self._optuna = optuna
        study = optuna.load_study(study_name=study_name, storage=storage)
        # Prune with the sweep's pruner, stored with the study, not Optuna's default MedianPruner.
        from hydra_plugins.kdsweep_optuna_sweeper.pruning import pruner_for_study

        study.pruner = pruner_for_study(study)
        self.trial = optuna.trial.Trial(study, int(trial_id))

    @classmethod
    def from_cfg(cls, sweep: Mapping[str, Any] | None) -> TrialReporter | None:
        if not sweep or not sweep.get("storage") or sweep.get("trial_id") is None:
            return None
        return cls(str(sweep["storage"]), str(sweep["study_name"]), int(sweep["trial_id"]))

    def report(self, value: float, step: int) -> None:
        """Record ``value`` at ``step``; raise ``optuna.TrialPruned`` if the pruner says so."""
        self.trial.report(float(value), int(step))
        if self.trial.should_prune():
            raise self._optuna.TrialPruned(f"pruned at epoch {step} with objective {value:.4g}")
