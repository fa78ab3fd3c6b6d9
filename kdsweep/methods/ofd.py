"""Overhaul of feature distillation (OFD, "margin ReLU")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    OneOf,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import ConnectorConvBN, align_tail, require_features
from kdsweep.models import ModelOutput, bn_margin


def partial_l2(source: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2 distance, summed over C, H, W and averaged over the batch.

    The teacher's pre-ReLU map is first raised to its margin, ``t' = max(t, m)`` (negative
    responses the ReLU would drop become the channel's expected negative value ``m``); a position
    contributes ``(s - t')^2`` unless ``t' <= 0`` and ``s <= t'`` (the student is already at or
    below a non-positive target, so the ReLU would give the same output).
    """
    t = torch.maximum(target, margin)
    mask = (source > t) | (t > 0)
    return ((source - t).pow(2) * mask).flatten(1).sum(1).mean()


@register_method("ofd")
class OFD(FeatureMethod):
    """A Comprehensive Overhaul of Feature Distillation, Heo, Kim, Yun, Park, Kwak & Choi,
    ICCV 2019, arXiv:1904.01866 (as in mdistiller's ``OFD``).

    For the pre-ReLU stage maps ``preact_feats[1:]`` (f1..fn before their last ReLU; the deepest
    stages are paired when the two models have different numbers of stages), a connector ``r_j``
    (``k x k`` conv + BN) maps the student's channels to the teacher's, the teacher's map is
    average-pooled to the student's H x W, and with the per-channel margin
    ``m = E[x | x < 0]`` of the teacher's BN-before-ReLU output ``x ~ N(beta, |gamma|)``
    (:func:`kdsweep.models.bn_margin`)::

        d_p(s, t) = sum_{c,h,w} [ (s - max(t, m))^2  unless  max(t, m) <= 0 and s <= max(t, m) ]
        loss = ce_weight * CE + feat_weight * sum_j 2^-(n-j) * mean_b d_p(r_j(s_j), pool(t_j))
               [+ kd_weight * KD]

    (``j = 1..n``; the deepest stage has weight 1, each shallower one half the next). Defaults
    (mdistiller ``OFD.*``): ``feat_weight 1e-3, connector kernel_size 1, ce 1``.

    ``teacher_bn``: both reference implementations (clovaai/overhaul-distillation and mdistiller,
    whose ``OFD.train()`` puts the teacher in training mode with the student) run the teacher's
    BatchNorm on batch statistics during distillation steps; ``teacher_bn=train`` asks the engine
    for that (the method's :attr:`teacher_mode`), ``eval`` (the default, as every other kdsweep
    method) uses the running statistics. An engine that cannot honour ``train``
    (``BuildContext.teacher_modes``) makes :meth:`build` refuse it in one line instead of
    silently running in eval mode.

    The margins come from the *teacher module* (its BN layers), which a ``ModelOutput`` does not
    carry: call :meth:`set_teacher` with the teacher's :class:`~kdsweep.models.FeatureTap` (or
    its list of BN-before-ReLU layers, or the margins themselves) before :meth:`build`, or give
    ``BuildContext`` a ``teacher_tap`` field. Logged terms: ``ce``, ``ofd``.
    """

    def __init__(self, feat_weight: Weight = 1e-3, kernel_size: Annotated[int, Range(1)] = 1,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0,
                 teacher_bn: Annotated[str, OneOf(("eval", "train"))] = "eval"):
        super().__init__()
        self.teacher_bn = teacher_bn
        self.feat_weight = feat_weight
        if kernel_size % 2 != 1:
            raise ConfigError(f"method.kernel_size={kernel_size!r} must be an odd integer >= 1")
        self.kernel_size = int(kernel_size)
        self._init_logits(ce_weight, kd_weight, T)
        self.connectors = nn.ModuleList()
        self._num_margins = -1  # margin buffers margin0.. for teacher stages f1..fn; -1: not set

    @property
    def teacher_mode(self) -> str:
        """How the engine should run the teacher during training steps: ``eval`` or ``train``."""
        return self.teacher_bn

    # -- teacher statistics ---------------------------------------------------------------------
    def set_teacher(self, teacher: Any) -> None:
        """Take the margins from the teacher: a ``FeatureTap``, a list of ``BatchNorm2d`` (one per
        stage f1..fn) or a list of per-channel margin tensors. The teacher must be final (loaded)."""
        if hasattr(teacher, "bn_before_relu"):
            teacher = teacher.bn_before_relu()
        margins = [bn_margin(m) if isinstance(m, nn.BatchNorm2d) else torch.as_tensor(m)
                   for m in teacher]
        self._set_margins(margins)

    def _set_margins(self, margins: Sequence[Tensor]) -> None:
        for i in range(max(self._num_margins, 0)):
            delattr(self, f"margin{i}")
        for i, m in enumerate(margins):
            # non-persistent: derived from the teacher, never checkpointed; moves with .to()
            self.register_buffer(f"margin{i}", m.detach().float().flatten().clone(),
                                 persistent=False)
        self._num_margins = len(margins)

    def margins(self) -> list[Tensor]:
        """The per-channel margins of the teacher's stages f1..fn (empty until set)."""
        return [getattr(self, f"margin{i}") for i in range(max(self._num_margins, 0))]

    # -- Method interface -----------------------------------------------------------------------
    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student", preact=True)
        require_features(self.name, teacher_out, "teacher", preact=True)
        if self.teacher_bn not in getattr(context, "teacher_modes", ("eval",)):
            raise ConfigError(
                f"method.teacher_bn={self.teacher_bn} (the teacher's BatchNorm on batch statistics, "
                "as the OFD reference code) is not supported by this kdsweep engine yet; use "
                "method.teacher_bn=eval")
        if self._num_margins < 0:
            tap = getattr(context, "teacher_tap", None)
            if tap is None:
                raise ConfigError(
                    f"method {self.name!r} needs the teacher's BN-before-ReLU statistics: the "
                    "engine must pass the teacher's FeatureTap (BuildContext.teacher_tap or "
                    "method.set_teacher(tap)) before build()"
                )
            self.set_teacher(tap)
        t_feats = teacher_out.preact_feats[1:]
        if self._num_margins != len(t_feats):
            raise ConfigError(
                f"method {self.name!r}: the teacher declares {self._num_margins} BN-before-ReLU "
                f"layers for {len(t_feats)} stages"
            )
        s_feats, t_feats = align_tail(student_out.preact_feats[1:], t_feats)
        for j, (m, f_t) in enumerate(zip(self.margins()[-len(t_feats):], t_feats, strict=True)):
            if m.numel() != f_t.shape[1]:
                raise ConfigError(
                    f"method {self.name!r}: teacher stage {j} has {f_t.shape[1]} channels but its "
                    f"BN-before-ReLU has {m.numel()}"
                )
        self.connectors = nn.ModuleList(
            ConnectorConvBN(f_s.shape[1], f_t.shape[1], self.kernel_size)
            for f_s, f_t in zip(s_feats, t_feats, strict=True)
        )

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert len(self.connectors) > 0, "ofd: build() was not called"
        terms = self._logit_terms(student_out, teacher_out, targets)
        n = len(self.connectors)
        s_feats = student_out.preact_feats[1:][-n:]
        t_feats = teacher_out.preact_feats[1:][-n:]
        margins = self.margins()[-n:]
        loss = 0.0
        for j, (conn, f_s, f_t, m) in enumerate(zip(self.connectors, s_feats, t_feats, margins,
                                                    strict=True)):
            s = conn(f_s).float()
            t = F.adaptive_avg_pool2d(f_t.detach().float(), s.shape[-2:])
            loss = loss + partial_l2(s, t, m.view(1, -1, 1, 1)) / 2 ** (n - 1 - j)
        terms["ofd"] = self.feat_weight * loss
        return terms


@register_method("margin_relu")
class MarginReLU(OFD):
    """Alias of :class:`OFD` (``method=margin_relu``): the same method and defaults."""
