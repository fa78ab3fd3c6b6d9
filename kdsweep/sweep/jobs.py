"""From claimed trials to launcher jobs: the overrides of each job, and fused jobs.

With ``fuse=N`` (the sweeper's option), trials that may share a batch stream and a teacher pass
(equal :func:`kdsweep.config.cohort.cohort_key`: same data set, teacher, batch size, seed, epochs,
...) are put into one job of up to N members, which trains them as one cohort
(:mod:`kdsweep.run.job`). Each member is still a whole trial: its own Optuna trial and MLflow run.
The composed config of each member goes into a small JSON file (credentials masked) that the job
reads; only its path travels as an override.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdsweep.config.cohort import cohort_key, needs_teacher
from kdsweep.sweep.space import format_value, point_text
from kdsweep.sweep.storage import TrialRef
from kdsweep.tracking import mask_tree


@dataclass
class JobSpec:
    """One launcher job: its overrides and the trials it runs (one, or several when fused)."""

    overrides: list[str]
    trials: list[TrialRef]

    @property
    def fused(self) -> bool:
        return len(self.trials) > 1


@dataclass
class JobContext:
    fixed: list[str]                 # the sweep's fixed overrides (every job)
    parent_run_id: str
    study_name: str
    prefix: str                      # "sweep." (or "++sweep." for configs without the node)
    n_jobs: int
    add_threads: bool                # parallel jobs on one machine: set cpu_threads
    sweep_dir: Path


def trial_label(t: TrialRef) -> str:
    """What a trial varies, for its run name: ``t05 alpha=0.4 T=4`` (or ``t05 <point label>``)."""
    return f"t{t.number:02d} {point_text(t.params, t.label)}".strip()


def trial_overrides(t: TrialRef, ctx: JobContext) -> list[str]:
    """The overrides of a job that runs trial ``t`` alone."""
    pre = ctx.prefix
    ov = [*ctx.fixed, *t.overrides, f"{pre}parent_run_id={ctx.parent_run_id}",
          f"{pre}study_name={format_value(ctx.study_name)}", f"{pre}trial_number={t.number}",
          f"{pre}label={format_value(trial_label(t))}"]
    if ctx.add_threads and not any(o.split("=", 1)[0].lstrip("+") == "cpu_threads" for o in ov):
        # Parallel jobs share the cores: oversubscribed OpenMP threads were measured 12x slower
        # in total here (docs/benchmarks.md).
        ov.append(f"cpu_threads={max(1, (os.cpu_count() or 1) // ctx.n_jobs)}")
    return ov


def plan_jobs(trials: Sequence[TrialRef], fuse: int, ctx: JobContext,
              compose: Callable[[list[str]], Mapping[str, Any]] | None) -> list[JobSpec]:
    """Jobs for ``trials``: one per trial, or fused in groups of up to ``fuse`` compatible trials."""
    if fuse <= 1 or len(trials) <= 1 or compose is None:
        return [JobSpec([*trial_overrides(t, ctx), f"hydra.sweep.subdir={t.number}"], [t])
                for t in trials]
    # Grouped by what members share; a member without a teacher (ce) joins a group of the same
    # data stream whatever its teacher.
    groups: dict[str, dict[str, list[tuple[TrialRef, Mapping[str, Any]]]]] = {}
    for t in trials:
        cfg = compose(trial_overrides(t, ctx))
        teacher = cohort_key(cfg) if needs_teacher(cfg) else ""
        groups.setdefault(cohort_key(cfg, teacher=False), {}).setdefault(teacher, []).append((t, cfg))
    jobs: list[JobSpec] = []
    for by_teacher in groups.values():
        free = by_teacher.pop("", [])
        lists = list(by_teacher.values()) or [[]]
        lists[0] = free + lists[0]
        for members in lists:
            for i in range(0, len(members), fuse):
                jobs.append(_fused_job(members[i:i + fuse], ctx))
    return jobs


def _fused_job(members: Sequence[tuple[TrialRef, Mapping[str, Any]]], ctx: JobContext) -> JobSpec:
    first = members[0][0]
    if len(members) == 1:
        return JobSpec([*trial_overrides(first, ctx), f"hydra.sweep.subdir={first.number}"], [first])
    folder = ctx.sweep_dir / "fused"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"job-{first.number}.json"
    spec = {"members": [{"number": t.number, "label": trial_label(t), "overrides": t.overrides,
                         "config": mask_tree({k: v for k, v in cfg.items() if k != "hydra"})}
                        for t, cfg in members]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=1, default=str))
    os.replace(tmp, path)
    numbers = [t.number for t, _ in members]
    ov = [*trial_overrides(first, ctx), f"{ctx.prefix}members_file={format_value(str(path))}",
          f"hydra.sweep.subdir=fused-{numbers[0]}-{numbers[-1]}"]
    return JobSpec(ov, [t for t, _ in members])
