"""A member's own record and random stream: :class:`FitResult` (its epochs, best and final
accuracy) and :class:`RngStream` (its torch RNG state, swapped in around each of its steps)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


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


def tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) of every tensor in nested dicts/lists, in a fixed order."""
    if isinstance(tree, Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k in sorted(tree, key=str):
            yield from tensors(tree[k], f"{prefix}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from tensors(v, f"{prefix}/{i}")
