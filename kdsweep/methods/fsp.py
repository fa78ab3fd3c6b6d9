"""Flow of solution procedure (FSP) matrices, with their pre-stage."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import match_spatial, require_features
from kdsweep.models import ModelOutput


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """``G[b, i, j] = mean_{h,w} bottom[b, i, h, w] * top[b, j, h, w]`` (float32, ``B x C1 x C2``),
    after average-pooling the larger of the two maps to the other's H x W."""
    bottom, top = match_spatial(bottom, top)
    x = bottom.float().flatten(2)
    y = top.float().flatten(2)
    return torch.bmm(x, y.transpose(1, 2)) / x.shape[-1]


def fsp_loss(feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
    """``sum_i mean((G_s^i - G_t^i)^2)`` over consecutive pairs ``(f_i, f_{i+1})``."""
    total = feats_s[0].new_zeros((), dtype=torch.float32)
    for i in range(len(feats_s) - 1):
        g_s = fsp_matrix(feats_s[i], feats_s[i + 1])
        g_t = fsp_matrix(feats_t[i], feats_t[i + 1])
        total = total + (g_s - g_t).pow(2).mean()
    return total


@register_method("fsp")
class FSP(FeatureMethod):
    """Flow of Solution Procedure, Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning", CVPR 2017 (no arXiv version;
    follows RepDistiller's ``FSP`` and its ``init()`` pre-stage for ``fsp``).

    For consecutive feature maps ``(f_i, f_{i+1})`` of ``feats`` (f0 = stem .. fn, RepDistiller's
    ``feat[:-1]``), the larger map is average-pooled to the smaller one's H x W and::

        G^i[c1, c2] = mean_{h,w} f_i[c1, h, w] * f_{i+1}[c2, h, w]        (C_i x C_{i+1} per sample)
        L_fsp = sum_i mean_{b,c1,c2} (G_s^i - G_t^i)^2

    The student's and the teacher's ``G^i`` must have the same size: both need the same number of
    maps with the same channel counts (spatial sizes may differ); other pairs are refused by
    :meth:`build` (RepDistiller raises ``num of channels not equal``; its table marks FSP N/A for
    e.g. wrn_40_2 -> wrn_40_1 and every cross-family pair).

    **Pre-stage** (``init_epochs`` epochs, :meth:`init_forward`): ``L_fsp`` trains the student's
    body (:meth:`init_parameters`; term ``fsp``). **Main stage**: ``ce_weight * CE
    [+ kd_weight * KD] [+ feat_weight * L_fsp]``; RepDistiller adds no FSP term there
    (``loss_kd = 0``; its ``-b 50`` is unused), so ``feat_weight`` defaults to 0.

    Defaults: ``init_epochs 30`` (``--init_epochs 30``), ``feat_weight 0, ce 1, kd 0, T 4``
    (``-a 0``). Logged terms: ``init_fsp`` (pre-stage), ``ce``, ``kd`` / ``fsp`` when their
    weights are > 0. Deviation: the pooling target is the smaller map's full (H, W) (the code
    pools to a square ``(H, H)``; identical for square maps).
    """

    def __init__(self, feat_weight: Weight = 0.0, init_epochs: Annotated[int, Range(0)] = 30,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.init_epochs = feat_weight, init_epochs
        self._init_logits(ce_weight, kd_weight, T)

    checks_pair = True

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        c_s = [int(f.shape[1]) for f in student_out.feats]
        c_t = [int(f.shape[1]) for f in teacher_out.feats]
        if c_s != c_t:
            pair = ""
            if getattr(context, "teacher_arch", None) and getattr(context, "student_arch", None):
                pair = f" {context.teacher_arch} -> {context.student_arch}"
            raise ConfigError(
                f"method 'fsp' cannot serve the pair{pair}: its FSP matrices need equal channel "
                f"counts at every map f0..fn; teacher {c_t}, student {c_s}")

    def _loss(self, student_out: ModelOutput, teacher_out: ModelOutput | None) -> Tensor:
        require_features(self.name, teacher_out, "teacher")
        feats_t = [f.detach() for f in teacher_out.feats]
        with torch.autocast(feats_t[0].device.type, enabled=False):
            return fsp_loss(student_out.feats, feats_t)

    # -- pre-stage ------------------------------------------------------------------------------
    def init_parameters(self, body: list[nn.Parameter]) -> list[nn.Parameter]:
        """The student's body only (RepDistiller's ``init_trainable_list``)."""
        return list(body)

    def init_forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                     info: StepInfo) -> dict[str, Tensor]:
        return {"fsp": self._loss(student_out, teacher_out)}

    # -- main stage -----------------------------------------------------------------------------
    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        terms = self._logit_terms(student_out, teacher_out, targets)
        if self.feat_weight > 0:
            terms["fsp"] = self.feat_weight * self._loss(student_out, teacher_out)
        return terms
