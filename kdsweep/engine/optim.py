"""Optimiser and learning-rate schedule from the ``schedule`` config group.

Schedules are torch's own schedulers, stepped once per *iteration* so that warmup is smooth even
when it lasts one epoch (seed 003's "cosine + 1 warmup epoch" trick):

- ``step``: multi-step decay by ``gamma`` at ``milestones`` (the CIFAR recipe: x0.1 at 150/180/210
  of 240 epochs);
- ``cosine``: cosine annealing to ``min_lr``;
- either with ``warmup_epochs`` of linear warmup from ``warmup_start_factor * lr``.

Milestones below 1 are fractions of ``epochs`` (0.625 of 240 = 150), so a preset keeps its shape
when a demo shortens ``schedule.epochs``; milestones >= 1 are epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from kdsweep.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = str(cfg.get("optimizer", "sgd")).lower()
    lr, wd = float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                               weight_decay=wd, nesterov=bool(cfg.get("nesterov", False)))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"schedule.optimizer={name!r} is not supported; valid: {', '.join(OPTIMIZERS)}")


def milestone_steps(milestones: Sequence[float], epochs: int, steps_per_epoch: int) -> list[int]:
    """Milestones (epochs, or fractions of ``epochs`` when < 1) as iteration counts."""
    out = []
    for m in milestones:
        m = float(m)
        epoch = m * epochs if 0 < m < 1 else m
        out.append(round(epoch * steps_per_epoch))
    return sorted(out)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any],
                    steps_per_epoch: int) -> LRScheduler:
    """The per-iteration LR schedule of ``cfg`` (see the module docstring)."""
    name = str(cfg.get("name", "step")).lower()
    epochs = int(cfg["epochs"])
    total = max(1, epochs * steps_per_epoch)
    warmup = round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    warmup = min(warmup, total - 1) if warmup > 0 else 0
    rest = total - warmup
    if name == "step":
        main: LRScheduler = MultiStepLR(
            optimizer,
            milestones=[max(0, s - warmup) for s in
                        milestone_steps(cfg.get("milestones", []), epochs, steps_per_epoch)],
            gamma=float(cfg.get("gamma", 0.1)),
        )
    elif name == "cosine":
        eta_min = float(cfg.get("min_lr", 0.0))
        main = CosineAnnealingLR(optimizer, T_max=max(1, rest), eta_min=eta_min)
    elif name == "constant":
        main = LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise ConfigError(f"schedule.name={name!r} is not a known schedule; valid: {', '.join(SCHEDULES)}")
    if warmup == 0:
        return main
    start = float(cfg.get("warmup_start_factor", 1e-3))
    ramp = LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
