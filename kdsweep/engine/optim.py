"""Optimiser and learning-rate schedule from the ``schedule`` config group.

Schedules are torch's own schedulers, stepped once per *iteration* so that warmup is smooth even
when it lasts one epoch (wangziren1/knowledge_distill_on_mini-imagenet's "cosine + 1 warmup epoch" trick):

- ``step``: multi-step decay by ``gamma`` at ``milestones`` (the CIFAR recipe: x0.1 at 150/180/210
  of 240 epochs);
- ``cosine``: cosine annealing to ``min_lr``;
- either with ``warmup_epochs`` of linear warmup from ``warmup_start_factor * lr``.

Milestones below 1 are fractions of ``epochs`` (0.625 of 240 = 150), so a preset keeps its shape
when a demo shortens ``schedule.epochs``; milestones >= 1 are epochs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
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

from kdsweep.engine.dot import DEFAULT_DELTA, DOT
from kdsweep.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw", "dot")
SCHEDULES = ("step", "cosine", "constant")


@dataclass
class ScheduleConf:
    """The ``schedule`` config group's schema and defaults (presets in ``conf/schedule/``)."""

    name: str = "cosine"                 # step | cosine | constant: the LR schedule's shape
    epochs: int = 8
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "sgd"               # sgd | adamw | dot (DOT: kdsweep.engine.dot)
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    milestones: list[float] = field(default_factory=list)  # step: epochs, or fractions (< 1)
    gamma: float = 0.1                   # step: LR factor at each milestone
    min_lr: float = 0.0                  # cosine: final LR
    warmup_epochs: float = 0.0           # linear warmup, per iteration (may be a fraction)
    warmup_start_factor: float = 1e-3    # warmup starts at this fraction of lr
    dot_delta: float = DEFAULT_DELTA     # dot: task momentum - delta, distillation momentum + delta


def _with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {**asdict(ScheduleConf()), **dict(cfg)}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: Mapping[str, Any],
                    device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``params`` with the schedule's settings.

    On CUDA the fused implementations are used: they take a ``found_inf`` flag and skip a step
    whose loss was not finite on the device, with no host sync (the cohort sets the flag). SGD's
    momentum buffers are created as zeros up front so that a skipped *first* step leaves them
    valid; with dampening 0 this is bit for bit torch's own first step (``buf = grad``).
    """
    cfg = _with_defaults(cfg)
    name = str(cfg["optimizer"]).lower()
    lr, wd = float(cfg["lr"]), float(cfg["weight_decay"])
    params = list(params)
    fused = device is not None and device.type == "cuda"
    if name == "sgd":
        momentum = float(cfg["momentum"])
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=wd,
            nesterov=bool(cfg["nesterov"]), fused=fused or None)
        if fused and momentum:
            for p in params:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return opt
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=fused or None)
    if name == "dot":  # separate momenta for the task and the distillation gradients
        return DOT(params, lr=lr, momentum=float(cfg["momentum"]), delta=float(cfg["dot_delta"]),
                   weight_decay=wd, nesterov=bool(cfg["nesterov"]))
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
    cfg = _with_defaults(cfg)
    name = str(cfg["name"]).lower()
    epochs = int(cfg["epochs"])
    total = max(1, epochs * steps_per_epoch)
    warmup = round(float(cfg["warmup_epochs"]) * steps_per_epoch)
    warmup = min(warmup, total - 1) if warmup > 0 else 0
    rest = total - warmup
    if name == "step":
        main: LRScheduler = MultiStepLR(
            optimizer,
            milestones=[max(0, s - warmup) for s in
                        milestone_steps(cfg["milestones"] or [], epochs, steps_per_epoch)],
            gamma=float(cfg["gamma"]),
        )
    elif name == "cosine":
        eta_min = float(cfg["min_lr"])
        main = CosineAnnealingLR(optimizer, T_max=max(1, rest), eta_min=eta_min)
    elif name == "constant":
        main = LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise ConfigError(f"schedule.name={name!r} is not a known schedule; valid: {', '.join(SCHEDULES)}")
    if warmup == 0:
        return main
    start = float(cfg["warmup_start_factor"])
    ramp = LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])
