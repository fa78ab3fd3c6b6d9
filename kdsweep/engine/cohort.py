"""The training loop of a cohort: one batch stream and one teacher pass shared by every member.

One step::

    batch (x, y, idx) -> teacher(x) once, no_grad (logits, + features if any member reads them)
                      -> for each active member: its student(x), its method's loss terms,
                         backward, a step of its own optimiser and LR schedule (in its RNG stream)

Members share no parameters, so member k's gradients, weights and metrics are exactly those it
would have trained alone (``tests/test_cohort.py`` checks this bit for bit on the CPU). A member
leaves the cohort when it is pruned, diverges or fails; the others go on. A single run is a cohort
of one: there is no second training loop. The loop knows methods only through
:class:`kdsweep.methods.Method` and never branches on a method's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from kdsweep.engine.device import Precision
from kdsweep.engine.forward import Forward, evaluate, limited
from kdsweep.engine.member import ACTIVE, DIVERGED, DONE, FAILED, PRUNED, Member
from kdsweep.engine.optim import build_optimizer, build_scheduler
from kdsweep.errors import KDSweepError, Pruned, TrainingDiverged
from kdsweep.methods import BuildContext, StepInfo
from kdsweep.models import ModelOutput

log = logging.getLogger(__name__)


class Cohort:
    """Trains ``members`` on ``data`` (with a frozen ``teacher`` when a member's method needs one)."""

    def __init__(self, members: Sequence[Member], data: Any, *, epochs: int, batch_size: int,
                 precision: Precision, teacher: torch.nn.Module | None = None,
                 teacher_arch: str | None = None, limit_train_batches: int | None = None,
                 limit_val_batches: int | None = None, progress: bool | None = None,
                 channels_last: bool = False):
        if not members:
            raise ValueError("a cohort needs at least one member")
        self.members, self.data, self.epochs = list(members), data, int(epochs)
        self.batch_size, self.precision = int(batch_size), precision
        self.limit_train, self.limit_val, self.progress = limit_train_batches, limit_val_batches, progress
        self.steps_per_epoch = min(len(data.train), limit_train_batches or len(data.train))
        self.device = next(self.members[0].student.parameters()).device
        # A host check of the loss each step is free on the CPU; on a GPU it would stall the queue,
        # so there the fused optimiser skips a non-finite step on the device (found_inf) and the
        # flag is read at the progress-bar refreshes and at the end of each epoch.
        self.sync_every = 1 if self.device.type == "cpu" else max(1, self.steps_per_epoch // 25)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        needs_teacher = any(m.method.needs_teacher for m in self.members)
        needs_features = any(m.method.needs_features for m in self.members)
        self.teacher_fwd = None
        if teacher is not None and needs_teacher:
            teacher.to(memory_format=fmt).eval().requires_grad_(False)
            self.teacher_fwd = Forward(teacher, teacher_arch, needs_features, channels_last)
        for m in self.members:
            m.student.to(memory_format=fmt)
            m.forward = Forward(m.student, m.arch, m.method.needs_features, channels_last)
        self._build()

    # ------------------------------------------------------------------------------ build
    def _build(self) -> None:
        """Let each method create its shape-dependent parts from one dry-run batch, then create
        each member's optimiser (after build: connectors created there must be optimised)."""
        x, _, _ = next(iter(self.data.train))
        x = x[:2]
        with torch.no_grad():
            t = self.teacher_fwd(x) if self.teacher_fwd is not None else None
        for m in self.members:
            with m.rng.active():
                was = m.student.training
                m.student.eval()
                with torch.no_grad():
                    s = m.forward(x)
                m.student.train(was)
                m.method.build(s, t if m.method.needs_teacher else None, BuildContext(
                    num_train=self.data.num_train, num_classes=self.data.num_classes,
                    epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                    train_labels=getattr(self.data, "train_labels", None),
                    batch_size=self.batch_size,
                    teacher_tap=self.teacher_fwd.tap if self.teacher_fwd is not None else None))
                m.method.to(self.device)
            params = [p for p in [*m.student.parameters(), *m.method.parameters()] if p.requires_grad]
            m.optimizer = build_optimizer(params, m.schedule, device=self.device)
            m.scheduler = build_scheduler(m.optimizer, m.schedule, self.steps_per_epoch)
            m.scaler = self.precision.grad_scaler()

    # ------------------------------------------------------------------------------- loop
    def fit(self) -> list[Member]:
        """Train every member from its ``start_epoch`` (0, or where its checkpoint left off) to the
        end; returns the members with their final status."""
        start = min((m.start_epoch for m in self.members if m.active), default=self.epochs)
        for epoch in range(start, self.epochs):
            active = [m for m in self.members if m.active and m.start_epoch <= epoch]
            if not active:
                continue
            stats = self._train_epoch(epoch, active)
            for m in active:
                if m.active:
                    self._end_epoch(m, epoch, stats[m])
        for m in self.members:
            if m.active:
                m.stop(DONE)
        return self.members

    def _end_epoch(self, m: Member, epoch: int, stats: dict[str, float]) -> None:
        stats["val_loss"], stats["val_acc"] = evaluate(m.forward, self.data.val, self.precision,
                                                       self.limit_val)
        is_best = m.result.add_epoch(epoch, stats)
        log.info("%s epoch %d/%d  train loss %.4f acc %.2f  val loss %.4f acc %.2f  lr %.4g",
                 m.name, epoch + 1, self.epochs, stats["train_loss"], stats["train_acc"],
                 stats["val_loss"], stats["val_acc"], stats["lr"])
        try:
            for cb in m.callbacks:
                cb.on_epoch_end(m, epoch, stats, is_best)
        except Pruned as e:
            m.stop(PRUNED, e)
        except KDSweepError as e:
            m.stop(FAILED, e)

    def _teacher_out(self, x: Tensor, active: Sequence[Member]) -> ModelOutput | None:
        if self.teacher_fwd is None or not any(m.method.needs_teacher for m in active):
            return None
        with torch.no_grad(), self.precision.autocast():
            return self.teacher_fwd(x)

    def _train_epoch(self, epoch: int, active: list[Member]) -> dict[Member, dict[str, float]]:
        for m in active:
            m.student.train()
            m.method.train()
        self.data.train.set_epoch(epoch)
        sums = {m: _Sums(self.device) for m in active}
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                   disable=None if self.progress is None else not self.progress, leave=False,
                   unit="batch", ncols=80, bar_format="{desc} {percentage:3.0f}%|{bar:12}| "
                   "{n_fmt}/{total_fmt} {postfix}")
        refresh = max(1, self.steps_per_epoch // 25)
        seen, start = 0, time.perf_counter()
        for i, (x, y, idx) in enumerate(limited(self.data.train, self.limit_train)):
            live = [m for m in active if m.active]
            if not live:
                break
            t_out = self._teacher_out(x, live)
            for m in live:
                self._step(m, x, y, idx, t_out, epoch, sums[m])
            seen += y.numel()
            bar.update(1)
            last = i + 1 == self.steps_per_epoch
            if (i + 1) % self.sync_every == 0 or last:
                for m in live:
                    self._check_finite(m, sums[m], epoch)
            if (i + 1) % refresh == 0 or last:
                bar.set_postfix_str(self._postfix(live, sums, seen, time.perf_counter() - start))
        for m in active:  # a non-finite step between the last check and the epoch's end
            if m.active:
                self._check_finite(m, sums[m], epoch)
        seconds = time.perf_counter() - start
        bar.close()
        return {m: sums[m].stats(m, seen, seconds, len(active)) for m in active}

    def _step(self, m: Member, x: Tensor, y: Tensor, idx: Tensor, t_out: ModelOutput | None,
              epoch: int, sums: _Sums) -> None:
        info = StepInfo(epoch=epoch, step=m.global_step, epochs=self.epochs,
                        steps_per_epoch=self.steps_per_epoch, indices=idx)
        with m.rng.active():
            with self.precision.autocast():
                s_out = m.forward(x)
                terms = m.method(s_out, t_out if m.method.needs_teacher else None, y, info)
            loss = sum(terms.values())
            bad = ~torch.isfinite(loss.detach())
            if self.sync_every == 1 and bool(bad):  # checked before the step: weights stay clean
                self._diverged(m, epoch, m.global_step, terms)
                return
            m.optimizer.zero_grad(set_to_none=True)
            m.scaler.scale(loss).backward()
            if self.sync_every > 1:
                m.optimizer.found_inf = bad.float()  # the fused optimiser skips a bad step
            m.scaler.step(m.optimizer)
            m.scaler.update()
            m.scheduler.step()
        sums.add(loss, s_out.logits, y, terms, bad, m.global_step)
        m.global_step += 1

    def _check_finite(self, m: Member, sums: _Sums, epoch: int) -> None:
        if m.active and sums.first_bad is not None and int(sums.first_bad) >= 0:
            self._diverged(m, epoch, int(sums.first_bad), None)

    def _diverged(self, m: Member, epoch: int, step: int, terms: dict[str, Tensor] | None) -> None:
        parts = (" (" + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items()) + ")"
                 if terms else "")
        m.stop(DIVERGED, TrainingDiverged(
            f"loss became non-finite at epoch {epoch + 1} step {step + 1}{parts}; the step was not "
            "applied; lower schedule.lr or the method's weights"))
        log.warning("%s: %s", m.name, m.error)

    @staticmethod
    def _postfix(live: Sequence[Member], sums: dict[Member, _Sums], seen: int, elapsed: float) -> str:
        loss = sum(float(sums[m].loss) for m in live) / max(1, len(live) * max(seen, 1))
        acc = sum(float(sums[m].correct) for m in live) / max(1, len(live) * max(seen, 1))
        size = f" n={len(live)}" if len(live) > 1 else ""
        return f"loss {loss:.3f} acc {100 * acc:.1f}{size} {seen / max(elapsed, 1e-9):.0f}img/s"

    def close(self) -> None:
        for m in self.members:
            if m.forward is not None:
                m.forward.close()
        if self.teacher_fwd is not None:
            self.teacher_fwd.close()


class _Sums:
    """Running sums of one member's epoch, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.terms: dict[str, Tensor] = {}
        self.first_bad: Tensor | None = None

    def add(self, loss: Tensor, logits: Tensor, y: Tensor, terms: dict[str, Tensor], bad: Tensor,
            step: int) -> None:
        bs = y.numel()
        self.loss += loss.detach().double() * bs
        self.correct += (logits.detach().argmax(1) == y).sum()
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v.detach().double() * bs
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def stats(self, m: Member, seen: int, seconds: float, cohort_size: int) -> dict[str, float]:
        n = max(seen, 1)
        out = {"train_loss": float(self.loss) / n, "train_acc": 100.0 * float(self.correct) / n,
               "images_per_s": seen / max(seconds, 1e-9), "epoch_time_s": seconds,
               "lr": m.optimizer.param_groups[0]["lr"], "cohort_size": float(cohort_size)}
        out.update({f"loss_{k}": float(v) / n for k, v in self.terms.items()})
        return out


__all__ = ["ACTIVE", "DIVERGED", "DONE", "FAILED", "PRUNED", "Cohort"]
