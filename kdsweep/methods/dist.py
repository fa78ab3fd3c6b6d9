"""DIST: distillation of the inter-class and intra-class relations of the predictions."""

from __future__ import annotations

import torch
from torch import Tensor

from kdsweep.methods.base import Method, StepInfo, Temperature, Weight, register_method
from kdsweep.methods.logits import logit_terms
from kdsweep.models import ModelOutput

#: Added to the product of the two norms in the Pearson correlation (the reference code's eps).
EPS = 1e-8


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it is float64 (half and bfloat16 logits are upcast)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pearson_rows(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: the cosine of the
    mean-centred rows, with ``eps`` added to the product of the norms (so a constant row gives 0
    instead of 0/0)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_relations(student_logits: Tensor, teacher_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """``(inter, intra)``, each ``T^2 * (1 - mean Pearson correlation)``, in float32 (float64
    for float64 logits).

    With ``Y = softmax(z / T)`` (batch x classes): *inter* correlates the rows (each sample's
    distribution over the classes, averaged over the batch), *intra* the columns (each class's
    probabilities across the batch, averaged over the classes).
    """
    y_s = (at_least_fp32(student_logits) / T).softmax(dim=1)
    y_t = (at_least_fp32(teacher_logits) / T).softmax(dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
    return inter * (T * T), intra * (T * T)


@register_method("dist")
class DIST(Method):
    """DIST, Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
    NeurIPS 2022, arXiv:2205.10536; follows the authors' code (hunto/DIST_KD, whose loss is
    ``lib/models/losses/dist_kd.py`` of hunto/image_classification_sota, the classification
    submodule).

    With ``Y_s = softmax(z_s / T)``, ``Y_t = softmax(z_t / T)`` (``B x C``) and
    ``rho(u, v) = <u - mean u, v - mean v> / (||u - mean u|| ||v - mean v|| + 1e-8)``::

        inter = T^2 * (1 - mean_i rho(Y_s[i, :], Y_t[i, :]))     (each sample over the classes)
        intra = T^2 * (1 - mean_c rho(Y_s[:, c], Y_t[:, c]))     (each class across the batch)
        loss  = ce_weight * CE(z_s, y) + beta * inter + gamma * intra
                [+ kd_weight * T^2 * KL(p_t || p_s)]

    Defaults are the authors' CIFAR-100 recipe, ``configs/strategies/distill/dist_cifar.yaml``:
    ``kd: dist_t4`` (``DIST(beta=1, gamma=1, tau=4)``, ``tau^2`` on each relation),
    ``kd_loss_weight: 2``, ``ori_loss_weight: 1``; the loss weight is folded into ``beta`` and
    ``gamma``: ``beta 2, gamma 2, T 4, ce_weight 1``. (ImageNet, ``resnet_dist.yaml``: ``kd: dist``,
    i.e. ``tau 1``, with ``kd_loss_weight: 2``: ``beta 2, gamma 2, T 1``; not automatic.) ``kd_weight``
    (0) adds Hinton's KD at the same ``T``; it is not part of DIST. Computed in float32 from the
    logits (so under bf16 autocast too). Logged terms: ``ce``, ``inter``, ``intra`` (and ``kd``),
    each already weighted. The intra-class relation needs a batch of at least two samples: for a
    single sample every column is constant, its correlation is 0 and ``intra`` is the constant
    ``gamma * T^2`` with no gradient (as in the reference code). No deviation.
    """

    def __init__(self, ce_weight: Weight = 1.0, beta: Weight = 2.0, gamma: Weight = 2.0,
                 T: Temperature = 4.0, kd_weight: Weight = 0.0):
        super().__init__()
        self.ce_weight, self.beta, self.gamma = ce_weight, beta, gamma
        self.T, self.kd_weight = T, kd_weight

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "dist needs a teacher"
        t_logits = teacher_out.logits.detach()
        terms = logit_terms(student_out.logits, t_logits, targets, ce_weight=self.ce_weight,
                            kd_weight=self.kd_weight, T=self.T)
        inter, intra = dist_relations(student_out.logits, t_logits, self.T)
        terms["inter"] = self.beta * inter
        terms["intra"] = self.gamma * intra
        return terms
