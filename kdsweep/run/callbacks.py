"""The per-epoch behaviours of a run, as engine callbacks, each testable alone.

Order per epoch (the pipeline attaches them so): checkpoints first (so a crash between writing
``last.pt`` and logging is repaired on resume), then the MLflow metrics, then the sweep's pruning
report, which may take the member out of its cohort.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdsweep.engine import Callback, Member, save_checkpoint
from kdsweep.errors import Pruned
from kdsweep.run.resume import PRUNED_TAG
from kdsweep.tracking import CONSTANT_PER_EPOCH, RunRecorder, epoch_metric_name


class Checkpoints(Callback):
    """``best.pt`` (weights of the best epoch) and ``last.pt`` (everything to resume)."""

    def __init__(self, folder: Path, *, every: int, epochs: int, header: Mapping[str, Any]):
        self.folder, self.every, self.epochs = Path(folder), int(every), int(epochs)
        self.header = dict(header)  # arch, num_classes, config (credentials masked)

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def on_epoch_end(self, member: Member, epoch: int, metrics: dict[str, float],
                     is_best: bool) -> None:
        if is_best:
            save_checkpoint(self.best, {**self.header, **member.best_weights(), "epoch": epoch + 1,
                                        "val_acc": metrics["val_acc"]})
        done = epoch + 1
        if self.every and (done % self.every == 0 or done == self.epochs):
            save_checkpoint(self.last, {**self.header, "epoch": done, "trainer": member.state_dict()})


def epoch_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """One epoch's values under the names MLflow groups into chart sections (``acc/val``, ...)."""
    return {epoch_metric_name(k): v for k, v in metrics.items()
            if k not in CONSTANT_PER_EPOCH and k != "epoch"}


class EpochMetrics(Callback):
    """Each epoch's metrics in the member's MLflow run, step = epoch number (from 1); values that
    do not change per epoch (the cohort's size) once, as params.

    ``logged``: epochs the run already holds (a resumed run that had logged epochs after its last
    checkpoint before it was killed): they are not logged again, so every step is there once. On
    the CPU the repeated epoch computes the same values bit for bit.
    """

    def __init__(self, recorder: RunRecorder, logged: set[int] | None = None,
                 params: set[str] | None = None):
        self.recorder = recorder
        self.logged = set(logged or ())
        self.constants_logged = bool(params and set(CONSTANT_PER_EPOCH) <= params)

    def on_epoch_end(self, member: Member, epoch: int, metrics: dict[str, float],
                     is_best: bool) -> None:
        if not self.constants_logged:
            self.recorder.log_params({k: metrics[k] for k in CONSTANT_PER_EPOCH if k in metrics})
            self.constants_logged = True
        if epoch + 1 not in self.logged:
            self.recorder.log_metrics(epoch_metrics(metrics), step=epoch + 1)
            self.logged.add(epoch + 1)


class PruningReports(Callback):
    """Reports the objective to the member's Optuna trial; a pruned member is tagged and stopped."""

    def __init__(self, reporter: Any, recorder: RunRecorder, metric: str = "val_acc"):
        self.reporter, self.recorder, self.metric = reporter, recorder, metric

    def on_epoch_end(self, member: Member, epoch: int, metrics: dict[str, float],
                     is_best: bool) -> None:
        try:
            self.reporter.report(metrics[self.metric], epoch + 1)
        except Pruned:
            self.recorder.set_tags({PRUNED_TAG: str(epoch + 1)})
            raise
