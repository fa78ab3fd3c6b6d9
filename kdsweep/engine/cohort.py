"""The training loop of a cohort: one batch stream and one teacher pass shared by every member.

One step::

    batch (x, y, idx) -> teacher(x) once, no_grad (logits, + features if any member reads them)
                      -> for each active member: its student(x), its method's loss terms,
                         backward, a step of its own optimiser and LR schedule (in its RNG stream)

Members share no parameters, so member k's gradients, weights and metrics are exactly those it
would have trained alone (``tests/test_cohort.py`` checks this bit for bit on the CPU). With
``train.horizontal`` the members of one architecture take their step as one vmapped model
(:mod:`kdsweep.engine.horizontal`): the same results within fp32 rounding. A member
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
from kdsweep.engine.distributed import (
    SINGLE,
    DistEnv,
    broadcast,
    sync_buffers,
    sync_parameters,
)
from kdsweep.engine.forward import Forward, limited
from kdsweep.engine.horizontal import StackedGroup, stack
from kdsweep.engine.member import ACTIVE, DIVERGED, DONE, FAILED, PRUNED, Member, StepContext
from kdsweep.errors import KDSweepError, Pruned
from kdsweep.methods import BuildContext
from kdsweep.models import ModelOutput

log = logging.getLogger(__name__)


class Cohort:
    """Trains ``members`` on ``data`` (with a frozen ``teacher`` when a member's method needs one)."""

    def __init__(self, members: Sequence[Member], data: Any, *, epochs: int, batch_size: int,
                 precision: Precision, teacher: torch.nn.Module | None = None,
                 teacher_arch: str | None = None, limit_train_batches: int | None = None,
                 limit_val_batches: int | None = None, progress: bool | None = None,
                 channels_last: bool = False, compile: bool = False, horizontal: bool = False,
                 dist_env: DistEnv = SINGLE, teacher_store: Any = None):
        if not members:
            raise ValueError("a cohort needs at least one member")
        self.members, self.data, self.epochs = list(members), data, int(epochs)
        # A method's pre-stage (AB, FT, FSP) runs before the main schedule: members share its
        # length (``method.init_epochs`` is a cohort setting), so the loop has one epoch count.
        inits = {m.init_epochs for m in self.members}
        if len(inits) > 1:
            raise ValueError(f"members of a cohort must share method.init_epochs; got {sorted(inits)}")
        self.init_epochs = inits.pop()
        self.total_epochs = self.init_epochs + self.epochs
        self.batch_size, self.precision = int(batch_size), precision
        self.limit_train, self.limit_val, self.progress = limit_train_batches, limit_val_batches, progress
        self.steps_per_epoch = min(len(data.train), limit_train_batches or len(data.train))
        device = next(self.members[0].student.parameters()).device
        # A host check of the loss each step is free on the CPU; on a GPU it would stall the queue,
        # so there the fused optimiser skips a non-finite step on the device (found_inf) and the
        # flag is read at the progress-bar refreshes and at the end of each epoch.
        self.step = StepContext(self.epochs, self.steps_per_epoch, precision,
                                1 if device.type == "cpu" else max(1, self.steps_per_epoch // 25),
                                device, dist_env)
        self.teacher_fwd, self.teacher_arch = None, teacher_arch
        # kdsweep.store.stream.StoredTeacher: the teacher's outputs read from the store, or
        # computed and written there (only when every member is served by stored outputs)
        self.teacher_store = teacher_store
        if teacher is not None and any(m.needs_teacher for m in self.members):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            teacher.to(memory_format=fmt).eval().requires_grad_(False)
            self.teacher_fwd = Forward(teacher, teacher_arch,
                                       any(m.needs_features for m in self.members), channels_last,
                                       compile)
        for m in self.members:
            m.attach(channels_last, compile)
        self._build()
        # train.horizontal: members of one architecture step as one vmapped model (GPUs)
        self.units: list[Any] = stack(self.members) if horizontal else list(self.members)

    @property
    def device(self) -> torch.device:
        return self.step.device

    def _build(self) -> None:
        """Each member's method builds its parts on one dry-run batch; then its optimiser."""
        x = next(iter(self.data.train))[0][:2]
        with torch.no_grad():
            t = self.teacher_fwd(x) if self.teacher_fwd is not None else None
        for m in self.members:
            ctx = BuildContext(num_train=self.data.num_train, num_classes=self.data.num_classes,
                               epochs=self.epochs, steps_per_epoch=self.steps_per_epoch,
                               train_labels=getattr(self.data, "train_labels", None),
                               batch_size=self.batch_size,
                               teacher_tap=self.teacher_fwd.tap if self.teacher_fwd else None,
                               teacher_arch=self.teacher_arch, student_arch=m.arch,
                               teacher_modes=("eval", "train"))
            m.build(x, t, ctx, self.step)
            for module in m.modules():  # data-parallel processes start from identical copies
                sync_parameters(module, self.step.dist)
                sync_buffers(module, self.step.dist)

    # ------------------------------------------------------------------------------- loop
    def fit(self) -> list[Member]:
        """Train every member from its ``start_epoch`` (0, or where its checkpoint left off) to the
        end; returns the members with their final status."""
        start = min((m.start_epoch for m in self.members if m.active), default=self.total_epochs)
        times: list[float] = []
        for epoch in range(start, self.total_epochs):
            active = [m for m in self.members if m.active and m.start_epoch <= epoch]
            if not active:
                continue
            began = time.perf_counter()
            stats = self._train_epoch(epoch, active)
            for m in active:
                if m.active:
                    self._end_epoch(m, epoch, stats[m])
            times.append(time.perf_counter() - began)
            if len(self.members) > 1:
                log.info("%s", self._cohort_line(epoch, times))
        for m in self.members:
            if m.active:
                m.stop(DONE)
        if self.teacher_store is not None:
            log.info("%s", self.teacher_store.summary())
        return self.members

    def _end_epoch(self, m: Member, epoch: int, stats: dict[str, float]) -> None:
        for module in m.modules():  # rank 0's BatchNorm statistics everywhere before validating
            sync_buffers(module, self.step.dist)
        stats.update(m.validate(self.data.val, self.precision, self.limit_val))
        is_best = m.result.add_epoch(epoch, stats)
        # One line per member for a single run; a cohort's members are one line per epoch
        # (_cohort_line; each member's numbers are in its MLflow run).
        log.log(logging.INFO if len(self.members) == 1 else logging.DEBUG,
                "%s %s: loss %.3f acc %.1f | val %.3f %.2f", m.name, self.epoch_label(epoch),
                stats["train_loss"], stats["train_acc"], stats["val_loss"], stats["val_acc"])
        try:
            for cb in m.callbacks:
                cb.on_epoch_end(m, epoch, stats, is_best)
        except Pruned as e:
            m.stop(PRUNED, e)
        except KDSweepError as e:
            m.stop(FAILED, e)
        if self.step.dist.active:  # rank 0 ran the callbacks (pruning): the others follow it
            status, error = broadcast((m.status, m.error), self.step.dist)
            if status != m.status:
                m.stop(status, error)

    def _cohort_line(self, epoch: int, times: Sequence[float]) -> str:
        """``epoch 2/4 (16 runs, 1 pruned): val acc best 26.50 t02 alpha=0.4 T=2, median 25.1 |
        12 s/epoch, ETA 0:24``: the whole cohort in one line."""
        done = [m for m in self.members if m.result.history]
        accs = sorted(m.result.history[-1]["val_acc"] for m in done)
        best = max(done, key=lambda m: m.result.history[-1]["val_acc"], default=None)
        stopped = {s: sum(m.status == s for m in self.members) for s in ("pruned", "diverged", "failed")}
        extra = "".join(f", {n} {s}" for s, n in stopped.items() if n)
        per = sum(times[-3:]) / len(times[-3:])
        left = per * (self.total_epochs - epoch - 1)
        head = f"{self.epoch_label(epoch)} ({len(self.members)} runs{extra})"
        if best is None:
            return f"{head} | {per:.0f} s/epoch"
        name = best.name.split(" (", 1)[0]
        return (f"{head}: val acc best {best.result.history[-1]['val_acc']:.2f} {name}, median "
                f"{accs[len(accs) // 2]:.1f} | {per:.0f} s/epoch, ETA {int(left // 60)}:"
                f"{int(left % 60):02d}")

    def _views(self, live: Sequence[Member]) -> dict[str, Tensor]:
        """The batch's other views that live members read (MLKD's strong view), made once for the
        cohort by the batch stream (:mod:`kdsweep.data.views`); none when no member reads one."""
        names = dict.fromkeys(v for m in live for v in m.method.views)
        return {v: self.data.train.view(v) for v in names}

    def _teacher_out(self, x: Tensor, active: Sequence[Member],
                     views: dict[str, Tensor] | None = None, i: int = -1) -> ModelOutput | None:
        if self.teacher_fwd is None or not any(m.needs_teacher for m in active):
            return None
        if self.teacher_store is not None:  # batch i of this epoch, stored, else computed
            out = self.teacher_store.get(i)
            if out is None:
                self.teacher_fwd.model.eval()
                with torch.no_grad(), self.precision.autocast():
                    out = self.teacher_fwd(x)
                out = self.teacher_store.put(i, out)  # (the top-k form: what readers get)
            return out
        # OFD's reference code runs the teacher's BatchNorm on batch statistics while training
        # (method.teacher_bn=train); members that share a teacher pass share that mode
        # (kdsweep.config.cohort). Outputs then depend on the batch alone: resume stays exact.
        train_bn = any(getattr(m.method, "teacher_mode", "eval") == "train" for m in active)
        self.teacher_fwd.model.train(train_bn)
        with torch.no_grad(), self.precision.autocast():
            out = self.teacher_fwd(x)
            wanted = {v for m in active if m.needs_teacher for v in m.method.views}
            out.views = {v: self.teacher_fwd(t) for v, t in (views or {}).items() if v in wanted}
            return out

    def epoch_label(self, epoch: int) -> str:
        """``epoch 3/240``, or ``pre-stage 2/30`` for the first ``init_epochs`` epochs."""
        if epoch < self.init_epochs:
            return f"pre-stage {epoch + 1}/{self.init_epochs}"
        return f"epoch {epoch - self.init_epochs + 1}/{self.epochs}"

    def _shared_prestage(self, epoch: int, active: list[Member]) -> dict[Member, Member]:
        """follower -> leader for the members whose pre-stage epoch is the same computation (FT's
        paraphraser, or AB's connectors and student, of trials that differ in main-stage weights
        only): the leader trains it, the followers take its state (:meth:`Member.copy_prestage`)."""
        if epoch >= self.init_epochs or len(active) < 2:
            return {}
        leaders: dict[str, Member] = {}
        followers = {}
        for m in active:
            leader = leaders.setdefault(m.prestage_digest(), m)
            if leader is not m:
                followers[m] = leader
        if followers and epoch == min(m.start_epoch for m in active):
            log.info("pre-stage: %d of %d runs train it, the others take their results (same "
                     "pre-stage, same state)", len(active) - len(followers), len(active))
        return followers

    def _train_epoch(self, epoch: int, active: list[Member]) -> dict[Member, dict[str, float]]:
        for m in active:
            m.begin_epoch(self.device, epoch)
        followers = self._shared_prestage(epoch, active)
        stepping = [m for m in active if m not in followers]
        self.data.train.set_epoch(epoch)
        if self.teacher_store is not None:
            self.teacher_store.begin_epoch(epoch)
        bar = tqdm(total=self.steps_per_epoch, desc=self.epoch_label(epoch),
                   disable=None if self.progress is None else not self.progress, leave=False,
                   unit="batch", ncols=80, bar_format="{desc} {percentage:3.0f}%|{bar:12}| "
                   "{n_fmt}/{total_fmt} {postfix}")
        refresh = max(1, self.steps_per_epoch // 25)
        seen, start = 0, time.perf_counter()
        for i, (x, y, idx) in enumerate(limited(self.data.train, self.limit_train)):
            live = [m for m in stepping if m.active]
            if not live:
                break
            views = self._views(live)
            t_out = self._teacher_out(x, live, views, i)
            for unit in self.units:
                if isinstance(unit, StackedGroup):
                    unit.train_step(x, y, idx, t_out, epoch, self.step, among=live, views=views)
                elif unit in live:
                    unit.train_step(x, y, idx, t_out, epoch, self.step, views=views)
            seen += y.numel()
            bar.update(1)
            last = i + 1 == self.steps_per_epoch
            if (i + 1) % self.step.sync_every == 0 or last:
                for m in live:
                    m.check_finite(epoch)
            if (i + 1) % refresh == 0 or last:
                bar.set_postfix_str(self._postfix(live, seen, time.perf_counter() - start))
        for m in stepping:  # a non-finite step between the last check and the epoch's end
            m.check_finite(epoch)
        for m, leader in followers.items():
            m.copy_prestage(leader)
        if self.teacher_store is not None:
            self.teacher_store.end_epoch()
        seconds = time.perf_counter() - start
        bar.close()
        shared = {"images_per_s": seen * self.step.dist.world / max(seconds, 1e-9),
                  "epoch_time_s": seconds, "cohort_size": float(len(active))}
        return {m: {**m.epoch_stats(seen, self.step.dist, epoch), **shared}
                for m in active if m.active}

    @staticmethod
    def _postfix(live: Sequence[Member], seen: int, elapsed: float) -> str:
        n = max(1, len(live) * max(seen, 1))
        loss = sum(float(m.sums.loss) for m in live) / n
        acc = sum(float(m.sums.correct) for m in live) / n
        size = f" n={len(live)}" if len(live) > 1 else ""
        return f"loss {loss:.3f} acc {100 * acc:.1f}{size} {seen / max(elapsed, 1e-9):.0f}img/s"

    def close(self) -> None:
        for m in self.members:
            m.close()
        if self.teacher_fwd is not None:
            self.teacher_fwd.close()


__all__ = ["ACTIVE", "DIVERGED", "DONE", "FAILED", "PRUNED", "Cohort"]
