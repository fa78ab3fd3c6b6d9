"""FitNets: hints for thin deep nets."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor

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
from kdsweep.methods.connectors import ConvReg, require_features
from kdsweep.models import ModelOutput


@register_method("fitnet")
class FitNet(FeatureMethod):
    """FitNets, Romero, Ballas, Kahou, Chassang, Gatta & Bengio, ICLR 2015, arXiv:1412.6550.

    A learned regressor ``r`` (RepDistiller's ``ConvReg``: a conv whose stride/kernel maps the
    student's hint map onto the teacher's H x W and channels, then BN + ReLU) makes the student's
    stage-``hint_layer`` map predict the teacher's::

        loss = ce_weight * CE + feat_weight * mean((r(f_s[h]) - f_t[h])^2)  [+ kd_weight * KD]

    ``h = hint_layer`` indexes ``ModelOutput.feats`` (f0 = stem), the same index as RepDistiller's
    ``feat[h]`` and mdistiller's ``feats[h]``. Defaults: ``hint_layer 2, feat_weight 100, ce 1``
    (RepDistiller ``-a 0 -b 100 --hint_layer 2``; mdistiller ``FITNET.*``). As in both, the hint
    is added to the CE in one stage (the paper trains the hint first, then KD). Logged terms:
    ``ce``, ``hint``.
    """

    def __init__(self, feat_weight: Weight = 100.0, hint_layer: Annotated[int, Range(0)] = 2,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.hint_layer = feat_weight, hint_layer
        self._init_logits(ce_weight, kd_weight, T)
        self.regressor: ConvReg | None = None

    def _hints(self, out: ModelOutput, who: str) -> Tensor:
        require_features(self.name, out, who, min_stages=1)
        if self.hint_layer >= len(out.feats):
            raise ConfigError(
                f"method.hint_layer={self.hint_layer} is out of range for the {who}: it has "
                f"feats f0..f{len(out.feats) - 1}"
            )
        return out.feats[self.hint_layer]

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        f_s = self._hints(student_out, "student")
        f_t = self._hints(teacher_out, "teacher")
        self.regressor = ConvReg(f_s.shape, f_t.shape)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert self.regressor is not None, "fitnet: build() was not called"
        terms = self._logit_terms(student_out, teacher_out, targets)
        f_s = self.regressor(student_out.feats[self.hint_layer])
        f_t = teacher_out.feats[self.hint_layer].detach()
        terms["hint"] = self.feat_weight * F.mse_loss(f_s.float(), f_t.float())
        return terms
