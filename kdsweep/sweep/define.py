"""What a study records about itself: its search space, sampler, pruner and direction (user
attributes, so that every sweeper of the study, and optuna-dashboard, reads the same)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna

from kdsweep.errors import SweepError
from kdsweep.sweep.pruning import STUDY_ATTR as PRUNER_ATTR
from kdsweep.tracking import mask_url

log = logging.getLogger(__name__)

DEFINITION_ATTR = "kdsweep_definition"


def define_study(study: optuna.Study, s: Any, space: Any, url: str) -> None:
    """Check the study's direction and record this sweep's definition on it."""
    if study.direction.name.lower() != s.direction:
        raise SweepError(f"study {study.study_name!r} in {mask_url(url)} was created to "
                         f"{study.direction.name.lower()}, not {s.direction}")
    definition = {"space": space.describe(), "sampler": s.sampler, "pruner": s.pruner,
                  "direction": s.direction}
    old = study.user_attrs.get(DEFINITION_ATTR)
    if old is not None and old.get("space") != definition["space"]:
        log.warning("study %s was run with another search space before; its trials stay in "
                    "the study (and count for samplers other than grid)", study.study_name)
    study.set_user_attr(DEFINITION_ATTR, definition)
    study.set_user_attr(PRUNER_ATTR, s.pruner)
    with warnings.catch_warnings():  # experimental in Optuna, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["best_val_acc"])


__all__ = ["DEFINITION_ATTR", "define_study"]
