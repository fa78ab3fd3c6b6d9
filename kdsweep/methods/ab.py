"""Activation-boundary distillation (AB), with its connector pre-stage."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import ConvReg, align_tail, require_features
from kdsweep.models import ModelOutput

#: RepDistiller's ``ABLoss`` divides the weighted sum by the batch size, then by 1000 and times 3.
AB_SCALE = 3.0 / 1000.0


def boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """Squared-hinge activation-boundary loss of one stage, summed over every element.

    Where the teacher's pre-activation is positive (the neuron fires) the student's is pushed
    above ``+margin``; where it is <= 0, below ``-margin``::

        sum [t > 0] * relu(margin - s)^2 + [t <= 0] * relu(s + margin)^2

    (the same values and gradients as the reference's masked ``(s -/+ m)^2`` products).
    """
    s, t = source.float(), target.float()
    gap = torch.where(t > 0, F.relu(margin - s), F.relu(s + margin))
    return gap.pow(2).sum()


def ab_loss(sources: list[Tensor], targets: list[Tensor], margin: float) -> Tensor:
    """``sum_j 2^(j-n+1) * boundary_loss_j / B * 3 / 1000`` over ``n`` stage pairs (j = 0..n-1:
    the deepest stage has weight 1, each shallower one half the next)."""
    n, b = len(sources), sources[0].shape[0]
    total = sources[0].new_zeros((), dtype=torch.float32)
    for j, (s, t) in enumerate(zip(sources, targets, strict=True)):
        total = total + 2.0 ** (j - n + 1) * boundary_loss(s, t, margin)
    return total / b * AB_SCALE


def ab_connector(s_shape: torch.Size, t_shape: torch.Size) -> nn.Module:
    """RepDistiller's ``Connector`` for one stage: identity when channels and H x W already match,
    else ``ConvReg`` without its ReLU (conv chosen by the sizes, then BatchNorm)."""
    if tuple(s_shape[1:]) == tuple(t_shape[1:]):
        return nn.Identity()
    return ConvReg(s_shape, t_shape, use_relu=False)


@register_method("ab")
class AB(FeatureMethod):
    """Activation Boundaries, Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of
    Activation Boundaries Formed by Hidden Neurons", AAAI 2019, arXiv:1811.03233 (follows
    RepDistiller's ``ABLoss``, ``Connector`` and its ``init()`` pre-stage for ``abound``).

    **Pre-stage** (``init_epochs`` epochs, :meth:`init_forward`): on the pre-ReLU stage maps
    ``preact_feats[1:]`` (RepDistiller's ``feat[1:-1]`` with ``preact=True``), a connector ``r_j``
    takes the student's map to the teacher's shape (identity when they already match, else
    ``ConvReg`` + BN without ReLU), and with ``m = margin``::

        L_j = sum_{b,c,h,w} [t > 0] relu(m - r_j(s))^2 + [t <= 0] relu(r_j(s) + m)^2
        L_ab = sum_{j=0..n-1} 2^(j-n+1) * L_j / B * 3 / 1000

    trained on the connectors and the student's body (:meth:`init_parameters`; term ``ab``).

    **Main stage** (:meth:`forward`): ``ce_weight * CE [+ kd_weight * KD] [+ feat_weight * L_ab]``.
    RepDistiller adds no AB term there (``loss_kd = 0``; its ``-b 1`` is unused), so
    ``feat_weight`` defaults to 0; when > 0 the connectors run in eval mode (RepDistiller's
    ``module_list[1].eval()``) and the engine keeps them out of the main optimiser (they are
    returned by :meth:`init_parameters`, RepDistiller's ``trainable_list`` lacks them). With
    ``init_epochs=0`` nothing calls :meth:`init_parameters`: the connectors then train with the
    student in the main stage, in train mode (AB as a one-stage loss).

    Defaults: ``margin 1`` (``ABLoss(margin=1.0)``), ``init_epochs 30`` (``--init_epochs 30``),
    ``feat_weight 0, ce 1, kd 0, T 4`` (``-a 0``, no main-stage AB term). Logged terms: ``init_ab``
    (pre-stage), ``ce``, ``kd`` / ``ab`` when their weights are > 0.

    Deviations: when the two models have different numbers of stages the deepest ones are paired
    (RepDistiller asserts equal lengths), the weights ``2^(j-n+1)`` counting the paired stages;
    where RepDistiller's ``ConvReg`` raises (student map smaller than the teacher's by a factor
    other than 2) the connector is a 1x1 conv with bilinear upsampling, as for ``fitnet``.
    """

    def __init__(self, feat_weight: Weight = 0.0,
                 margin: Annotated[float, Range(0.0)] = 1.0,
                 init_epochs: Annotated[int, Range(0)] = 30,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.margin, self.init_epochs = feat_weight, margin, init_epochs
        self._init_logits(ce_weight, kd_weight, T)
        self.connectors = nn.ModuleList()
        self._built = False

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student", preact=True)
        require_features(self.name, teacher_out, "teacher", preact=True)
        g_s, g_t = align_tail(student_out.preact_feats[1:], teacher_out.preact_feats[1:])
        self.connectors = nn.ModuleList(
            ab_connector(f_s.shape, f_t.shape) for f_s, f_t in zip(g_s, g_t, strict=True))
        self._built = True

    def _loss(self, student_out: ModelOutput, teacher_out: ModelOutput | None) -> Tensor:
        assert self._built, "ab: build() was not called"
        require_features(self.name, teacher_out, "teacher", preact=True)
        n = len(self.connectors)
        g_s = student_out.preact_feats[1:][-n:]
        g_t = [f.detach() for f in teacher_out.preact_feats[1:][-n:]]
        sources = [conn(f) for conn, f in zip(self.connectors, g_s, strict=True)]
        with torch.autocast(g_s[0].device.type, enabled=False):
            return ab_loss(sources, g_t, self.margin)

    # -- pre-stage ------------------------------------------------------------------------------
    def init_parameters(self, body: list[nn.Parameter]) -> list[nn.Parameter]:
        """The connectors and the student's body (RepDistiller's ``init_trainable_list``)."""
        return [*self.connectors.parameters(), *body]

    def init_forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                     info: StepInfo) -> dict[str, Tensor]:
        self.connectors.train()
        return {"ab": self._loss(student_out, teacher_out)}

    # -- main stage -----------------------------------------------------------------------------
    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        terms = self._logit_terms(student_out, teacher_out, targets)
        if self.feat_weight > 0:
            if self.init_epochs > 0:  # trained in the pre-stage: frozen, running statistics
                self.connectors.eval()
            terms["ab"] = self.feat_weight * self._loss(student_out, teacher_out)
        return terms
