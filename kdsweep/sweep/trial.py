"""The job side of a sweep: MLflow parent/child links and Optuna pruning reports.

The kdsweep Optuna sweeper launches each trial as an ordinary run with ``sweep.*`` overrides (the
sweep's MLflow parent run id, the study name and the trial number) and the study's storage URL in
the environment variable :data:`STORAGE_ENV` -- never in an override, a param or a file, since it
may hold a password. This module turns those into MLflow tags and into per-epoch reports, so
pruning works whether the trial runs in the sweeper's process or in another one (joblib, SLURM):
everything goes through the study's storage, with Optuna's public storage API.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kdsweep.errors import Pruned

STORAGE_ENV = "KDSWEEP_STUDY_STORAGE"


def parent_tags(sweep: Mapping[str, Any] | None) -> dict[str, str]:
    """MLflow tags that make this run a child of the sweep's parent run, plus the Optuna trial
    (the parent of a sweep of Hydra's own sweepers comes from the environment)."""
    sweep = sweep or {}
    tags: dict[str, str] = {}
    parent = sweep.get("parent_run_id") or os.environ.get("KDSWEEP_PARENT_RUN_ID")
    if parent:
        tags["mlflow.parentRunId"] = str(parent)
    if sweep.get("study_name"):
        tags["optuna.study"] = str(sweep["study_name"])
    if sweep.get("trial_number") is not None:
        tags["optuna.trial"] = str(sweep["trial_number"])
    return tags


class TrialReporter:
    """Reports the objective of each epoch to an Optuna trial and asks the sweep's pruner."""

    def __init__(self, storage_url: str, study_name: str, trial_number: int):
        import optuna

        from kdsweep.sweep.pruning import pruner_for_study
        from kdsweep.sweep.storage import make_storage

        self.storage = make_storage(storage_url)
        self.study = optuna.load_study(study_name=study_name, storage=self.storage)
        # Prune with the sweep's pruner, stored with the study, not Optuna's default MedianPruner.
        self.pruner = pruner_for_study(self.study)
        study_id = self.storage.get_study_id_from_name(study_name)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.number = trial_number

    @classmethod
    def from_cfg(cls, sweep: Mapping[str, Any] | None) -> TrialReporter | None:
        """A reporter when this run is a trial of a pruning sweep (the storage URL is set)."""
        url = os.environ.get(STORAGE_ENV)
        if not sweep or not url or sweep.get("trial_number") is None or not sweep.get("study_name"):
            return None
        return cls(url, str(sweep["study_name"]), int(sweep["trial_number"]))

    def report(self, value: float, step: int) -> None:
        """Record ``value`` at ``step``; raise :class:`kdsweep.errors.Pruned` if the pruner says so."""
        self.storage.set_trial_intermediate_value(self.trial_id, int(step), float(value))
        frozen = self.storage.get_trial(self.trial_id)
        if self.pruner.prune(self.study, frozen):
            raise Pruned(f"pruned at epoch {step} with objective {value:.4g}", int(step))
