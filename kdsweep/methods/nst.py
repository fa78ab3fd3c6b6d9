"""Neuron selectivity transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import align_tail, match_spatial, require_features
from kdsweep.models import ModelOutput


def _wide(f: Tensor) -> Tensor:
    """``f`` in float32 (float64 stays float64: the tests compare in double precision)."""
    return f.to(torch.promote_types(f.dtype, torch.float32))


def neuron_distributions(f: Tensor) -> Tensor:
    """``(B, C, H*W)``: each channel's map flattened and scaled to unit L2 norm (a zero map stays
    zero), i.e. one sample per neuron of the paper's distribution."""
    return F.normalize(_wide(f).flatten(2), dim=2)


def poly_mmd2(s: Tensor, t: Tensor) -> Tensor:
    """Squared MMD with the kernel ``k(x, y) = (x^T y)^2`` between the rows of ``s`` (B, Cs, N)
    and of ``t`` (B, Ct, N): ``mean k(t, t') + mean k(s, s') - 2 mean k(s, t)``, each mean taken
    over the batch and all pairs of channels (the teacher term is a constant)."""
    k_tt = torch.bmm(t, t.transpose(1, 2)).pow(2).mean()
    k_ss = torch.bmm(s, s.transpose(1, 2)).pow(2).mean()
    k_st = torch.bmm(s, t.transpose(1, 2)).pow(2).mean()
    return k_tt.detach() + k_ss - 2.0 * k_st


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """One stage pair: the larger map average-pooled to the smaller one's H x W, then
    :func:`poly_mmd2` of the per-channel distributions (channel counts may differ)."""
    f_s, f_t = match_spatial(_wide(f_s), _wide(f_t))
    return poly_mmd2(neuron_distributions(f_s), neuron_distributions(f_t))


@register_method("nst")
class NST(FeatureMethod):
    """Neuron Selectivity Transfer, Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", arXiv:1707.01219 (2017); follows RepDistiller's ``NSTLoss``.

    Each channel ``c`` of a stage map is one sample ``f_c / ||f_c||`` (its ``H*W`` activations,
    L2-normalised) of the layer's distribution of neuron selectivity patterns; the student's and
    the teacher's distributions are matched by the squared maximum mean discrepancy with the
    degree-2 polynomial kernel ``k(x, y) = (x^T y)^2`` (RepDistiller's ``poly_kernel``: ``c = 0``,
    ``d = 2``, the paper's best kernel on CIFAR)::

        MMD^2_j = mean_{c,c'} k(t_c, t_c') + mean_{c,c'} k(s_c, s_c') - 2 mean_{c,c'} k(s_c, t_c')
        loss    = ce_weight * CE + feat_weight * sum_j MMD^2_j  [+ kd_weight * KD]

    (means also over the batch; the teacher-only term is a detached constant, as in the code's
    ``full_loss``). The stages are ``feats[1:]`` (f1..fn, RepDistiller's ``feat[1:-1]``); when
    the H x W of a pair differ the larger map is adaptive-average-pooled to the smaller one's size;
    channel counts may differ (the MMD compares two sets of samples), so there is no connector.
    When the models have different numbers of stages the deepest ones are paired. Computed in
    float32 with autocast off. Defaults: ``feat_weight 50, ce 1, kd 0`` (RepDistiller
    ``scripts/run_cifar_distill.sh``: ``--distill nst -a 0 -b 50``). Logged terms: ``ce``, ``nst``.

    Deviations: the code pools to a square ``(H, H)`` chosen by comparing heights; here the full
    ``(H, W)`` chosen by area (the same for the square CIFAR maps); the code zips the stages from
    the front, here the deepest are paired (the same when the counts are equal).
    """

    def __init__(self, feat_weight: Weight = 50.0, ce_weight: Weight = 1.0,
                 kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight = feat_weight
        self._init_logits(ce_weight, kd_weight, T)

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        terms = self._logit_terms(student_out, teacher_out, targets)
        g_s, g_t = align_tail(student_out.feats[1:], teacher_out.feats[1:])
        with torch.autocast(g_s[0].device.type, enabled=False):
            loss = sum(nst_loss(f_s, f_t.detach()) for f_s, f_t in zip(g_s, g_t, strict=True))
        terms["nst"] = self.feat_weight * loss
        return terms
