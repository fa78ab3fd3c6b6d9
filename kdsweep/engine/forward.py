"""Calling a model: its output as :class:`ModelOutput` (with feature taps when asked), and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.engine.device import Precision
from kdsweep.models import FeatureTap, ModelOutput


class Forward:
    """Calls a model and wraps its output as :class:`ModelOutput`, with feature taps if asked.

    Taps (forward hooks, as torchdistill does) are attached only when a method reads features,
    so logit-only methods run the plain model.
    """

    def __init__(self, model: nn.Module, spec_name: str | None, features: bool,
                 channels_last: bool = False, compile: bool = False):
        self.model = model
        self.tap = FeatureTap(model, spec_name) if features and spec_name else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # torch.compile for logit-only calls (feature taps write to Python state from forward
        # hooks, which compiled graphs would break on). Dynamo caches compiled code per model
        # class, so the members of a cohort and later runs of the process reuse it.
        self.call = torch.compile(model) if compile and self.tap is None else model

    def __call__(self, x: Tensor) -> ModelOutput:
        x = x.contiguous(memory_format=self.memory_format)
        return self.tap(x) if self.tap is not None else ModelOutput(logits=self.call(x))

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()


def limited(loader: Iterable, limit: int | None) -> Iterator:
    """The first ``limit`` batches of ``loader`` (all of them when ``limit`` is None)."""
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield batch


@torch.no_grad()
def evaluate(forward: Callable[[Tensor], ModelOutput] | nn.Module, loader: Any, precision: Precision,
             limit: int | None = None) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) of a model over ``loader`` (eval mode)."""
    model = forward.model if isinstance(forward, Forward) else forward
    call = forward if isinstance(forward, Forward) else (lambda x: ModelOutput(model(x)))
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    n = 0
    for x, y, _ in limited(loader, limit):
        with precision.autocast():
            logits = call(x).logits
        loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum").double().cpu()
        correct = correct + (logits.argmax(1) == y).sum().cpu()
        n += y.numel()
    model.train(was_training)
    if n == 0:
        return float("nan"), 0.0
    return float(loss_sum) / n, 100.0 * float(correct) / n
