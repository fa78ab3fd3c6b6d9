"""ModReduce: three students -- response (KD), relational (CRD), feature (SemCKD) -- learning
offline from the teacher and online from each other through an aggregator.

Abbas, Badawy, Mahfouz, Hussein, Ayman, Eraqi & Salama, "ModReduce: A Multi-Knowledge
Distillation Framework" (code: github.com/Yahya-Abbas/ModReduce). ``method=modreduce`` is a
*coupling* method: the run trains three full students of the student architecture as peers of a
:class:`kdsweep.engine.peers.PeerGroup` (each its own weights, offline objective, optimiser and
LR schedule, on the cohort's one batch stream and one teacher pass), and deploys the best.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    Count,
    Fraction,
    Length,
    Method,
    OneOf,
    Range,
    StepInfo,
    Temperature,
    Weight,
    create_method,
    register_method,
)
from kdsweep.methods.crd import CRD_MODES, FEAT_DIM, NCE_K, NCE_M, NCE_T
from kdsweep.methods.logits import kd_loss, logit_terms
from kdsweep.models import ModelOutput

PEERS = ("resp", "rel", "feat")  # response (Hinton KD), relational (CRD), feature (SemCKD)
#: The published online-learning methods (the code's ``--ol`` choices pcl, One, FC, W_Avg).
ONLINE = ("PCL", "ONE", "FC", "WAvg")
#: The aggregator's own optimiser in the published code: SGD, lr 0.1 (constant), momentum 0.9.
AGGREGATOR_SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def online_weight(epoch: int, epochs: int, *, init: float, final: float, steps: int,
                  start: float) -> float:
    """The seed's online-loss weight ``w_ol`` for a 0-based ``epoch`` of ``epochs``.

    ``start == 0`` (synchronous, the seed's default): ``w_ol`` grows geometrically from ``init``
    to ``final`` in ``steps`` equal stages (seed: x (0.7/0.01)^(1/24) at every 10th epoch of 240,
    starting at epoch 0): ``w = init * (final/init)^((floor(epoch * steps / epochs) + 1) / steps)``.
    ``start > 0`` (the seed's ``--cutoff_epoch``, as a fraction of the epochs): 0 before, ``final``
    from epoch ``ceil(start * epochs)`` on.
    """
    if start > 0:
        return final if epoch >= math.ceil(start * epochs - 1e-9) else 0.0
    stage = math.floor(epoch * steps / max(1, epochs))
    return min(final, init * (final / init) ** ((stage + 1) / steps))


def sigmoid_rampup(epoch: float, length: float) -> float:
    """``exp(-5 (1 - epoch/length)^2)`` up to ``length``, then 1 (Laine & Aila 2017; PCL's ramp)."""
    if length <= 0 or epoch >= length:
        return 1.0
    phase = 1.0 - epoch / length
    return math.exp(-5.0 * phase * phase)


class ResponsePeer(Method):
    """The response peer's offline objective: ``ce_weight * CE + kd_weight * KD_T``."""

    def __init__(self, ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, T: Temperature = 4.0):
        super().__init__()
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        return logit_terms(student_out.logits, teacher_out.logits.detach(), targets,
                           ce_weight=self.ce_weight, kd_weight=self.kd_weight, T=self.T)


class WeightedAverage(nn.Module):
    """WAvg: ``g = sum_k softmax(theta)_k z_k``, ``theta`` learned (uniform at the start)."""

    def __init__(self, n: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(n))

    def forward(self, logits: Sequence[Tensor], gate_input: Tensor) -> Tensor:
        w = F.softmax(self.theta, 0)
        return sum(w[k] * z for k, z in enumerate(logits))


class FCAggregator(nn.Module):
    """FC: ``g = W [z_1, z_2, z_3] + b``, a linear layer on the concatenated peer logits."""

    def __init__(self, n: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(n * num_classes, num_classes)

    def forward(self, logits: Sequence[Tensor], gate_input: Tensor) -> Tensor:
        return self.fc(torch.cat(list(logits), 1))


class GateAggregator(nn.Module):
    """ONE (Lan et al. 2018) as published: per-sample weights from the input image,
    ``w(x) = softmax(ReLU(W avgpool_16(x) + b))`` (a 32x32 image pools to 2x2x3 = 12 inputs)."""

    def __init__(self, n: int, channels: int = 3):
        super().__init__()
        self.fc = nn.Linear(4 * channels, n)

    def forward(self, logits: Sequence[Tensor], x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(x.float(), 2).flatten(1)
        w = F.softmax(F.relu(self.fc(pooled)), 1)
        return sum(w[:, k:k + 1] * z for k, z in enumerate(logits))


@register_method("modreduce")
class ModReduce(Method):
    """ModReduce: three students of the student architecture, one per knowledge type, learning
    offline from the teacher and online from each other (Abbas et al.; code Yahya-Abbas/ModReduce).

    Peer ``k`` (``resp``: Hinton KD, ``rel``: CRD, ``feat``: SemCKD) has logits ``z_k`` and the
    published normalised offline loss ``O_k = s_k (sum of its weighted terms) / (its weights)``::

        resp: s_r (a CE + b KD) / (a + b)        rel: s_c (a CE + b KD + c_crd CRD) / (a + b + c_crd)
        feat: s_f (a CE + b KD + c_sem SemCKD) / (a + b + c_sem)

    (``a = ce_weight``, ``b = kd_weight``, KD at ``T``, ``s = peer_scale`` = 10 / 1 / 100 as
    published). With an aggregator (``online``: ``WAvg``, ``FC`` or ``ONE``) the *detached* peer
    logits give a group output ``g``, trained only by ``CE(g, y)`` with its own SGD (lr 0.1), and
    peer ``k`` minimises ``w_ol KD_T(z_k || g) + (1 - w_ol) O_k``; ``w_ol`` grows from 0.01 to 0.7
    (synchronous) or is 0.7 from ``online_start`` on (the code's ``--cutoff_epoch``), see
    :func:`online_weight`. With ``online: PCL`` (Wu & Gong 2021) each peer instead distils from
    the others' temporal-mean models (EMA of their weights, updated each epoch), ramped by
    ``r = sigmoid_rampup(epoch, pcl_rampup * epochs)``::

        loss_k = s_k (a CE + r b KD + sum_{j != k} r KD_{pcl_T}(z_k || mean_j(x)) + c_k L_k) / (W_k + b + r)

    Peers share no weights and each steps its own optimiser; the group's validation accuracy is
    its best peer's, whose weights are the run's ``best.pt``. Logged terms:
    ``{resp,rel,feat}_{offline,online}``, ``agg_ce``.
    """

    needs_features = True

    def __init__(self, online: Annotated[str, OneOf(ONLINE)] = "WAvg", ce_weight: Weight = 1.0,
                 kd_weight: Weight = 1.0, T: Temperature = 4.0, crd_weight: Weight = 0.8,
                 semckd_weight: Weight = 400.0,
                 peer_scale: Annotated[list[float], Range(0.0), Length(3)] = (10.0, 1.0, 100.0),
                 online_weight: Fraction = 0.7,
                 online_weight_init: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 0.01,
                 online_growth_steps: Count = 24, online_start: Fraction = 0.0,
                 pcl_T: Temperature = 3.0, pcl_rampup: Fraction = 1 / 3, pcl_ema: Fraction = 0.999,
                 feat_dim: Count = FEAT_DIM, nce_k: Count = NCE_K, nce_t: Temperature = NCE_T,
                 nce_m: Fraction = NCE_M, crd_mode: Annotated[str, OneOf(CRD_MODES)] = "exact",
                 batch_size: Count | None = None):
        super().__init__()
        self.online = online
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.crd_weight, self.semckd_weight, self.peer_scale = crd_weight, semckd_weight, peer_scale
        self.online_weight, self.online_weight_init = online_weight, online_weight_init
        self.online_growth_steps, self.online_start = online_growth_steps, online_start
        self.pcl_T, self.pcl_rampup, self.pcl_ema = pcl_T, pcl_rampup, pcl_ema
        self.crd_args = {"feat_dim": feat_dim, "nce_k": nce_k, "nce_t": nce_t, "nce_m": nce_m,
                         "mode": crd_mode}
        self.batch_size = batch_size
        self.extra = (0.0, crd_weight, semckd_weight)  # each peer's own feature weight
        for peer, extra in zip(PEERS, self.extra, strict=True):
            if ce_weight + kd_weight + extra <= 0:
                raise ConfigError(f"modreduce: peer {peer!r} has no loss (its weights sum to 0)")
        self.peer_names = PEERS
        self.aggregator: nn.Module | None = None
        self.means = nn.ModuleList()  # PCL: each peer's temporal-mean model

    def peer_methods(self) -> list[Method]:
        """The three peers' offline objectives, with the published weights."""
        logits = {"ce_weight": self.ce_weight, "kd_weight": self.kd_weight, "T": self.T}
        return [ResponsePeer(**logits),
                create_method({"name": "crd", "feat_weight": self.crd_weight, **logits,
                               **self.crd_args}),
                create_method({"name": "semckd", "feat_weight": self.semckd_weight,
                               "batch_size": self.batch_size, **logits})]

    def attach_peers(self, students: Sequence[nn.Module], num_classes: int) -> None:
        n = len(students)
        if self.online == "WAvg":
            self.aggregator = WeightedAverage(n)
        elif self.online == "FC":
            self.aggregator = FCAggregator(n, num_classes)
        elif self.online == "ONE":
            self.aggregator = GateAggregator(n)
        else:  # PCL: temporal-mean copies of the peers, never trained by gradients
            self.means = nn.ModuleList(copy.deepcopy(s).requires_grad_(False) for s in students)

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        if self.aggregator is None:
            return None
        return torch.optim.SGD(self.aggregator.parameters(), **AGGREGATOR_SGD)

    def _normalise(self, k: int, terms: dict[str, Tensor], r: float = 1.0) -> tuple[Tensor, float]:
        """The peer's offline numerator (its KD term scaled by ``r``, PCL's ramp) and its weight
        sum (the published code divides by the unramped KD weight)."""
        num = sum(v * r if name == "kd" else v for name, v in terms.items())
        return num, self.ce_weight + self.extra[k] + self.kd_weight

    def combine(self, logits: list[Tensor], terms: list[dict[str, Tensor]], targets: Tensor,
                x: Tensor, info: StepInfo) -> tuple[list[Tensor], Tensor | None, dict[str, Tensor]]:
        """One loss per peer, the aggregator's loss, and the terms to log."""
        log: dict[str, Tensor] = {}
        if self.online == "PCL":
            r = sigmoid_rampup(info.epoch, self.pcl_rampup * info.epochs)
            with torch.no_grad():
                means = [m(x).float() for m in self.means]
            losses = []
            for k, peer in enumerate(PEERS):
                num, den = self._normalise(k, terms[k], r)
                peer_kl = sum(kd_loss(logits[k], means[j], self.pcl_T) for j in range(len(PEERS))
                              if j != k)
                losses.append(self.peer_scale[k] * (num + r * peer_kl) / (den + r))
                log[f"{peer}_offline"], log[f"{peer}_online"] = num.detach(), peer_kl.detach()
            return losses, None, log
        w = online_weight(info.epoch, info.epochs, init=self.online_weight_init,
                          final=self.online_weight, steps=self.online_growth_steps,
                          start=self.online_start)
        agg_loss, target = None, None
        if w > 0:
            with torch.autocast(x.device.type, enabled=False):
                group = self.aggregator([z.detach().float() for z in logits], x)
                agg_loss = F.cross_entropy(group, targets)
            target = group.detach()
            log["agg_ce"] = agg_loss.detach()
        losses = []
        for k, peer in enumerate(PEERS):
            num, den = self._normalise(k, terms[k])
            offline = self.peer_scale[k] * num / den
            online = kd_loss(logits[k], target, self.T) if target is not None else offline * 0
            losses.append(w * online + (1.0 - w) * offline)
            log[f"{peer}_offline"], log[f"{peer}_online"] = offline.detach(), online.detach()
        return losses, agg_loss, log

    @torch.no_grad()
    def aggregate(self, logits: list[Tensor], x: Tensor) -> Tensor | None:
        if self.aggregator is None:
            return None
        return self.aggregator(logits, x)

    @torch.no_grad()
    def end_epoch(self, students: Sequence[nn.Module], epoch: int) -> None:
        """PCL: fold the finished epoch into each peer's temporal mean (the published per-epoch
        ``alpha = min(1 - 1/(epoch + 1), pcl_ema)``)."""
        if not len(self.means):
            return
        alpha = min(1.0 - 1.0 / (epoch + 1), self.pcl_ema)
        for mean, live in zip(self.means, students, strict=True):  # weights only, as published;
            for m, p in zip(mean.parameters(), live.parameters(), strict=True):  # BN statistics
                m.mul_(alpha).add_(p.detach(), alpha=1.0 - alpha)  # are the mean model's own

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        raise RuntimeError("modreduce couples three students: it runs as a PeerGroup "
                           "(kdsweep.engine.peers), not as a single student's method")
