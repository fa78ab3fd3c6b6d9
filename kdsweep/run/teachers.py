"""Finding the teacher of a distillation run: a checkpoint, a finished MLflow run, or train one.

Order: ``teacher.checkpoint=PATH`` if given; else the best finished ``ce`` run of the teacher's
architecture on the same data set (tags ``method=ce``, ``student=ARCH``, ``dataset=NAME``,
``num_classes=N``) in the run's MLflow experiment, whose ``checkpoints/best.pt`` artifact is loaded;
else a ``ce`` run of that architecture is trained first (its own MLflow run). A file lock per
(data set, architecture, classes) makes parallel runs wait for one teacher instead of each training
their own; the lookup is repeated after the lock is taken.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
from filelock import FileLock
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from torch import nn

from kdsweep.engine import load_checkpoint, load_model_weights
from kdsweep.errors import CheckpointError
from kdsweep.models import create_model
from kdsweep.tracking import find_best_run, retry

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoints/best.pt"


@dataclass
class Teacher:
    model: nn.Module
    arch: str
    source: str  # "checkpoint" | "mlflow" | "trained"
    path: str  # checkpoint file or artifact URI
    run_id: str | None = None


def teacher_filters(arch: str, dataset: str, num_classes: int) -> dict[str, str]:
    return {"method": "ce", "student": arch, "dataset": dataset, "num_classes": str(num_classes)}


def _load(arch: str, num_classes: int, path: str, source: str) -> nn.Module:
    model = create_model(arch, num_classes=num_classes)
    load_model_weights(model, load_checkpoint(path), arch=arch, num_classes=num_classes, source=source)
    return model


def _from_run(client: MlflowClient, run_id: str, arch: str, num_classes: int) -> Teacher:
    uri = f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="kdsweep-teacher-") as tmp:
        try:
            path = retry(client.download_artifacts, run_id, CHECKPOINT_ARTIFACT, tmp)
        except Exception as e:  # MLflow raises several types for a missing artifact
            raise CheckpointError(f"teacher run {run_id} has no readable {CHECKPOINT_ARTIFACT}: {e}") from None
        model = _load(arch, num_classes, path, uri)
    return Teacher(model, arch, "mlflow", uri, run_id)


def load_recorded(client: MlflowClient, tags: dict[str, str], arch: str, num_classes: int) -> Teacher:
    """The teacher a (resumed) run recorded in its MLflow tags, so a resume uses the same one."""
    source, path, run_id = tags.get("teacher_source"), tags.get("teacher_path", ""), tags.get("teacher_run_id")
    if source == "checkpoint":
        return Teacher(_load(arch, num_classes, path, path), arch, "checkpoint", path)
    if source in ("mlflow", "trained") and run_id:
        teacher = _from_run(client, run_id, arch, num_classes)
        teacher.source = source
        return teacher
    raise CheckpointError(f"the run to resume recorded no usable teacher (teacher_source={source!r})")


@dataclass(frozen=True)
class TeacherRequirements:
    """What a teacher found in MLflow must satisfy (``teacher.min_val_acc``,
    ``teacher.same_schedule``), and the run's own schedule to compare it with."""

    schedule_key: str
    epochs: int
    min_val_acc: float | None = None
    same_schedule: bool = False

    def filters(self) -> list[str]:
        out = []
        if self.min_val_acc is not None:
            out.append(f"metrics.best_val_acc >= {float(self.min_val_acc)}")
        if self.same_schedule:
            out.append(f"tags.`{SCHEDULE_TAG}` = '{self.schedule_key}'")
        return out


SCHEDULE_TAG = "kdsweep.schedule_key"  # hash of a run's schedule config (teacher matching)


def schedule_key(cfg: Any) -> str:
    """A hash of the schedule (and seed): equal for runs trained on the same recipe."""
    blob = json.dumps({"schedule": OmegaConf.to_container(cfg.schedule, resolve=True),
                       "dataset": cfg.dataset.name}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _warn_if_short(run: Any, req: TeacherRequirements) -> None:
    """Say so loudly when the teacher found was trained much shorter than this run trains."""
    try:
        epochs = int(run.data.params.get("schedule.epochs", "0"))
    except ValueError:
        return
    if epochs and epochs * 2 <= req.epochs:
        acc = run.data.metrics.get("best_val_acc", float("nan"))
        print(f"kdsweep: WARNING: the teacher found in MLflow (run {run.info.run_id}, "
              f"{acc:.2f}% val acc) was trained for {epochs} epochs, this run trains for "
              f"{req.epochs}; pass teacher.same_schedule=true (train one on this schedule), "
              "teacher.min_val_acc=ACC, or teacher.checkpoint=PATH", flush=True)


def resolve_teacher(client: MlflowClient, *, arch: str, checkpoint: str | None, dataset: str,
                    num_classes: int, experiment_id: str, lock_dir: Path,
                    train: Callable[[], str], req: TeacherRequirements | None = None) -> Teacher:
    """Return the teacher model (on the CPU, weights loaded); ``train()`` trains one and returns
    its MLflow run id, and is called only when no checkpoint and no finished run exist."""
    if checkpoint:
        path = str(Path(checkpoint).expanduser())
        model = _load(arch, num_classes, path, path)
        log.info("teacher %s: checkpoint %s", arch, path)
        return Teacher(model, arch, "checkpoint", path)

    filters = teacher_filters(arch, dataset, num_classes)
    extra = req.filters() if req else []
    run = find_best_run(client, experiment_id, filters, "best_val_acc", extra)
    if run is None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_dir / f"teacher-{dataset}-{arch}-{num_classes}.lock"))
        with lock:  # another process may have trained it meanwhile
            run = find_best_run(client, experiment_id, filters, "best_val_acc", extra)
            if run is None:
                what = " that meets teacher.min_val_acc/same_schedule" if extra else ""
                print(f"kdsweep: no finished 'ce' run of teacher {arch} on {dataset}{what} in "
                      f"MLflow: training one first (its own MLflow run)", flush=True)
                run_id = train()
                teacher = _from_run(client, run_id, arch, num_classes)
                teacher.source = "trained"
                return teacher
    acc = run.data.metrics.get("best_val_acc")
    log.info("teacher %s: MLflow run %s (best val acc %s)", arch, run.info.run_id, acc)
    if req is not None:
        _warn_if_short(run, req)
    return _from_run(client, run.info.run_id, arch, num_classes)
