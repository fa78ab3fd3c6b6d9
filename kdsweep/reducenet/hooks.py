"""ReduceNet's run hooks (:class:`kdsweep.run.hooks.RunHooks`): ``student.adapt`` on any run, and
the three-stage job driver for configs that set the ``reducenet`` node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdsweep.reducenet import adapt, stages
from kdsweep.run.hooks import RunHooks
from kdsweep.run.plan import Job, RunResult


class ReduceNetHooks(RunHooks):
    def check(self, cfg: Mapping[str, Any], method: Any) -> None:
        adapt.check(cfg, method)

    def prepare(self, student: Any, cfg: Mapping[str, Any], data: Any) -> dict[str, float]:
        return adapt.prepare(student, cfg, data)

    def finish(self, p: Any, data: Any, precision: Any, limit_val_batches: int | None) -> None:
        adapt.finish(p, data, precision, limit_val_batches)

    def owns(self, cfg: Mapping[str, Any]) -> bool:
        return cfg.get("reducenet") is not None  # experiment=reducenet sets it

    def check_job(self, cfg: Any, overrides: Sequence[str] = ()) -> None:
        stages.check(cfg, overrides)

    def run_job(self, cfg: Any, *, output_dir: str | Path, overrides: Sequence[str] = (),
                label: str | None = None) -> RunResult:
        return stages.run_reducenet(cfg, output_dir=output_dir, overrides=overrides, label=label)

    def run_cohort(self, jobs: Sequence[Job]) -> list[RunResult]:
        return stages.run_reducenet_cohort(jobs)
