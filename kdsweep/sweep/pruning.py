"""The sweep's pruner, stored with the study so that trials in any process use the same one.

The sweeper writes the pruner config (``hydra.sweeper.pruner``: ``_target_`` + arguments) to the
study's user attribute ``kdsweep_pruner``. A trial (the job side, ``kdsweep.sweeping``) loads the
study by name and must prune with that pruner, not Optuna's default ``MedianPruner()``::

    study = optuna.load_study(study_name=name, storage=url)
    study.pruner = pruner_for_study(study)

Only classes of ``optuna.pruners`` are built; nothing else named in a config is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STUDY_ATTR = "kdsweep_pruner"


def make_pruner(spec: Mapping[str, Any] | None) -> Any:
    """``{"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2}`` -> the pruner."""
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    kwargs = {k: v for k, v in dict(spec).items() if k != "_target_"}
    target = str(spec.get("_target_", "optuna.pruners.NopPruner"))
    module, _, name = target.rpartition(".")
    if module != "optuna.pruners" or not hasattr(optuna.pruners, name):
        raise ValueError(f"hydra.sweeper.pruner._target_={target!r}: only optuna.pruners.* "
                         "classes are allowed (none, median, hyperband, ...)")
    return getattr(optuna.pruners, name)(**kwargs)


def pruner_for_study(study: Any) -> Any:
    """The pruner the sweep configured for ``study`` (NopPruner when it set none)."""
    return make_pruner(study.user_attrs.get(STUDY_ATTR))
