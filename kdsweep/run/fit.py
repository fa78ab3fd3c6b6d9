"""Whether a cohort fits the device's memory, from the estimates of :mod:`kdsweep.engine.budget`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kdsweep.data import DataBundle
from kdsweep.engine import budget
from kdsweep.errors import ConfigError
from kdsweep.run.plan import Plan


def fit_in_memory(plans: Sequence[Plan], data: DataBundle, device: torch.device, main: bool,
                  teacher: Any) -> list[list[Plan]]:
    """The cohort, or its parts that fit the device's free memory (``train.fuse_memory``); the
    numbers are printed by the main process (``main``)."""
    if len(plans) == 1:
        return [list(plans)]
    x = next(iter(data.train))[0][:2]
    cfg = plans[0].cfg
    bs = int(cfg.schedule.batch_size)
    needs = [len(getattr(p.member, "peers", [None]))  # a PeerGroup trains several students
             * (1 + len(p.method.views))  # MLKD's strong view: a second graph kept for backward
             * budget.member_bytes(p.member.student, p.method.extra_parameters(),
                                   str(p.cfg.schedule.optimizer), bs, p.member.student, x)
             for p in plans]
    fixed = budget.teacher_bytes(teacher.model, teacher.model, x, bs) if teacher else 0
    room = int(budget.available_bytes(device) * budget.SAFETY) - fixed
    k = budget.fit_count(needs, room)
    if main:
        print(f"kdsweep: memory check: {len(plans)} runs need about "
              f"{budget.fmt_bytes(sum(needs) + fixed)} on {device.type}, "
              f"{budget.fmt_bytes(room + fixed)} is free: " + (
                  "one cohort" if k >= len(plans) else f"at most {k} at once"), flush=True)
    if k >= len(plans):
        return [list(plans)]
    if cfg.train.fuse_memory == "refuse":
        raise ConfigError(
            f"a cohort of {len(plans)} members needs about {budget.fmt_bytes(sum(needs) + fixed)} "
            f"on {device.type} but {budget.fmt_bytes(room + fixed)} is free: at most {k} fit; set "
            f"hydra.sweeper.fuse={k}, or train.fuse_memory=split to train it in parts")
    return [list(plans[i:i + k]) for i in range(0, len(plans), k)]
