"""A member of a cohort: one student with its own method, optimiser, schedule, RNG stream and record.

A cohort (:mod:`kdsweep.engine.cohort`) trains several members in lock-step on one batch stream
with one teacher pass; a single run is a cohort of one. Members share no parameters, so each one's
gradients are exactly those of its own loss, and each draws random numbers (dropout, CRD's negative
sampling) from its own stream, so a member computes bit for bit what it would compute alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdsweep.methods import Method

ACTIVE, DONE, PRUNED, DIVERGED, FAILED = "active", "done", "pruned", "diverged", "failed"


@dataclass
class FitResult:
    best_val_acc: float = 0.0
    best_epoch: int = -1
    final_val_acc: float = 0.0
    final_train_acc: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
                "final_val_acc": self.final_val_acc, "final_train_acc": self.final_train_acc,
                "history": [dict(h) for h in self.history]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitResult:
        return cls(d["best_val_acc"], d["best_epoch"], d["final_val_acc"], d["final_train_acc"],
                   [dict(h) for h in d["history"]])

    @property
    def train_val_gap(self) -> float:
        """Final train accuracy minus final validation accuracy (the generalisation gap)."""
        return self.final_train_acc - self.final_val_acc

    def add_epoch(self, epoch: int, stats: dict[str, float]) -> bool:
        """Record one epoch's metrics; True when it is the best so far."""
        is_best = stats["val_acc"] > self.best_val_acc or self.best_epoch < 0
        if is_best:
            self.best_val_acc, self.best_epoch = stats["val_acc"], epoch
        self.final_val_acc, self.final_train_acc = stats["val_acc"], stats["train_acc"]
        self.history.append({"epoch": epoch, **stats})
        return is_best


class RngStream:
    """A member's own torch RNG state (CPU, and the CUDA device it trains on), swapped in and out."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer_cpu = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            self.cpu = torch.get_rng_state()
            torch.set_rng_state(outer_cpu)
            if self.cuda is not None:
                self.cuda = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "cuda": self.cuda}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cpu = state["cpu"]
        if state.get("cuda") is not None and self.device.type == "cuda":
            self.cuda = state["cuda"]


class Callback:
    """Per-epoch behaviour of a member (checkpoints, tracking, pruning reports), called by the
    cohort after the member's epoch is validated and recorded in ``member.result``.

    Raising :class:`kdsweep.errors.MemberStopped` (pruned) or any :class:`kdsweep.errors.KDSweepError`
    takes the member out of the cohort; the others go on.
    """

    def on_epoch_end(self, member: Member, epoch: int, metrics: dict[str, float],
                     is_best: bool) -> None:
        """Called once per epoch and member."""


class Member:
    """One student being trained; the cohort creates its optimiser and schedule in ``build``."""

    def __init__(self, name: str, student: nn.Module, method: Method, schedule: dict[str, Any], *,
                 arch: str, rng: RngStream, callbacks: Sequence[Callback] = ()):
        self.name, self.student, self.method, self.schedule = name, student, method, schedule
        self.arch, self.rng, self.callbacks = arch, rng, list(callbacks)
        self.status = ACTIVE
        self.error: BaseException | None = None
        self.start_epoch = 0
        self.global_step = 0
        self.result = FitResult()
        self.forward: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: Any = None

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def stop(self, status: str, error: BaseException | None = None) -> None:
        self.status, self.error = status, error

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped (for ``last.pt``)."""
        assert self.optimizer is not None
        return {"model": self.student.state_dict(), "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "global_step": self.global_step,
                "result": self.result.to_dict(), "rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self.student.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["global_step"])
        self.result = FitResult.from_dict(state["result"])
        self.rng.load_state_dict(state["rng"])
        self.start_epoch = len(self.result.history)
