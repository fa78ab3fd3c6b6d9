"""The sweep's settings (``hydra.sweeper.*``) and what the launching framework provides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsweep.errors import SweepError


@dataclass
class Settings:
    """The sweeper's options (``hydra.sweeper.*``), as plain values."""

    sampler: dict[str, Any]
    pruner: dict[str, Any]
    direction: str
    storage: str | None
    study_name: str | None
    study_dir: str | None
    n_trials: int | None
    n_jobs: int
    max_failure_rate: float
    params: Any
    points: Any
    heartbeat_interval: int
    grace_period: int
    report: dict[str, Any]
    fuse: int = 1


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
    if s.direction not in ("maximize", "minimize"):
        raise SweepError(f"hydra.sweeper.direction={s.direction!r} must be maximize or minimize")
    if s.n_jobs < 1:
        raise SweepError(f"hydra.sweeper.n_jobs={s.n_jobs} must be >= 1")
    if s.fuse < 1:
        raise SweepError(f"hydra.sweeper.fuse={s.fuse} must be >= 1 (1: every trial its own job)")
    if not 0.0 <= s.max_failure_rate <= 1.0:
        raise SweepError(f"hydra.sweeper.max_failure_rate={s.max_failure_rate} must be in [0, 1]")
    if s.heartbeat_interval < 1 or s.grace_period <= s.heartbeat_interval:
        raise SweepError("hydra.sweeper: need heartbeat_interval >= 1 and grace_period > "
                         "heartbeat_interval")
