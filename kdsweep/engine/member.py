"""A member of a cohort: one student with its own method, optimiser, schedule, RNG stream and record.

A cohort (:mod:`kdsweep.engine.cohort`) trains several members in lock-step on one batch stream
with one teacher pass; a single run is a cohort of one. Members share no parameters, so each one's
gradients are exactly those of its own loss, and each draws random numbers (dropout, CRD's negative
sampling) from its own stream, so a member computes bit for bit what it would compute alone.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdsweep.engine.device import Precision
from kdsweep.engine.distributed import SINGLE, DistEnv, any_true, average_gradients, sum_
from kdsweep.engine.dot import DOT
from kdsweep.engine.forward import Forward, evaluate
from kdsweep.engine.optim import build_optimizer, build_scheduler
from kdsweep.engine.state import FitResult, RngStream, tensors
from kdsweep.errors import ConfigError, TrainingDiverged
from kdsweep.methods import BuildContext, Method, StepInfo, hparams
from kdsweep.models import ModelOutput, get_spec, resolve_module

ACTIVE, DONE, PRUNED, DIVERGED, FAILED = "active", "done", "pruned", "diverged", "failed"


def student_body(student: nn.Module, arch: str) -> list[nn.Parameter]:
    """The student's parameters except its classifier's (RepDistiller's ``get_feat_modules()``):
    the classifier is the module whose input is the pooled embedding (``features.pooled``)."""
    spec = get_spec(arch)
    head = set()
    if spec.features is not None:
        head = {id(p) for p in resolve_module(student, spec.features.pooled).parameters()}
    return [p for p in student.parameters() if id(p) not in head]


@dataclass(frozen=True)
class StepContext:
    """What a member needs to know about the cohort's loop to take a step."""

    epochs: int
    steps_per_epoch: int
    precision: Precision
    sync_every: int  # 1: check the loss on the host each step (CPU); >1: flag on the device (GPU)
    device: torch.device
    dist: DistEnv = SINGLE  # data-parallel processes (kdsweep.engine.distributed)


class Sums:
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

    def stats(self, seen: int, dist_env: DistEnv = SINGLE) -> dict[str, float]:
        n = max(float(sum_(torch.tensor(float(seen)), dist_env)), 1.0)
        out = {"train_loss": float(sum_(self.loss, dist_env)) / n,
               "train_acc": 100.0 * float(sum_(self.correct, dist_env)) / n}
        out.update({f"loss_{k}": float(sum_(torch.as_tensor(v), dist_env)) / n
                    for k, v in self.terms.items()})
        return out


def diverged(epoch: int, step: int, terms: dict[str, Tensor] | None) -> TrainingDiverged:
    parts = (" (" + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items()) + ")"
             if terms else "")
    return TrainingDiverged(f"loss became non-finite at epoch {epoch + 1} step {step + 1}{parts}; "
                            "the step was not applied; lower schedule.lr or the method's weights")


@dataclass
class Pending:
    """One member's loss of one step, computed and not yet applied."""

    loss: Tensor
    logits: Tensor
    y: Tensor
    terms: dict[str, Tensor]
    bad: Tensor


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
    """One student being trained, and one record (MLflow run). The cohort calls :meth:`build`
    once, then per epoch :meth:`begin_epoch`, :meth:`train_step` per batch, :meth:`check_finite`,
    :meth:`epoch_stats` and :meth:`validate`. A member whose method couples several students
    (ModReduce's peers) is a :class:`kdsweep.engine.peers.PeerGroup`."""

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
        self.sums: Sums | None = None
        # The method's pre-stage (RepDistiller's --init_epochs): its own optimiser over what it
        # trains; the cohort's first ``init_epochs`` epochs are pre-stage epochs for every member.
        self.init_epochs = int(getattr(method, "init_epochs", 0) or 0)
        self.init_optimizer: torch.optim.Optimizer | None = None
        self.init_trains_student = False

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def needs_teacher(self) -> bool:
        return self.method.needs_teacher

    @property
    def needs_features(self) -> bool:
        return self.method.needs_features

    def stop(self, status: str, error: BaseException | None = None) -> None:
        self.status, self.error = status, error

    def attach(self, channels_last: bool, compile: bool = False) -> None:
        """Memory format, feature taps and compilation (before :meth:`build`)."""
        self.student.to(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)
        self.forward = Forward(self.student, self.arch, self.method.needs_features, channels_last,
                               compile)

    def build(self, x: Tensor, t_out: ModelOutput | None, ctx: BuildContext,
              step: StepContext) -> None:
        """Let the method create its shape-dependent parts from a dry-run batch, then create the
        optimiser (after: connectors created there must be optimised) and the LR schedule."""
        with self.rng.active():
            was = self.student.training
            self.student.eval()
            with torch.no_grad():
                s = self.forward(x)
            self.student.train(was)
            self.method.build(s, t_out if self.method.needs_teacher else None, ctx)
            self.method.to(step.device)
        only_init = self._build_prestage(step) if self.init_epochs else set()
        params = [p for p in [*self.student.parameters(), *self.method.parameters()]
                  if p.requires_grad and id(p) not in only_init]
        self.optimizer = build_optimizer(params, self.schedule, device=step.device)
        self.scheduler = build_scheduler(self.optimizer, self.schedule, step.steps_per_epoch)
        self.scaler = step.precision.grad_scaler()

    def _build_prestage(self, step: StepContext) -> set[int]:
        """The pre-stage's optimiser: SGD at the method's ``init_lr`` (else the schedule's lr), the
        schedule's momentum and weight decay, constant (RepDistiller's ``init()``), over what the method's ``init_parameters`` returns. Returns the
        ids of the method's parameters trained only there (RepDistiller keeps AB's connectors and
        FT's paraphraser out of the main stage's optimiser)."""
        body = student_body(self.student, self.arch)
        params = list(self.method.init_parameters(body))
        if not params:
            raise ValueError(f"{self.method.name}: init_epochs > 0 but init_parameters() is empty")
        body_ids = {id(p) for p in body}
        self.init_trains_student = any(id(p) in body_ids for p in params)
        lr = self.method.init_lr if self.method.init_lr is not None else self.schedule.get("lr")
        cfg = {"optimizer": "sgd", "lr": 0.05 if lr is None else lr,
               "momentum": self.schedule.get("momentum", 0.9),
               "weight_decay": self.schedule.get("weight_decay", 5e-4), "nesterov": False}
        self.init_optimizer = build_optimizer(params, cfg, device=step.device)
        own = {id(p) for p in self.method.parameters()}
        return {id(p) for p in params if id(p) in own}

    def in_prestage(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def prestage_digest(self) -> str:
        """Equal for two members whose next pre-stage epoch computes the same thing: the same
        method and pre-stage options, and bit for bit the same weights, buffers, optimiser state,
        RNG stream and step count (so sharing it cannot change a result)."""
        h = hashlib.sha256()
        names = [hp.name for hp in hparams(type(self.method))
                 if hp.name not in self.method.main_stage_options]
        if not all(hasattr(self.method, n) for n in names):  # an option it keeps elsewhere:
            return f"unshared-{id(self)}"                     # never share on a guess
        options = {n: getattr(self.method, n) for n in names}
        h.update(repr((type(self.method).__qualname__, self.arch, options, self.global_step,
                       self.init_trains_student, self.init_optimizer.param_groups[0]["lr"],
                       self.init_optimizer.param_groups[0]["momentum"],
                       self.init_optimizer.param_groups[0]["weight_decay"],
                       self.scaler.state_dict())).encode())
        state = {"s": self.student.state_dict(), "m": self.method.state_dict(),
                 "o": self.init_optimizer.state_dict()["state"], "r": self.rng.state_dict()}
        for key, tensor in tensors(state):
            h.update(key.encode())
            h.update(repr((tensor.dtype, tuple(tensor.shape))).encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def copy_prestage(self, leader: Member) -> None:
        """Take the state ``leader`` reached in a pre-stage epoch this member shared with it."""
        self.student.load_state_dict(leader.student.state_dict())
        self.method.load_state_dict(leader.method.state_dict())
        self.init_optimizer.load_state_dict(copy.deepcopy(leader.init_optimizer.state_dict()))
        self.rng.load_state_dict(copy.deepcopy(leader.rng.state_dict()))
        if leader.scaler.is_enabled():
            self.scaler.load_state_dict(leader.scaler.state_dict())
        self.global_step, self.sums = leader.global_step, leader.sums
        if not leader.active:
            self.stop(leader.status, leader.error)

    def begin_epoch(self, device: torch.device, epoch: int = -1) -> None:
        self.student.train(not self.in_prestage(epoch) or self.init_trains_student)
        self.method.train()
        self.sums = Sums(device)

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, t_out: ModelOutput | None,
                   epoch: int, step: StepContext, views: dict[str, Tensor] | None = None) -> None:
        """Forward (on ``x``, then on each of ``views`` the method reads), loss terms, backward
        and one optimiser step, in this member's RNG stream.

        A non-finite loss is never applied: on the CPU it is checked before the step (the member
        stops); on a GPU the fused optimiser skips it on the device and :meth:`check_finite`
        stops the member at the next check.
        """
        if self.in_prestage(epoch):
            return self.prestage_step(x, y, idx, t_out, epoch, step)
        with self.rng.active():
            with step.precision.autocast():
                s_out = self.forward(x)
                s_out.views = {v: self.forward(views[v]) for v in self.method.views}
            pending = self.losses(s_out, y, idx, t_out, epoch, step)
            if pending is None:
                return
            self.apply(pending.loss, pending.bad, step, pending.terms)
        self.finish(pending)

    def prestage_step(self, x: Tensor, y: Tensor, idx: Tensor, t_out: ModelOutput | None,
                      epoch: int, step: StepContext) -> None:
        """One step of the method's pre-stage: ``init_forward``'s terms, the pre-stage optimiser
        (the main LR schedule does not move)."""
        with self.rng.active():
            grad = torch.enable_grad() if self.init_trains_student else torch.no_grad()
            with grad, step.precision.autocast():
                s_out = self.forward(x)
            info = StepInfo(epoch=epoch, step=self.global_step, epochs=self.init_epochs,
                            steps_per_epoch=step.steps_per_epoch, indices=idx)
            with step.precision.autocast():
                terms = self.method.init_forward(s_out, t_out, info)
            terms = {f"init_{k}": v for k, v in terms.items()}
            loss = sum(terms.values())
            bad = any_true(~torch.isfinite(loss.detach()), step.dist)
            if step.sync_every == 1 and bool(bad):
                self.stop(DIVERGED, diverged(epoch, self.global_step, terms))
                return
            opt = self.init_optimizer
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            average_gradients((p for g in opt.param_groups for p in g["params"]), step.dist)
            if step.sync_every > 1:
                opt.found_inf = bad.float()
            self.scaler.step(opt)
            self.scaler.update()
        self.finish(Pending(loss, s_out.logits, y, terms, bad))

    def losses(self, s_out: ModelOutput, y: Tensor, idx: Tensor, t_out: ModelOutput | None,
               epoch: int, step: StepContext) -> Pending | None:
        """The method's loss terms on this member's forward output ``s_out`` (call it in this
        member's RNG stream); None when the loss is non-finite on the CPU (the member stops)."""
        info = StepInfo(epoch=epoch - self.init_epochs,
                        step=self.global_step - self.init_epochs * step.steps_per_epoch,
                        epochs=step.epochs, steps_per_epoch=step.steps_per_epoch, indices=idx)
        with step.precision.autocast():
            terms = self.method(s_out, t_out if self.method.needs_teacher else None, y, info)
        loss = sum(terms.values())
        bad = any_true(~torch.isfinite(loss.detach()), step.dist)
        if step.sync_every == 1 and bool(bad):
            self.stop(DIVERGED, diverged(epoch, self.global_step, terms))
            return None
        return Pending(loss, s_out.logits, y, terms, bad)

    def apply(self, loss: Tensor, bad: Tensor, step: StepContext,
              terms: dict[str, Tensor] | None = None) -> None:
        """Backward and one step of the optimiser and the LR schedule. With the DOT optimiser
        the distillation terms (all but ``ce``) and the task term are backpropagated apart."""
        self.optimizer.zero_grad(set_to_none=True)
        if isinstance(self.optimizer, DOT) and terms is not None:
            if "ce" not in terms and self.scaler.is_enabled():  # no task gradient to unscale
                raise ConfigError("schedule.optimizer=dot with fp16 loss scaling needs a ce term "
                                  "(method.ce_weight > 0); or use precision=bf16 or fp32")
            distill = [v for k, v in terms.items() if k != "ce"]
            if distill:
                self.scaler.scale(sum(distill)).backward(retain_graph="ce" in terms)
                average_gradients((p for g in self.optimizer.param_groups for p in g["params"]),
                                  step.dist)
                self.optimizer.stash_distillation_grads()
            if "ce" in terms:
                self.scaler.scale(terms["ce"]).backward()
        else:
            self.scaler.scale(loss).backward()
        self.step_optimizer(bad, step)

    def step_optimizer(self, bad: Tensor, step: StepContext) -> None:
        """After backward: average the gradients over processes, then one step of the optimiser
        and of the LR schedule."""
        average_gradients((p for g in self.optimizer.param_groups for p in g["params"]), step.dist)
        if step.sync_every > 1:
            self.optimizer.found_inf = bad.float()  # the fused optimiser skips a bad step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def finish(self, pending: Pending) -> None:
        """Count a taken step in the epoch's sums."""
        self.sums.add(pending.loss, pending.logits, pending.y, pending.terms, pending.bad,
                      self.global_step)
        self.global_step += 1

    def check_finite(self, epoch: int) -> None:
        first = self.sums.first_bad if self.sums is not None else None
        if self.active and first is not None and int(first) >= 0:
            self.stop(DIVERGED, diverged(epoch, int(first), None))

    def epoch_stats(self, seen: int, dist_env: DistEnv = SINGLE, epoch: int = -1) -> dict[str, float]:
        """The epoch's training metrics (summed over the data-parallel processes)."""
        opt = self.init_optimizer if self.in_prestage(epoch) else self.optimizer
        own = {f"method_{k}": float(v) for k, v in self.method.epoch_values().items()}
        return {**self.sums.stats(seen, dist_env), "lr": opt.param_groups[0]["lr"], **own}

    def modules(self) -> list[nn.Module]:
        """What holds this member's weights and BatchNorm statistics."""
        return [self.student, self.method]

    def validate(self, loader: Any, precision: Precision, limit: int | None) -> dict[str, float]:
        loss, acc = evaluate(self.forward, loader, precision, limit)
        return {"val_loss": loss, "val_acc": acc}

    def best_weights(self) -> dict[str, Any]:
        """What ``best.pt`` holds when this epoch is the best: a plain student's weights."""
        return {"model": self.student.state_dict(), "method": self.method.state_dict()}

    def close(self) -> None:
        if self.forward is not None:
            self.forward.close()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped (for ``last.pt``)."""
        assert self.optimizer is not None
        return {"model": self.student.state_dict(), "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "global_step": self.global_step,
                "result": self.result.to_dict(), "rng": self.rng.state_dict(),
                **({"init_optimizer": self.init_optimizer.state_dict()}
                   if self.init_optimizer is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self.student.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.init_optimizer is not None and "init_optimizer" in state:
            self.init_optimizer.load_state_dict(state["init_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.global_step = int(state["global_step"])
        self.result = FitResult.from_dict(state["result"])
        self.rng.load_state_dict(state["rng"])
        self.start_epoch = len(self.result.history)
