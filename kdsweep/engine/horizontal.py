"""Horizontal fusion (``train.horizontal=true``): the members of a cohort that train one student
architecture run their forward and backward passes as one batched model.

HFTA (Wang et al., "Horizontally Fused Training Array: An Effective Hardware Utilization Squeezer
for Training Novel Deep Learning Models", MLSys 2021; https://github.com/UofT-EcoSystem/hfta)
fuses the many small models of a sweep into one wide model, so that a GPU runs one large kernel
per layer instead of many small ones. Here the fusion is done by ``torch.func``, with no model
rewritten: the members' parameters and BatchNorm buffers are stacked along a new leading
dimension (as ``torch.func.stack_module_state`` does) and one ``vmap`` of ``functional_call`` of
the architecture computes every member's logits on the shared batch. Under ``vmap`` a
convolution with stacked weights runs as one grouped convolution.

The stack is ``torch.stack`` of each member's *own* parameters, which is differentiable, so one
backward pass of the summed losses leaves each member's gradient in its own ``.grad`` (members
share no parameters, so the gradient of the sum with respect to member k's weights is that of
member k's loss). Each member then steps its own optimiser, LR schedule and grad scaler, so
checkpoints, resume, pruning, divergence and recording are exactly those of an unfused member.
BatchNorm's running statistics are updated in the stacked buffers and copied back.

Which members are stacked: plain members (not ModReduce's peer groups) whose methods read logits
only (feature taps are forward hooks, which cannot hand tensors out of ``vmap``), whose students
have the same architecture (the same parameter and buffer names, shapes and dtypes) and no
forward hooks (``student.adapt``'s LoRA branches) nor ``SyncBatchNorm`` (``train.sync_bn``), and
draw no random numbers in their forward pass (``vmap`` runs with ``randomness="error"``: a student
with dropout, which would need its own RNG stream to stay reproducible, is found at its first step
and trains alone from then on). Stacked members run eagerly: ``train.compile`` applies to the
members that train one by one.
Everything else trains member by member as without the switch.

Results equal the unfused ones within fp32 rounding, not bit for bit (a grouped convolution sums
in another order than separate ones); ``tests/test_horizontal.py`` checks weights and metrics.
Measured in docs/benchmarks.md: on a CPU the grouped convolutions of oneDNN are slower than
separate ones, so the switch is off by default; it is meant for GPUs, where small students leave
the device idle.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from kdsweep.engine.dot import DOT
from kdsweep.engine.member import Member, Pending, StepContext
from kdsweep.models import ModelOutput

log = logging.getLogger(__name__)


def signature(member: Member) -> tuple[Any, ...] | None:
    """Equal for two members that can be stacked; None for a member that cannot be."""
    if type(member) is not Member or member.needs_features or isinstance(member.optimizer, DOT):
        return None  # DOT's two backward passes per member: stepped alone, its momenta its own
    student = member.student
    if any(m._forward_hooks or m._forward_pre_hooks or isinstance(m, nn.SyncBatchNorm)
           for m in student.modules()):  # LoRA branches; BatchNorm synchronised across processes
        return None
    params = tuple((n, tuple(p.shape), p.dtype, p.requires_grad)
                   for n, p in student.named_parameters())
    buffers = tuple((n, tuple(b.shape), b.dtype) for n, b in student.named_buffers())
    return type(student), params, buffers, member.method.views


class StackedGroup:
    """Members of one architecture whose steps run as one vmapped forward and backward pass."""

    def __init__(self, members: Sequence[Member]):
        self.members = list(members)
        self.params = [dict(m.student.named_parameters()) for m in self.members]
        self.buffers = [dict(m.student.named_buffers()) for m in self.members]
        self.alone = False  # set when the students turn out to draw random numbers

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, t_out: ModelOutput | None,
                   epoch: int, step: StepContext, among: Sequence[Member],
                   views: dict[str, Tensor] | None = None) -> None:
        """One step of the group's members that are in ``among`` (the cohort's live members);
        the members read the same ``views`` (:func:`signature`), each its own vmapped pass."""
        live = [k for k, m in enumerate(self.members) if m.active and m in among]
        if len(live) > 1 and not self.alone:
            try:
                logits, buffers = self._forward(live, x, step)
                outs = [ModelOutput(logits=logits[i]) for i in range(len(live))]
                for v in self.members[live[0]].method.views:  # BatchNorm: one pass after another
                    self._keep_buffers(live, buffers)
                    view_logits, buffers = self._forward(live, views[v], step)
                    for i, out in enumerate(outs):
                        out.views[v] = ModelOutput(logits=view_logits[i])
            except RuntimeError as err:
                if "randomness" not in str(err):
                    raise
                self.alone = True
                log.info("horizontal fusion: %s draws random numbers in its forward pass "
                         "(dropout); its %d members train one by one", self.members[0].arch,
                         len(self.members))
            else:
                self._keep_buffers(live, buffers)
                self._backward_and_step(live, outs, y, idx, t_out, epoch, step)
                return
        for k in live:
            self.members[k].train_step(x, y, idx, t_out, epoch, step, views=views)

    def _forward(self, live: list[int], x: Tensor,
                 step: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        """Every live member's logits, stacked: ``(members, batch, classes)``."""
        first = self.members[live[0]]
        params = {n: torch.stack([self.params[k][n] for k in live]) for n in self.params[0]}
        with torch.no_grad():
            buffers = {n: torch.stack([self.buffers[k][n] for k in live]) for n in self.buffers[0]}
        model: nn.Module = first.student

        def call(p: dict[str, Tensor], b: dict[str, Tensor], batch: Tensor) -> Tensor:
            return functional_call(model, (p, b), (batch,))

        x = x.contiguous(memory_format=first.forward.memory_format)
        with step.precision.autocast():
            logits = vmap(call, in_dims=(0, 0, None), randomness="error")(params, buffers, x)
        return logits, buffers

    @torch.no_grad()
    def _keep_buffers(self, live: list[int], buffers: dict[str, Tensor]) -> None:
        """BatchNorm's running statistics, as each member's own pass left them."""
        for i, k in enumerate(live):
            for n, b in self.buffers[k].items():
                b.copy_(buffers[n][i])

    def _backward_and_step(self, live: list[int], outs: list[ModelOutput], y: Tensor,
                           idx: Tensor, t_out: ModelOutput | None, epoch: int,
                           step: StepContext) -> None:
        pending: list[tuple[Member, Pending]] = []
        for i, k in enumerate(live):
            m = self.members[k]
            with m.rng.active():
                p = m.losses(outs[i], y, idx, t_out, epoch, step)
            if p is not None:  # None: diverged on the CPU, stopped, never applied
                pending.append((m, p))
        if not pending:
            return
        for m, _ in pending:
            m.optimizer.zero_grad(set_to_none=True)
        sum(m.scaler.scale(p.loss) for m, p in pending).backward()
        for m, p in pending:
            with m.rng.active():
                m.step_optimizer(p.bad, step)
            m.finish(p)


def stack(members: Sequence[Member]) -> list[Member | StackedGroup]:
    """The cohort's training units: members that can be stacked (:func:`signature`) grouped, in
    the order of their first member; the others alone."""
    groups: dict[tuple[Any, ...], list[Member]] = {}
    units: list[Any] = []
    for m in members:
        sig = signature(m)
        if sig is None:
            units.append(m)
        elif sig in groups:
            groups[sig].append(m)
        else:
            groups[sig] = [m]
            units.append(groups[sig])
    out = [StackedGroup(u) if isinstance(u, list) and len(u) > 1 else
           (u[0] if isinstance(u, list) else u) for u in units]
    stacked = [len(u.members) for u in out if isinstance(u, StackedGroup)]
    if len(members) > 1:  # a cohort of one (a plain run, a teacher) has nothing to stack
        log.info("horizontal fusion: %d of %d members stacked (groups of %s); %d train one by one",
                 sum(stacked), len(members), ", ".join(map(str, stacked)) or "none",
                 len(members) - sum(stacked))
    return out


__all__ = ["StackedGroup", "signature", "stack"]
