"""The training loop: student forward, teacher forward, method loss terms, one optimiser step.

The loop knows methods only through :class:`kdsweep.methods.Method`: it sums the named terms the
method returns and logs each one. Feature taps are attached only when the method asks for features,
so logit-only methods (ce, kd) run the plain models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from kdsweep.engine.device import Precision
from kdsweep.engine.optim import build_optimizer, build_scheduler
from kdsweep.errors import TrainingDiverged
from kdsweep.methods import BuildContext, Method, StepInfo
from kdsweep.models import FeatureTap, ModelOutput

log = logging.getLogger(__name__)


class Forward:
    """Calls a model and wraps its output as :class:`ModelOutput`, with feature taps if asked."""

    def __init__(self, model: nn.Module, spec_name: str | None, features: bool,
                 channels_last: bool = False):
        self.model = model
        self.tap = FeatureTap(model, spec_name) if features and spec_name else None
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> ModelOutput:
        x = x.contiguous(memory_format=self.memory_format)
        return self.tap(x) if self.tap is not None else ModelOutput(logits=self.model(x))

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()


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
        """Final train accuracy minus final validation accuracy (seed 003's generalisation gap)."""
        return self.final_train_acc - self.final_val_acc


def _limited(loader: Iterable, limit: int | None) -> Iterable:
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
    for x, y, _ in _limited(loader, limit):
        with precision.autocast():
            logits = call(x).logits
        loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum").double().cpu()
        correct = correct + (logits.argmax(1) == y).sum().cpu()
        n += y.numel()
    model.train(was_training)
    if n == 0:
        return float("nan"), 0.0
    return float(loss_sum) / n, 100.0 * float(correct) / n


class Trainer:
    """Trains ``student`` with ``method`` (and a frozen ``teacher`` if the method needs one)."""

    def __init__(self, student: nn.Module, method: Method, data: Any, schedule: dict[str, Any], *,
                 student_arch: str, teacher: nn.Module | None = None, teacher_arch: str | None = None,
                 precision: Precision, limit_train_batches: int | None = None,
                 limit_val_batches: int | None = None, progress: bool | None = None,
                 channels_last: bool = False):
        self.student, self.teacher, self.method, self.data = student, teacher, method, data
        self.schedule, self.precision = schedule, precision
        self.epochs = int(schedule["epochs"])
        self.limit_train, self.limit_val = limit_train_batches, limit_val_batches
        self.steps_per_epoch = min(len(data.train), limit_train_batches or len(data.train))
        self.progress = progress
        if channels_last:  # NHWC convolutions: ~1.3x faster on CPU (oneDNN) and with AMP on GPU
            student.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        self.student_fwd = Forward(student, student_arch, method.needs_features, channels_last)
        self.teacher_fwd = (Forward(teacher, teacher_arch, method.needs_features, channels_last)
                            if teacher is not None and method.needs_teacher else None)
        if self.teacher_fwd is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self._build_method()  # before the optimiser: connectors created here must be optimised
        params = [p for p in list(student.parameters()) + list(method.parameters()) if p.requires_grad]
        self.optimizer = build_optimizer(params, schedule)
        self.scheduler = build_scheduler(self.optimizer, schedule, self.steps_per_epoch)
        self.scaler = precision.grad_scaler()
        self.global_step = 0
        self.result = FitResult()

    def _build_method(self) -> None:
        """Let the method create its shape-dependent parts from one dry-run batch."""
        x, _, _ = next(iter(self.data.train))
        x = x[:2]
        was = self.student.training
        self.student.eval()
        with torch.no_grad():
            s = self.student_fwd(x)
            t = self.teacher_fwd(x) if self.teacher_fwd is not None else None
        self.student.train(was)
        device = x.device
        self.method.build(s, t, BuildContext(
            num_train=self.data.num_train, num_classes=self.data.num_classes, epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch, train_labels=getattr(self.data, "train_labels", None),
            batch_size=int(self.schedule["batch_size"]),
            teacher_tap=self.teacher_fwd.tap if self.teacher_fwd is not None else None,
        ))
        self.method.to(device)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.student.train()
        self.method.train()
        self.data.train.set_epoch(epoch)
        # Running sums stay on the device: no host sync per step beyond the finiteness check.
        device = next(self.student.parameters()).device
        sums: dict[str, Tensor] = {}
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                   disable=self._bar_disabled(), leave=False, unit="batch", dynamic_ncols=True)
        refresh = max(1, self.steps_per_epoch // 25)
        start = time.perf_counter()
        for i, (x, y, idx) in enumerate(_limited(self.data.train, self.limit_train)):
            info = StepInfo(epoch=epoch, step=self.global_step, epochs=self.epochs,
                            steps_per_epoch=self.steps_per_epoch, indices=idx)
            with self.precision.autocast():
                s_out = self.student_fwd(x)
                if self.teacher_fwd is not None:
                    with torch.no_grad():
                        t_out = self.teacher_fwd(x)
                else:
                    t_out = None
                terms = self.method(s_out, t_out, y, info)
            loss = sum(terms.values())
            if not torch.isfinite(loss.detach()):  # checked before the step: weights stay clean
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                raise TrainingDiverged(
                    f"loss became {float(loss.detach())} at epoch {epoch + 1} step {i + 1} ({parts}); "
                    f"lower schedule.lr or the method's weights"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.global_step += 1
            bs = y.numel()
            loss_sum += loss.detach().double() * bs
            correct += (s_out.logits.detach().argmax(1) == y).sum()
            seen += bs
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double() * bs
            bar.update(1)
            if (i + 1) % refresh == 0 or i + 1 == self.steps_per_epoch:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}",
                                acc=f"{100.0 * float(correct) / seen:.1f}",
                                img_s=f"{seen / max(elapsed, 1e-9):.0f}")
        seconds = time.perf_counter() - start
        bar.close()
        seen = max(seen, 1)
        stats = {
            "train_loss": float(loss_sum) / seen,
            "train_acc": 100.0 * float(correct) / seen,
            "images_per_s": seen / max(seconds, 1e-9),
            "epoch_time_s": seconds,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        stats.update({f"loss_{k}": float(v) / seen for k, v in sums.items()})
        return stats

    def _bar_disabled(self) -> bool | None:
        # None lets tqdm decide: a bar on a terminal, quiet when stderr is not a TTY.
        return None if self.progress is None else not self.progress

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped (for ``last.pt``)."""
        return {"model": self.student.state_dict(), "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "global_step": self.global_step,
                "result": self.result.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["global_step"])
        self.result = FitResult.from_dict(state["result"])

    def fit(self, on_epoch_end: Callable[[int, dict[str, float], bool], None] | None = None,
            start_epoch: int = 0) -> FitResult:
        """Train epochs ``start_epoch..epochs-1``; ``on_epoch_end(epoch, metrics, is_best)`` after
        each, when ``self.result`` already includes that epoch. Resuming: load_state_dict first."""
        result = self.result
        for epoch in range(start_epoch, self.epochs):
            stats = self.train_epoch(epoch)
            stats["val_loss"], stats["val_acc"] = evaluate(self.student_fwd, self.data.val, self.precision,
                                                           self.limit_val)
            is_best = stats["val_acc"] > result.best_val_acc or result.best_epoch < 0
            if is_best:
                result.best_val_acc, result.best_epoch = stats["val_acc"], epoch
            result.final_val_acc, result.final_train_acc = stats["val_acc"], stats["train_acc"]
            result.history.append({"epoch": epoch, **stats})
            log.info("epoch %d/%d  train loss %.4f acc %.2f  val loss %.4f acc %.2f  lr %.4g  %.0f img/s",
                     epoch + 1, self.epochs, stats["train_loss"], stats["train_acc"],
                     stats["val_loss"], stats["val_acc"], stats["lr"], stats["images_per_s"])
            if on_epoch_end is not None:
                on_epoch_end(epoch, stats, is_best)
        return result

    def close(self) -> None:
        self.student_fwd.close()
        if self.teacher_fwd is not None:
            self.teacher_fwd.close()
