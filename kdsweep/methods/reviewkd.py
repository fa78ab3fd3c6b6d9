"""Knowledge review (ReviewKD): attention-based fusion of the student's levels + HCL."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.methods.base import (
    BuildContext,
    Count,
    FeatureMethod,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import align_tail, require_features
from kdsweep.models import ModelOutput

log = logging.getLogger(__name__)

#: The authors' CIFAR-100 weights (dvlab-research/ReviewKD ``CIFAR-100/script/reviewKD.sh``,
#: ``--kd-loss-weight``) by (teacher, student) in kdsweep's model names; every other pair uses
#: ``DEFAULT_WEIGHT``.
PAIR_WEIGHT: dict[tuple[str, str], float] = {
    ("wrn_40_2", "wrn_16_2"): 5.0, ("wrn_40_2", "wrn_40_1"): 5.0, ("wrn_40_2", "ShuffleV1"): 5.0,
    ("resnet32x4", "resnet8x4"): 5.0, ("resnet32x4", "ShuffleV1"): 5.0,
    ("resnet32x4", "ShuffleV2"): 8.0, ("resnet56", "resnet20"): 0.6, ("resnet110", "resnet32"): 1.0,
}
DEFAULT_WEIGHT = 5.0  # mdistiller configs/cifar100/reviewkd.yaml REVIEWKD_WEIGHT
#: HCL's pyramid: average-pooled sizes, each used only when smaller than the map.
HCL_LEVELS = (4, 2, 1)


def pair_weight(teacher: str | None, student: str | None) -> tuple[float, str]:
    """(ReviewKD weight, where it comes from) for a teacher/student pair."""
    if teacher is None or student is None:
        return DEFAULT_WEIGHT, "mdistiller's reviewkd.yaml (the engine did not name the pair)"
    if (teacher, student) in PAIR_WEIGHT:
        return PAIR_WEIGHT[teacher, student], f"the authors' weight for {teacher} -> {student}"
    return DEFAULT_WEIGHT, f"mdistiller's reviewkd.yaml ({teacher} -> {student} has no own value)"


def hcl_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """Hierarchical context loss, summed over the levels, in float32.

    Per level: ``(MSE + sum_k 2^-k MSE(pool_{l_k}(s), pool_{l_k}(t))) / (1 + sum_k 2^-k)`` where
    ``l_1, l_2, ...`` are the sizes of :data:`HCL_LEVELS` smaller than the map (``k`` counts only
    the sizes used, so an 8x8 map gets 1, 1/2, 1/4, 1/8 for full, 4, 2, 1 and a 4x4 map 1, 1/2,
    1/4 for full, 2, 1).
    """
    total = feats_s[0].new_zeros((), dtype=torch.float32)
    for f_s, f_t in zip(feats_s, feats_t, strict=True):
        f_s, f_t = f_s.float(), f_t.float()
        side = min(f_s.shape[-2:])
        level, weight, norm = F.mse_loss(f_s, f_t), 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= side:
                continue
            weight /= 2
            norm += weight
            level = level + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, size),
                                                F.adaptive_avg_pool2d(f_t, size))
        total = total + level / norm
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student level with the residual from the deeper levels.

    ``x' = BN(conv1x1(x))`` (``mid`` channels); when ``fuse``, the residual ``r`` is resized
    (nearest) to ``x'``'s H x W and ``x' <- a_0 x' + a_1 r`` with ``a = sigmoid(conv1x1([x', r]))``
    (two maps); ``x'`` is resized (nearest) to the teacher's H x W when they differ; the output is
    ``BN(conv3x3(x'))`` (teacher channels) and ``x'`` is the residual passed to the next level.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False),
                                   nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = (nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid())
                         if fuse else None)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None,
                out_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise RuntimeError("reviewkd: a fusing ABF needs the deeper level's residual")
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


@register_method("reviewkd")
class ReviewKD(FeatureMethod):
    """Distilling Knowledge via Knowledge Review, Chen, Liu, Zhao & Jia, CVPR 2021,
    arXiv:2104.09044 (follows mdistiller's ``ReviewKD`` and dvlab-research/ReviewKD).

    Levels: the student's stage maps ``feats[1:]`` (``preact_feats[1:]`` with ``student_preact``)
    plus its pooled vector as a 1x1 map; the teacher's ``preact_feats[1:]`` plus its pooled vector.
    The deepest ``n = min(n_s, n_t)`` levels are paired (pooled with pooled; ``align_tail``).
    From the deepest level to the shallowest, :class:`ABF` ``i`` maps student level ``i`` (fused
    with the residual of level ``i+1``; the deepest level is not fused) to the teacher level's
    channels and H x W, ``mid = min(max_mid_channels, C_pooled of the student)``::

        (y_i, r_i) = ABF_i(s_i, r_{i+1})
        HCL  = sum_i (MSE(y_i, t_i) + sum_k 2^-k MSE(pool_k(y_i), pool_k(t_i))) / (1 + sum_k 2^-k)
        loss = ce_weight * CE + feat_weight * min((epoch + 1) / warmup, 1) * HCL  [+ kd_weight * KD]

    (pools to 4, 2, 1 where smaller than the map; see :func:`hcl_loss`). ``epoch`` is 0-based
    (mdistiller's ``min(epoch / WARMUP_EPOCHS, 1)`` with 1-based epochs); factor 1 when
    ``warmup = 0``. Defaults: ``ce_weight 1`` (``REVIEWKD.CE_WEIGHT``), ``warmup 20``
    (``WARMUP_EPOCHS``, the authors' ``--kd-warm-up``), ``max_mid_channels 512`` (the code's
    ``min(512, in_channels[-1])``), ``student_preact false`` (``STU_PREACT``); ``feat_weight``
    null = per pair (:data:`PAIR_WEIGHT`, the authors' ``--kd-loss-weight``: 0.6 for resnet56 ->
    resnet20, 1 for resnet110 -> resnet32, 8 for resnet32x4 -> ShuffleV2, else 5 as in
    mdistiller's ``reviewkd.yaml``), resolved in :meth:`build` from the context's arch names and
    reported by :attr:`resolved`. Logged terms: ``ce``, ``reviewkd`` (weighted, warm-up included),
    ``kd``.
    """

    def __init__(self, feat_weight: Weight | None = None,
                 warmup: Annotated[float, Range(0.0)] = 20.0, max_mid_channels: Count = 512,
                 student_preact: bool = False, ce_weight: Weight = 1.0, kd_weight: Weight = 0.0,
                 T: Temperature = 4.0):
        super().__init__()
        self.per_pair = feat_weight is None
        self.feat_weight = DEFAULT_WEIGHT if feat_weight is None else feat_weight
        self.weight_source = ("mdistiller's reviewkd.yaml (not built yet)" if feat_weight is None
                              else "method.feat_weight")
        self.warmup, self.max_mid_channels = warmup, max_mid_channels
        self.student_preact = student_preact
        self._init_logits(ce_weight, kd_weight, T)
        self.abfs = nn.ModuleList()

    @property
    def resolved(self) -> dict[str, float | str]:
        """The values in use that the config left open (``method.feat_weight=null``), and why."""
        return {"feat_weight": self.feat_weight, "feat_weight_source": self.weight_source}

    def levels(self, student_out: ModelOutput | None,
               teacher_out: ModelOutput | None) -> tuple[list[Tensor], list[Tensor]]:
        """The paired (student, teacher) levels, shallow to deep, teacher detached."""
        require_features(self.name, student_out, "student", preact=self.student_preact)
        require_features(self.name, student_out, "student", pooled=True)
        require_features(self.name, teacher_out, "teacher", preact=True)
        require_features(self.name, teacher_out, "teacher", pooled=True)
        s_maps = student_out.preact_feats if self.student_preact else student_out.feats
        s = [*s_maps[1:], student_out.pooled.flatten(1)[:, :, None, None]]
        t = [*teacher_out.preact_feats[1:], teacher_out.pooled.flatten(1)[:, :, None, None]]
        s, t = align_tail(s, t)
        return s, [f.detach() for f in t]

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup <= 0 else min((epoch + 1) / self.warmup, 1.0)

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        s, t = self.levels(student_out, teacher_out)
        mid = min(self.max_mid_channels, int(s[-1].shape[1]))
        n = len(s)
        self.abfs = nn.ModuleList(
            ABF(int(f_s.shape[1]), mid, int(f_t.shape[1]), fuse=i < n - 1)
            for i, (f_s, f_t) in enumerate(zip(s, t, strict=True))
        ).to(student_out.logits.device)
        if self.per_pair:
            self.feat_weight, self.weight_source = pair_weight(
                getattr(context, "teacher_arch", None), getattr(context, "student_arch", None))
        log.info("reviewkd: %d levels, mid channels %d, feat_weight %g (%s)", n, mid,
                 self.feat_weight, self.weight_source)

    def review(self, feats_s: Sequence[Tensor], sizes: Sequence[Sequence[int]]) -> list[Tensor]:
        """The ABF outputs, shallow to deep, each at ``sizes[i]`` (computed deep to shallow)."""
        if len(self.abfs) != len(feats_s):
            raise RuntimeError("reviewkd: build() must run before the first step")
        outs: list[Tensor] = [feats_s[0]] * len(feats_s)
        residual = None
        for i in reversed(range(len(feats_s))):
            outs[i], residual = self.abfs[i](feats_s[i], residual, sizes[i])
        return outs

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        s, t = self.levels(student_out, teacher_out)
        terms = self._logit_terms(student_out, teacher_out, targets)
        w = self.feat_weight * self.warmup_factor(info.epoch)
        if w > 0:
            outs = self.review(s, [f.shape[-2:] for f in t])
            terms["reviewkd"] = w * hcl_loss(outs, t)
        return terms
