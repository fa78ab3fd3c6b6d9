"""Relational knowledge distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import FeatureMethod, StepInfo, Temperature, Weight, register_method
from kdsweep.methods.connectors import require_features
from kdsweep.models import ModelOutput


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix; squared distances clamped at ``eps``, the diagonal set to 0."""
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (e @ e.t())).clamp_min(eps)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def rkd_distance(e_s: Tensor, e_t: Tensor, eps: float = 1e-12) -> Tensor:
    """Huber loss between the distance matrices, each divided by its mean non-zero distance."""
    with torch.no_grad():
        d_t = pairwise_distances(e_t, eps)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = pairwise_distances(e_s, eps)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def rkd_angle(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Huber loss between the cosines of the angles ``e_i - e_j, e_k - e_j`` of all triplets."""

    def cosines(e: Tensor) -> Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = e_i - e_j
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    with torch.no_grad():
        a_t = cosines(e_t)
    return F.smooth_l1_loss(cosines(e_s), a_t)


@register_method("rkd")
class RKD(FeatureMethod):
    """Relational Knowledge Distillation, Park, Kim, Lu & Cho, CVPR 2019, arXiv:1904.05068
    (RepDistiller's ``RKDLoss``).

    On the pooled embeddings ``e`` (the classifier's input), with ``psi_D(i,j) = ||e_i - e_j|| / mu``
    (``mu`` the mean non-zero distance of the batch) and ``psi_A(i,j,k) = cos angle(e_i - e_j,
    e_k - e_j)``, and ``l_delta`` the Huber (smooth-L1, delta 1) loss averaged over the entries::

        loss = ce_weight * CE + distance_weight * l_delta(psi_D^s, psi_D^t)
               + angle_weight * l_delta(psi_A^s, psi_A^t)  [+ kd_weight * KD]

    Relations are ``b x b`` (``b x b x b``) whatever the embedding sizes, so any pair works without
    a connector. Defaults: ``distance 25, angle 50, ce 1`` (RepDistiller ``w_d=25, w_a=50``, ``-b 1``;
    squared distances clamped at 1e-12). Logged terms: ``ce``, ``distance``, ``angle``.
    """

    teacher_reads = "pooled"  # the teacher's pooled embedding (and logits) only

    def __init__(self, distance_weight: Weight = 25.0, angle_weight: Weight = 50.0,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self._init_logits(ce_weight, kd_weight, T)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        require_features(self.name, student_out, "student", pooled=True)
        require_features(self.name, teacher_out, "teacher", pooled=True)
        terms = self._logit_terms(student_out, teacher_out, targets)
        e_s = student_out.pooled.float().flatten(1)
        e_t = teacher_out.pooled.detach().float().flatten(1)
        if self.distance_weight > 0:
            terms["distance"] = self.distance_weight * rkd_distance(e_s, e_t)
        if self.angle_weight > 0:
            terms["angle"] = self.angle_weight * rkd_angle(e_s, e_t)
        return terms
