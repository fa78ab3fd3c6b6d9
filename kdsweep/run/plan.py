"""What the run pipeline knows about each member, filled in step by step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdsweep.engine import Member
from kdsweep.methods import Method
from kdsweep.run.resume import Previous
from kdsweep.tracking import RunRecorder, mask_tree


@dataclass
class Job:
    """One member to train: its composed config, output folder and command-line overrides."""

    cfg: DictConfig
    output_dir: Path
    overrides: list[str] = field(default_factory=list)
    label: str | None = None  # what this trial varies, for its run name (sweeps)

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)  # ``run(output_dir=...)`` takes a str as well


@dataclass
class RunResult:
    run_id: str
    status: str  # done | pruned | diverged | failed (kdsweep.engine)
    best_val_acc: float
    final_val_acc: float
    teacher_val_acc: float | None
    checkpoint: Path
    error: BaseException | None = None


@dataclass
class Plan:
    """Everything the pipeline knows about one member, filled in step by step."""

    job: Job
    method: Method
    composed: dict[str, Any]  # the resolved config, as plain containers
    key: str                  # run identity for resume
    previous: Previous | None = None
    finished: Any = None      # an MLflow run of this sweep trial's point that ended before
    recorder: RunRecorder | None = None
    member: Member | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def cfg(self) -> DictConfig:
        return self.job.cfg

    @property
    def masked(self) -> dict[str, Any]:
        """The composed config with every credential masked: what may be written anywhere."""
        return mask_tree(self.composed)
