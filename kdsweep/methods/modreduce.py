"""ModReduce: response (KD), relational (CRD) and feature (SemCKD) distillers joined by online learning.

ModReduce, Abbas et al. (github.com/Yahya-Abbas/ModReduce) trains three students of the same architecture, one
per knowledge type, and lets them teach each other online through an aggregator of their
predictions. kdsweep trains one student, so the three students become three *peers that share
the student's backbone* (the multi-branch layout of ONE and PCL, the online methods the seed
aggregates with): the student's own classifier is the response peer, and the relational and
feature peers are heads owned by this method. See :class:`ModReduce` for the exact differences.
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
    BuildContext,
    Count,
    Fraction,
    Length,
    Method,
    OneOf,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.crd import CRD_MODES, CRDObjective, require
from kdsweep.methods.logits import kd_loss, logit_terms
from kdsweep.methods.semckd import SemCKDObjective, attention_width
from kdsweep.models import ModelOutput

PEERS = ("resp", "rel", "feat")  # response (Hinton KD), relational (CRD), feature (SemCKD)
#: The seed's online-learning methods (its ``--ol`` choices ``pcl``, ``One``, ``FC``, ``W_Avg``).
ONLINE = ("PCL", "ONE", "FC", "WAvg")


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


class PeerHead(nn.Module):
    """A peer branch on the shared pooled embedding: ``Linear(D, D)-BN-ReLU`` then a classifier."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(pooled)
        return h, self.fc(h)


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
    """ONE (Lan et al. 2018): per-sample weights from a gate on low-level features.

    ``w(x) = softmax(ReLU(W avgpool_2x2(f0) + b))``, ``g = sum_k w_k(x) z_k``; ``f0`` is the
    student's stem output (the seed pools the input image 16x16 -> 2x2; the method never sees it).
    """

    def __init__(self, n: int, stem_channels: int):
        super().__init__()
        self.fc = nn.Linear(4 * stem_channels, n)

    def weights(self, gate_input: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(gate_input.float(), 2).flatten(1)
        return F.softmax(F.relu(self.fc(pooled)), 1)

    def forward(self, logits: Sequence[Tensor], gate_input: Tensor) -> Tensor:
        w = self.weights(gate_input)
        return sum(w[:, k:k + 1] * z for k, z in enumerate(logits))


@register_method("modreduce")
class ModReduce(Method):
    """ModReduce (ModReduce, Abbas et al.): Abbas, Badawy, Mahfouz, Hussein, Ayman, Eraqi & Salama, "ModReduce: A
    Multi-Knowledge Distillation Framework" (with Online Learning, ICLR 2023 submission; code
    github.com/Yahya-Abbas/ModReduce).

    Three peers, one per knowledge type, learn offline from the teacher and online from each
    other. Peer ``k`` has logits ``z_k``; its offline loss is the seed's normalised sum::

        resp: O_r = s_r (a CE(z_r) + b KD(z_r))                          / (a + b)
        rel:  O_c = s_c (a CE(z_c) + b KD(z_c) + c_crd L_crd(h_c, t))      / (a + b + c_crd)
        feat: O_f = s_f (a CE(z_f) + b KD(z_f) + c_sem L_sem(F_s, F_t))    / (a + b + c_sem)

    (``a = ce_weight``, ``b = kd_weight``, KD at temperature ``T``, ``s = peer_scale``, the seed's
    per-student factors 10 / 1 / 100). With an aggregator (``online``: ``WAvg``, ``FC`` or ``ONE``)
    the detached peer logits give a group output ``g`` (trained only by ``CE(g, y)``) and::

        loss = sum_k [ w_ol KD_T(z_k || g) + (1 - w_ol) O_k ] + CE(g, y)

    ``w_ol`` grows from ``online_weight_init`` to ``online_weight`` (seed 0.01 -> 0.7, see
    :func:`online_weight`), or is 0 until ``online_start`` and ``online_weight`` after it. With
    ``online: PCL`` (peer collaborative learning, Wu & Gong 2021) each peer instead distils from the
    temporal means ``zbar_j`` of the others, ramped by ``r = sigmoid_rampup(epoch, pcl_rampup E)``::

        loss_k = s_k (off_k + r b KD(z_k) + r sum_{j != k} KD_{pcl_T}(z_k || zbar_j)) / (W_k + b + r)

    where ``off_k`` is the numerator above without its KD term and ``W_k`` its weight sum.

    Differences from the seed (one student instead of three students of the same architecture,
    the best of which the seed deploys):
    - The peers share the student's backbone. The response peer is the student itself (the
      deployed model); the relational and feature peers are :class:`PeerHead` branches (Linear-BN-
      ReLU + classifier) on the student's pooled embedding. CRD acts on the relational head's hidden
      embedding ``h_c``; SemCKD on the shared stage features. All offline and online losses are
      summed and train the shared backbone together (the seed steps each student with its own).
    - The aggregator is trained by the run's optimiser and learning rate (the seed: its own SGD,
      lr 0.1). WAvg uses ``softmax(theta)`` (the seed re-softmaxes its stored weights every step).
      ONE's gate reads the student's stem features ``f0`` instead of the input image.
    - PCL: the temporal means of the two heads are kept here (the seed's per-epoch
      ``min(1 - 1/(e+1), pcl_ema)`` average, applied to the current detached backbone features);
      the response peer is the student, whose weights the method cannot average, so its "mean
      teacher" is its current detached prediction. The means start as copies of the heads.
    - Ramps are fractions of the schedule (seed: 80 of 240 epochs for PCL = 1/3, a growth stage
      every 10 of 240 epochs = 24 stages; ``--cutoff_epoch 220`` is ``online_start 0.9167``).

    Logged terms: ``{resp,rel,feat}_{ce,kd,online|peer}``, ``rel_crd``, ``feat_semckd``, ``agg_ce``.
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
                 feat_dim: Count = 128, nce_k: Count = 16384, nce_t: Temperature = 0.07,
                 nce_m: Fraction = 0.5, crd_mode: Annotated[str, OneOf(CRD_MODES)] = "exact",
                 batch_size: Count | None = None):
        super().__init__()
        self.online = online
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.crd_weight, self.semckd_weight, self.peer_scale = crd_weight, semckd_weight, peer_scale
        self.online_weight, self.online_weight_init = online_weight, online_weight_init
        self.online_growth_steps, self.online_start = online_growth_steps, online_start
        self.pcl_T, self.pcl_rampup, self.pcl_ema = pcl_T, pcl_rampup, pcl_ema
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.crd_mode, self.batch_size = crd_mode, batch_size
        for peer, extra in zip(PEERS, (0.0, self.crd_weight, self.semckd_weight), strict=True):
            if self.ce_weight + self.kd_weight + extra <= 0:
                raise ConfigError(f"modreduce: peer {peer!r} has no loss (its weights sum to 0)")
        self.heads: nn.ModuleDict | None = None

    # -- parts -------------------------------------------------------------------------------
    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        s = require(self.name, student_out, "student", pooled=True, feats=True)
        t = require(self.name, teacher_out, "teacher", pooled=True, feats=True)
        device = s.logits.device
        dim, num_classes = s.pooled.flatten(1).shape[1], s.logits.shape[1]
        self.heads = nn.ModuleDict({p: PeerHead(dim, num_classes) for p in PEERS[1:]})
        self.crd = CRDObjective(dim, t.pooled.flatten(1).shape[1], feat_dim=self.feat_dim,
                                nce_k=self.nce_k, nce_t=self.nce_t, nce_m=self.nce_m,
                                mode=self.crd_mode, num_train=context.num_train,
                                train_labels=context.train_labels, owner=self.name)
        self.semckd = SemCKDObjective([f.shape[1] for f in s.feats[1:]],
                                      [f.shape[1] for f in t.feats[1:]],
                                      attention_width(self.name, self.batch_size, context))
        n = len(PEERS)
        if self.online == "WAvg":
            self.aggregator = WeightedAverage(n)
        elif self.online == "FC":
            self.aggregator = FCAggregator(n, num_classes)
        elif self.online == "ONE":
            self.aggregator = GateAggregator(n, s.feats[0].shape[1])
        else:  # PCL: temporal means of the heads instead of an aggregator
            self.aggregator = None
            self.mean_heads = copy.deepcopy(self.heads).requires_grad_(False)
            self.register_buffer("mean_epoch", torch.tensor(-1, dtype=torch.long))
        self.to(device)

    @torch.no_grad()
    def _update_means(self, epoch: int) -> None:
        """At the first step of a new epoch, fold the finished epoch's heads into their means."""
        seen = int(self.mean_epoch)
        if epoch <= seen:
            return
        if seen >= 0:
            alpha = min(1.0 - 1.0 / (seen + 1), self.pcl_ema)
            for mean, live in zip(self.mean_heads.parameters(), self.heads.parameters(),
                                  strict=True):
                mean.mul_(alpha).add_(live.detach(), alpha=1.0 - alpha)
        self.mean_epoch.fill_(epoch)

    # -- loss --------------------------------------------------------------------------------
    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        if self.heads is None:
            raise RuntimeError("modreduce: build() must run before the first step")
        s = require(self.name, student_out, "student", pooled=True, feats=True)
        t = require(self.name, teacher_out, "teacher", pooled=True, feats=True)
        t_logits = t.logits.detach()
        pooled = s.pooled.flatten(1)
        h_rel, z_rel = self.heads["rel"](pooled)
        _, z_feat = self.heads["feat"](pooled)
        logits = {"resp": s.logits, "rel": z_rel, "feat": z_feat}

        # offline numerators (already weighted), before normalisation and peer scaling
        offline: dict[str, dict[str, Tensor]] = {}
        weights: dict[str, float] = {}
        for peer, extra in zip(PEERS, (0.0, self.crd_weight, self.semckd_weight), strict=True):
            offline[peer] = logit_terms(logits[peer], t_logits, targets, ce_weight=self.ce_weight,
                                        kd_weight=self.kd_weight, T=self.T)
            weights[peer] = self.ce_weight + extra  # the seed's "weights without KL"
        if self.crd_weight > 0:
            offline["rel"]["crd"] = self.crd_weight * self.crd(h_rel, t.pooled, info.indices, targets)
        if self.semckd_weight > 0:
            offline["feat"]["semckd"] = self.semckd_weight * self.semckd(s.feats[1:], t.feats[1:])

        terms: dict[str, Tensor] = {}
        if self.online == "PCL":
            self._update_means(info.epoch)
            r = sigmoid_rampup(info.epoch, self.pcl_rampup * info.epochs)
            with torch.no_grad():
                means = {"resp": s.logits.detach(),
                         "rel": self.mean_heads["rel"](pooled.detach())[1],
                         "feat": self.mean_heads["feat"](pooled.detach())[1]}
            for k, peer in enumerate(PEERS):
                factor = self.peer_scale[k] / (weights[peer] + self.kd_weight + r)
                for name, value in offline[peer].items():
                    terms[f"{peer}_{name}"] = factor * (r * value if name == "kd" else value)
                peer_kl = sum(kd_loss(logits[peer], means[j], self.pcl_T) for j in PEERS if j != peer)
                terms[f"{peer}_peer"] = factor * r * peer_kl
            return terms

        w = online_weight(info.epoch, info.epochs, init=self.online_weight_init,
                          final=self.online_weight, steps=self.online_growth_steps,
                          start=self.online_start)
        for k, peer in enumerate(PEERS):
            factor = (1.0 - w) * self.peer_scale[k] / (weights[peer] + self.kd_weight)
            for name, value in offline[peer].items():
                terms[f"{peer}_{name}"] = factor * value
        if w > 0:
            with torch.autocast(pooled.device.type, enabled=False):
                group = self.aggregator([logits[p].detach().float() for p in PEERS],
                                        s.feats[0].detach())
                terms["agg_ce"] = F.cross_entropy(group, targets)
            target = group.detach()
            for peer in PEERS:
                terms[f"{peer}_online"] = w * kd_loss(logits[peer], target, self.T)
        return terms
