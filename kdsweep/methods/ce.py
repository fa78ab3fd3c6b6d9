"""Plain supervised training with cross-entropy: how teachers (and vanilla students) are trained."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import Fraction, Method, StepInfo, Weight, register_method
from kdsweep.models import ModelOutput


@register_method("ce")
class CrossEntropy(Method):
    """Cross-entropy on the labels, optionally with label smoothing (Szegedy et al., 2016).

    ``loss = ce_weight * CE(z_s, y)``. No teacher is used.
    """

    needs_teacher = False

    def __init__(self, ce_weight: Weight = 1.0, label_smoothing: Fraction = 0.0):
        super().__init__()
        self.ce_weight, self.label_smoothing = ce_weight, label_smoothing

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        ce = F.cross_entropy(student_out.logits, targets, label_smoothing=self.label_smoothing)
        return {"ce": self.ce_weight * ce}
