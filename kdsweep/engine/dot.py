"""DOT, the Distillation-Oriented Trainer: SGD with one momentum for the task loss's gradients
and a larger one for the distillation loss's gradients.

Zhao, Song & Qiu, "DOT: A Distillation-Oriented Trainer", ICCV 2023 (arXiv:2307.08436); follows
megvii-research/mdistiller ``mdistiller/engine/dot.py`` (``DistillationOrientedTrainer``) and its
use by the ``DOT`` trainer of ``mdistiller/engine/trainer.py``. See :class:`DOT`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from kdsweep.errors import ConfigError

#: ``self.state[p]`` keys: the two momentum buffers, and whether the distillation buffer has
#: taken a step (0./1., a tensor so that a step skipped on the device needs no host sync).
TASK_BUFFER = "task_momentum_buffer"
KD_BUFFER = "kd_momentum_buffer"
KD_STARTED = "kd_momentum_started"

DELTA_KEY = "schedule.dot_delta"
DEFAULT_DELTA = 0.075  # mdistiller cfg.py SOLVER.DOT.DELTA and every configs/cifar100/dot/*.yaml


def check_settings(lr: float, momentum: float, delta: float, weight_decay: float) -> None:
    """Refuse settings DOT cannot run with, in one line naming the config key."""
    if not lr >= 0:
        raise ConfigError(f"schedule.lr={lr} must be >= 0")
    if not 0 <= momentum <= 1:
        raise ConfigError(f"schedule.momentum={momentum} must be in [0, 1] for the DOT optimiser")
    if not weight_decay >= 0:
        raise ConfigError(f"schedule.weight_decay={weight_decay} must be >= 0")
    if not (0 <= delta <= momentum and momentum + delta <= 1):
        raise ConfigError(
            f"{DELTA_KEY}={delta} must be in [0, schedule.momentum={momentum}] with momentum + "
            f"delta <= 1 (DOT's task momentum is momentum - delta, its distillation momentum "
            f"momentum + delta)")


class DOT(torch.optim.Optimizer):
    r"""Distillation-Oriented Trainer (Zhao, Song & Qiu, ICCV 2023, arXiv:2307.08436).

    Follows mdistiller's ``DistillationOrientedTrainer`` (``mdistiller/engine/dot.py``) as its
    ``DOT`` trainer uses it: task momentum ``m_t = momentum - delta``, distillation momentum
    ``m_d = momentum + delta`` (``SOLVER.MOMENTUM 0.9``, ``SOLVER.DOT.DELTA 0.075``), dampening 0,
    no Nesterov. One training step::

        opt.zero_grad(set_to_none=True)
        loss_kd.backward(retain_graph=True)
        opt.stash_distillation_grads()     # mdistiller's step_kd(): takes each p.grad
        opt.zero_grad(set_to_none=True)    # optional here: the stash left every p.grad None
        loss_task.backward()
        opt.step()                         # both updates, then the stash is emptied

    The update, per parameter ``p`` of a group (``lr``, ``wd = weight_decay``), with ``g`` its
    task gradient and ``k`` its stashed distillation gradient (either may be absent) and
    ``m_mean = (m_d + m_t) / 2``; ``B_t``, ``B_d`` its two buffers; "first" means that buffer has
    never taken a step::

        task part, when g is present (applied first):
            d = g + wd * p                          # weight decay: always, on the task gradient
            if m_t != 0:
                m = m_t if k is present else m_mean
                B_t = d if first else m * B_t + d
                d = B_t
            p = p - lr * d
        distillation part, when k is present:
            if g is present:                        # both gradients
                B_d = k if first else m_d * B_d + k          (no weight decay: the task part had it)
            else:                                   # distillation gradient only
                B_d = k if first else m_mean * B_d + (k + wd * p)
            p = p - lr * B_d

    exactly as the reference does it, including what looks odd there:

    - a parameter with only a distillation gradient gets *no weight decay on its first step*
      (the reference's ``buf = clone(grad)`` branch comes before its weight-decay line), then
      ``wd * p`` on every later step;
    - a parameter with only a task gradient (or every parameter when nothing was stashed: a
      method without distillation terms) uses the mean momentum ``m_mean``, not ``m_t``;
    - with ``delta == momentum`` (``m_t = 0``) there is no task buffer at all: the task part is
      plain SGD with weight decay, even for task-only parameters (the reference's
      ``if momentum != 0`` guards the whole buffer block, the ``m_mean`` branch included);
    - a parameter with both gradients takes two sub-steps, ``p - lr * B_t`` then ``- lr * B_d``;
    - ``m_mean`` is computed as ``(m_d + m_t) / 2`` (not ``momentum``: 0.9 -+ 0.075 rounds).

    With ``delta = 0`` and no weight decay this is, up to rounding, SGD with momentum on the
    summed loss; with weight decay it is not when some parameter gets only distillation
    gradients (its first step has no weight decay, which its buffer remembers).

    Kept in ``self.state[p]`` (so ``state_dict()``/``load_state_dict()`` resume bit for bit):
    ``task_momentum_buffer``, ``kd_momentum_buffer`` and ``kd_momentum_started`` (0./1.: the
    "first" above). Buffers start as zeros, which is the reference's ``clone`` first step bit for
    bit (``0 * m + d == d``), and lets a skipped step leave them as they were. The stash is
    transient and not saved.

    Several parameter groups are supported (each its own ``lr``, ``momentum``, ``delta``,
    ``weight_decay``; ``lr`` is read at every step, so torch's LR schedulers drive it); the
    reference asserts a single group.

    ``found_inf``: like torch's fused optimisers, when this attribute is a non-zero tensor
    :meth:`step` changes no parameter and no state (decided on the device, no host sync) and
    still empties the stash. Under an enabled ``torch.amp.GradScaler`` (``scaler.step(opt)``,
    which sets ``grad_scale`` and ``found_inf`` because of ``_step_supports_amp_scaling``) both
    the task gradients and the stash are unscaled here, and a non-finite stashed gradient also
    skips the step (the scaler's scale back-off only sees the task gradients). Do not call
    ``scaler.unscale_(opt)`` before it: the stash would stay scaled.

    Deviations: several groups, ``found_inf``/``grad_scale``; :meth:`stash_distillation_grads`
    takes the gradients (``p.grad`` is None afterwards) instead of keeping references to them, so
    a task backward that accumulates cannot alter the stash; buffers start as zeros (same
    values, see above).
    """

    _step_supports_amp_scaling = True

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 delta: float = DEFAULT_DELTA, weight_decay: float = 5e-4,
                 nesterov: bool = False):
        if nesterov:
            raise ConfigError("schedule.nesterov=true is not supported by the DOT optimiser "
                              "(mdistiller's DOT has no Nesterov variant); set it to false")
        self._stash: dict[Tensor, Tensor] = {}
        defaults = dict(lr=float(lr), momentum=float(momentum), delta=float(delta),
                        weight_decay=float(weight_decay))
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **param_group}
        check_settings(merged["lr"], merged["momentum"], merged["delta"], merged["weight_decay"])
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._stash = {}

    @torch.no_grad()
    def stash_distillation_grads(self) -> None:
        """Take the current ``.grad`` of every parameter that has one (the distillation loss's,
        just backpropagated) into a transient store for the next :meth:`step`; leaves every
        ``p.grad`` None. Replaces whatever an earlier call stashed."""
        stash: dict[Tensor, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError("DOT does not support sparse gradients")
                    stash[p] = p.grad
                    p.grad = None
        self._stash = stash

    def _keep(self, stash: dict[Tensor, Tensor]) -> Tensor | None:
        """Unscale under a grad scaler; then the device flag "take this step" (None: always)."""
        found = getattr(self, "found_inf", None)
        found = torch.as_tensor(found) if found is not None else None
        scale = getattr(self, "grad_scale", None)
        if scale is not None:
            by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            for t in grads + list(stash.values()):
                by_kind.setdefault((t.device, t.dtype), []).append(t)
            inv = torch.as_tensor(scale).double().reciprocal().float()
            for (device, _), ts in by_kind.items():
                flag = torch.zeros((), dtype=torch.float32, device=device)
                torch._amp_foreach_non_finite_check_and_unscale_(ts, flag, inv.to(device))
                found = flag if found is None else found + flag.to(found.device)
        return None if found is None else found == 0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply the task gradients (``p.grad``) and the stashed distillation gradients (see the
        class docstring); empties the stash."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stash, self._stash = self._stash, {}
        keep = self._keep(stash)
        on_device: dict[torch.device, Tensor] = {}

        def take(new: Tensor, old: Tensor) -> None:
            """old <- new, unless the step is skipped (decided on the device)."""
            assert keep is not None
            k = on_device.get(old.device)
            if k is None:
                k = on_device[old.device] = keep.to(old.device)
            old.copy_(torch.where(k, new, old))

        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task = group["momentum"] - group["delta"]
            m_kd = group["momentum"] + group["delta"]
            m_mean = (m_kd + m_task) / 2.0
            for p in group["params"]:
                g, k = p.grad, stash.get(p)
                if g is None and k is None:
                    continue
                state = self.state[p]
                if g is not None:
                    d = g.add(p, alpha=wd) if wd != 0 else g
                    if m_task != 0:
                        buf = state.get(TASK_BUFFER)
                        if buf is None:
                            buf = state[TASK_BUFFER] = torch.zeros_like(
                                p, memory_format=torch.preserve_format)
                        d = self._momentum(buf, m_task if k is not None else m_mean, d, keep, take)
                    self._descend(p, d, lr, keep, take)
                if k is not None:
                    buf = state.get(KD_BUFFER)
                    if buf is None:
                        buf = state[KD_BUFFER] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                        state[KD_STARTED] = torch.zeros((), dtype=p.dtype, device=p.device)
                    started = state[KD_STARTED]
                    if g is not None:
                        m, d = m_kd, k
                    else:
                        m = m_mean
                        d = torch.where(started != 0, k.add(p, alpha=wd), k) if wd != 0 else k
                    d = self._momentum(buf, m, d, keep, take)
                    if keep is None:
                        started.fill_(1.0)
                    else:
                        take(torch.ones_like(started), started)
                    self._descend(p, d, lr, keep, take)
        return loss

    @staticmethod
    def _momentum(buf: Tensor, m: float, d: Tensor, keep: Tensor | None,
                  take: Callable[[Tensor, Tensor], None]) -> Tensor:
        """buf <- m * buf + d (a zero buffer: d, the reference's first step); the new value."""
        if keep is None:
            return buf.mul_(m).add_(d)
        new = buf.mul(m).add_(d)
        take(new, buf)
        return new

    @staticmethod
    def _descend(p: Tensor, d: Tensor, lr: float, keep: Tensor | None,
                 take: Callable[[Tensor, Tensor], None]) -> None:
        if keep is None:
            p.add_(d, alpha=-lr)
        else:
            take(p.add(d, alpha=-lr), p)
