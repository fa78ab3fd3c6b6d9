"""Curriculum Temperature for Knowledge Distillation (CTKD): KD with an adversarially learned
temperature."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    Count,
    Method,
    OneOf,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.logits import require_same_classes, standardize
from kdsweep.models import ModelOutput

CTKD_MODES = ("global", "instance")


# ----------------------------------------------------------------------------- building blocks
class _ReversedGradient(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the incoming gradient by ``-lam``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * (-ctx.lam), None


def reverse_gradient(x: Tensor, lam: float) -> Tensor:
    """Gradient reversal layer (Ganin & Lempitsky, 2015): ``x`` forward, ``-lam * grad`` backward."""
    return _ReversedGradient.apply(x, lam)


def cosine_lambda(n: float, lambda_min: float, lambda_max: float, loops: int) -> float:
    """The curriculum of the reversal strength: a half-cosine from ``lambda_min`` (n = 0) to
    ``lambda_max`` (n >= loops), ``lambda_min + (lambda_max - lambda_min) (1 - cos(pi n/loops))/2``."""
    n = min(max(n, 0.0), float(loops))
    return lambda_min + (lambda_max - lambda_min) * 0.5 * (1.0 - math.cos(math.pi * n / loops))


def kd_loss_tensor_t(zs: Tensor, zt: Tensor, T: Tensor) -> Tensor:
    """``mean_i T_i^2 * KL(softmax(zt_i / T_i) || softmax(zs_i / T_i))`` in float32; ``T`` has one
    element (a global temperature) or one per sample, and carries gradient."""
    T = T.float().reshape(-1, 1)
    log_p_s = F.log_softmax(zs.float() / T, dim=1)
    log_p_t = F.log_softmax(zt.float() / T, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(1)
    return (kl * T.reshape(-1).pow(2)).mean()


class GlobalTemperature(nn.Module):
    """One learnable pre-sigmoid scalar (CTKD's ``Global_T``, initialised to 1 there)."""

    def __init__(self, raw: float):
        super().__init__()
        self.raw = nn.Parameter(torch.full((1,), float(raw)))

    def forward(self, zs: Tensor, zt: Tensor) -> Tensor:
        return self.raw.float()


class InstanceTemperature(nn.Module):
    """One pre-sigmoid value per sample from the detached class probabilities: the teacher's
    sorted in decreasing order and the student's at the same classes, concatenated (``2C``)
    -> Linear(2C, hidden) -> BatchNorm -> ReLU -> Linear(hidden, 1), the last layer's weight
    zero and its bias ``raw`` (every sample starts at the same temperature)."""

    def __init__(self, num_classes: int, hidden: int, raw: float):
        super().__init__()
        self.fc1 = nn.Linear(2 * num_classes, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, float(raw))

    def forward(self, zs: Tensor, zt: Tensor) -> Tensor:
        p_t, order = F.softmax(zt.float(), dim=1).sort(dim=1, descending=True)
        p_s = F.softmax(zs.float(), dim=1).gather(1, order)
        h = self.fc1(torch.cat([p_t, p_s], dim=1).detach())
        if self.training and h.shape[0] == 1:  # batch statistics need two samples
            h = F.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                             self.bn.bias, training=False, eps=self.bn.eps)
        else:
            h = self.bn(h)
        return self.fc2(F.relu(h)).reshape(-1)


# ------------------------------------------------------------------------------------ method
@register_method("ctkd")
class CTKD(Method):
    """Curriculum Temperature for Knowledge Distillation, Li, Li, Yang, Zhao, Song, Luo, Li &
    Yang, AAAI 2023, arXiv:2211.16231; follows the authors' code (zhengli97/CTKD
    ``train_student.py``, ``helper/loops.py``, ``models/temp_global.py``, as also kept in
    sunshangquan/logit-standardization-KD ``CTKD/``) for the global temperature and its curriculum.

    Hinton KD whose temperature is predicted by a small module trained *against* the student
    through a gradient reversal layer (GRL: identity forward, gradient times ``-lambda``)::

        T       = t_start + t_range * sigmoid(r)        r: global scalar, or MLP(p_t, p_s) per sample
        lambda  = lambda_min + (lambda_max - lambda_min) * (1 - cos(pi * n / decay_loops)) / 2,
                  n = min(epoch + 1, decay_loops)        (epoch: StepInfo's 0-based epoch)
        loss    = ce_weight * CE(z_s, y) + kd_weight * mean_i T_i^2 KL(softmax(z_t/T_i) || softmax(z_s/T_i))
        dloss/dr (what the optimiser sees) = -lambda * d(kd term)/dr

    so one SGD step on the student *and* the temperature module moves the student down the loss
    and ``T`` up it (gradient ascent), harder as ``lambda`` grows (easy-to-hard curriculum).

    Defaults, the authors' CIFAR-100 script ``scripts/run_cifar_distill.sh``: ``-r 0.1 -a 0.9``
    (``ce_weight 0.1``, ``kd_weight 0.9``), ``--t_start 1 --t_end 20`` (``T`` in (1, 21);
    their ``t_end`` is the range), ``--cosine_decay 1 --decay_max 0 --decay_min -1
    --decay_loops 10`` (their GRL factor is ``-lambda``: ``decay_max = -lambda_min``,
    ``decay_min = -lambda_max``), and their epochs count from 1, hence ``n = epoch + 1``.
    ``T_init=null`` keeps their initialisation: ``r = 1`` (``T0 = 1 + 20 sigmoid(1) = 15.62``) for
    ``global``, a zero last layer (``r = 0``, ``T0 = 11``) for ``instance``; a value sets ``r`` so
    that ``T0 = T_init``. ``hidden 256`` is the instance MLP's width (``inter_channel``).

    ``mode=instance`` (the paper's instance-wise temperature) is not in the stored official code;
    it follows the ``Instance_MLP`` of a public mdistiller-style CTKD port (teacher top-k
    probabilities with the student's at the same classes, k = all classes as its ``topk_num=100``
    on CIFAR-100; 1x1 convs = linear layers). Its ``T_i^2`` weights each sample's KL (the port
    multiplied the batch-mean KL by each ``T_i^2``).

    The temperature module is a submodule: the engine optimises it with the student (same SGD,
    weight decay included, as the authors' ``trainable_list``) and checkpoints it. Everything is
    computed in float32, also under autocast.

    ``logit_stand`` (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024,
    arXiv:2403.01427; their ``CTKD/distiller_zoo/KD.py``) Z-scores both logit vectors before the
    learned temperature divides them, in the ``kd`` term only (the CE and the instance module's
    input read the raw logits); their CIFAR-100 CTKD+LS runs ``-r 0.1 -a 9``, i.e.
    ``method.logit_stand=true method.kd_weight=9``. Their CTKD copy divides by the std alone,
    kdsweep's :func:`~kdsweep.methods.logits.standardize` by ``std + 1e-7`` as their KD (a
    difference below fp32 rounding for logits of std above 0.1).

    Logged terms: ``ce``, ``kd`` (weighted); the temperature is logged per epoch as ``method/T``
    (:meth:`epoch_values`: the global ``T`` now, or the batch mean of the last step's per-sample
    ``T``).
    """

    def __init__(self, mode: Annotated[str, OneOf(CTKD_MODES)] = "global",
                 ce_weight: Weight = 0.1, kd_weight: Weight = 0.9,
                 t_start: Temperature = 1.0,
                 t_range: Annotated[float, Range(0.0, lo_open=True)] = 20.0,
                 T_init: Temperature | None = None,
                 lambda_min: Weight = 0.0, lambda_max: Weight = 1.0,
                 decay_loops: Count = 10, hidden: Count = 256, logit_stand: bool = False):
        super().__init__()
        self.logit_stand = logit_stand
        self.mode, self.ce_weight, self.kd_weight = mode, ce_weight, kd_weight
        self.t_start, self.t_range, self.T_init = t_start, t_range, T_init
        self.lambda_min, self.lambda_max, self.decay_loops = lambda_min, lambda_max, decay_loops
        self.hidden = hidden
        if T_init is not None and not t_start < T_init < t_start + t_range:
            raise ConfigError(
                f"method.T_init={T_init:g} is out of range; the temperature lies in "
                f"(t_start, t_start + t_range) = ({t_start:g}, {t_start + t_range:g})")
        self.temperature: nn.Module | None = (
            GlobalTemperature(self._initial_raw()) if mode == "global" else None)
        self._last_T: Tensor | None = None  # the last step's mean T (detached, no sync)

    def _initial_raw(self) -> float:
        """The pre-sigmoid value giving ``T_init`` (None: the authors' 1 for global, 0 for
        instance)."""
        if self.T_init is None:
            return 1.0 if self.mode == "global" else 0.0
        u = (self.T_init - self.t_start) / self.t_range
        return math.log(u / (1.0 - u))

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        c_s = require_same_classes("ctkd", student_out.logits,
                                   teacher_out.logits if teacher_out is not None else None)
        if self.mode == "instance":
            self.temperature = InstanceTemperature(c_s, self.hidden, self._initial_raw()).to(
                student_out.logits.device)

    def lambda_at(self, epoch: int) -> float:
        """The GRL strength at 0-based ``epoch`` (the authors' 1-based epoch ``epoch + 1``)."""
        return cosine_lambda(epoch + 1, self.lambda_min, self.lambda_max, self.decay_loops)

    def temperatures(self, zs: Tensor, zt: Tensor, lam: float) -> Tensor:
        """``T``: shape (1,) for ``global``, (N,) for ``instance``; its gradient is reversed."""
        if self.temperature is None:
            raise RuntimeError("ctkd: build() must run before the first step (mode=instance)")
        raw = reverse_gradient(self.temperature(zs, zt), lam)
        return self.t_start + self.t_range * torch.sigmoid(raw)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "ctkd needs a teacher"
        s = student_out.logits
        with torch.autocast(s.device.type, enabled=False):
            zs, zt = s.float(), teacher_out.logits.detach().float()
            T = self.temperatures(zs, zt, self.lambda_at(info.epoch))
            self._last_T = T.detach().mean()
            terms: dict[str, Tensor] = {}
            if self.ce_weight > 0:
                terms["ce"] = self.ce_weight * F.cross_entropy(zs, targets)
            if self.kd_weight > 0:
                ks, kt = (standardize(zs), standardize(zt)) if self.logit_stand else (zs, zt)
                terms["kd"] = self.kd_weight * kd_loss_tensor_t(ks, kt, T)
        return terms

    def current_T(self) -> float | None:
        """The global temperature now, or the mean of the last step's per-sample ones."""
        if isinstance(self.temperature, GlobalTemperature):
            raw = self.temperature.raw.detach().float()
            return float(self.t_start + self.t_range * torch.sigmoid(raw))
        return None if self._last_T is None else float(self._last_T)

    def epoch_values(self) -> dict[str, float]:
        T = self.current_T()
        return {} if T is None else {"T": T}
