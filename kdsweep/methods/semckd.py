"""Cross-layer distillation with semantic calibration (SemCKD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    Count,
    Method,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.crd import require
from kdsweep.methods.logits import logit_terms
from kdsweep.models import ModelOutput


class GramEmbed(nn.Module):
    """Query/key projection of one layer: a row of the batch Gram matrix -> a unit vector.

    ``Linear(B, 2d) -> ReLU -> Linear(2d, d) -> L2 norm`` (SemCKD's ``MLPEmbed``), ``d = B // 4``.
    """

    def __init__(self, batch_size: int, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(batch_size, 2 * dim)
        self.linear2 = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear2(F.relu(self.linear1(x))), p=2, dim=1)


def regressor(c_in: int, c_out: int) -> nn.Sequential:
    """SemCKD's ``AAEmbed``: 1x1 conv -> BN-ReLU -> 3x3 conv -> BN-ReLU -> 1x1 conv, 2 c_out wide."""
    mid = 2 * c_out
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_out, 1, bias=False),
    )


def gram_rows(f: Tensor, batch_size: int) -> Tensor:
    """``F F^T`` of the flattened features (float32), zero-padded to ``batch_size`` columns."""
    b = f.shape[0]
    flat = f.float().reshape(b, -1)
    g = flat @ flat.t()
    return F.pad(g, (0, batch_size - b)) if b < batch_size else g


def attention_width(method: str, batch_size: int | None, context: BuildContext) -> int:
    """The training batch size: ``method.batch_size``, else the build context's, else an error."""
    width = batch_size if batch_size is not None else getattr(context, "batch_size", None)
    if width is None:
        raise ConfigError(f"{method}: method.batch_size is not set; SemCKD's attention reads rows of "
                          f"B x B similarity matrices and needs the training batch size: set "
                          f"method.batch_size to schedule.batch_size")
    return int(width)


class SemCKDObjective(nn.Module):
    """SemCKD's ``SelfA`` + ``SemCKDLoss``: attention-weighted feature regression over layer pairs.

    For student layers ``i`` and teacher layers ``j`` (``feats[1:]``, the stage outputs): queries
    ``q_i = MLP_Q_i(row of F_s^i F_s^i^T)``, keys ``k_j = MLP_K_j(row of F_t^j F_t^j^T)`` per
    sample, ``alpha_ij = softmax_j(q_i . k_j)``; each pair has its own regressor ``R_ij`` taking
    the student map to the teacher's channels after average-pooling the larger map down to the
    smaller one's size. ``loss = sum_{b,i,j} alpha_bij * MSE_b(R_ij(F_s^i), F_t^j) / (B * S)``.
    """

    def __init__(self, s_channels: list[int], t_channels: list[int], batch_size: int,
                 factor: int = 4):
        super().__init__()
        self.batch_size = int(batch_size)
        dim = max(1, self.batch_size // factor)
        self.query = nn.ModuleList(GramEmbed(self.batch_size, dim) for _ in s_channels)
        self.key = nn.ModuleList(GramEmbed(self.batch_size, dim) for _ in t_channels)
        self.regressors = nn.ModuleList(
            nn.ModuleList(regressor(cs, ct) for ct in t_channels) for cs in s_channels
        )

    def attention(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        """``B x S x T`` attention of each student layer over the teacher layers."""
        bs = self.batch_size
        q = torch.stack([m(gram_rows(f, bs)) for m, f in zip(self.query, feats_s, strict=True)], 1)
        k = torch.stack([m(gram_rows(f, bs)) for m, f in zip(self.key, feats_t, strict=True)], 2)
        return F.softmax(torch.bmm(q, k), dim=-1)

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        b = feats_s[0].shape[0]
        if b > self.batch_size:
            raise ConfigError(f"semckd: a batch of {b} samples is larger than method.batch_size="
                              f"{self.batch_size} (the attention's input width); set "
                              f"method.batch_size to schedule.batch_size")
        feats_t = [f.detach() for f in feats_t]
        with torch.autocast(feats_s[0].device.type, enabled=False):
            att = self.attention(feats_s, feats_t)
        pair_losses = []
        for i, f_s in enumerate(feats_s):
            row = []
            for j, f_t in enumerate(feats_t):
                (sh, sw), (th, tw) = f_s.shape[2:], f_t.shape[2:]
                if sh > th:
                    value = self.regressors[i][j](F.adaptive_avg_pool2d(f_s, (th, tw)))
                    target = f_t
                else:
                    value = self.regressors[i][j](f_s)
                    target = F.adaptive_avg_pool2d(f_t, (sh, sw))
                row.append((value.float() - target.float()).pow(2).flatten(1).mean(1))
            pair_losses.append(torch.stack(row, 1))
        ind = torch.stack(pair_losses, 1)  # B x S x T
        return (att * ind).sum() / (b * len(feats_s))


@register_method("semckd")
class SemCKD(Method):
    """Cross-Layer Distillation with Semantic Calibration, Chen, Mei, Zhang, Wang, Wang & Feng,
    AAAI 2021, arXiv:2012.03236 (code: DefangChen/SemCKD).

    Every student stage ``F_s^i`` is matched to every teacher stage ``F_t^j`` (``feats[1:]``) with
    a per-pair regressor ``R_ij``, and the pair losses are weighted by a per-sample attention
    computed from the layers' batch similarity matrices ``A = F F^T`` (``B x B``)::

        alpha_bij = softmax_j( MLP_Q^i(A_s^i[b]) . MLP_K^j(A_t^j[b]) )
        L_sem     = 1/(B S) sum_{b,i,j} alpha_bij * mean((R_ij(F_s^i)_b - F_t^j_b)^2)
        loss      = ce_weight * CE + kd_weight * KD(T) + feat_weight * L_sem

    The attention MLPs read rows of ``B x B`` matrices, so their width is the training batch size
    (``batch_size``, interpolated from ``schedule.batch_size`` by the YAML; when null, the build
    context's ``batch_size`` if the engine gives one). The reference drops the last incomplete
    batch; here a smaller batch's rows are zero-padded to that width. Defaults:
    ``feat_weight 400, ce 1, kd 1, T 4`` (SemCKD README ``-r 1 -a 1 -b 400``). Logged terms: ``ce``,
    ``kd``, ``semckd``.
    """

    needs_features = True

    def __init__(self, feat_weight: Weight = 400.0, batch_size: Count | None = None,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 1.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.batch_size = feat_weight, batch_size
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.objective: SemCKDObjective | None = None

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        s = require(self.name, student_out, "student", feats=True)
        t = require(self.name, teacher_out, "teacher", feats=True)
        self.objective = SemCKDObjective([f.shape[1] for f in s.feats[1:]],
                                         [f.shape[1] for f in t.feats[1:]],
                                         attention_width(self.name, self.batch_size, context),
                                         ).to(s.logits.device)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        if self.objective is None:
            raise RuntimeError("semckd: build() must run before the first step")
        s = require(self.name, student_out, "student", feats=True)
        t = require(self.name, teacher_out, "teacher", feats=True)
        terms = logit_terms(s.logits, t.logits.detach(), targets, ce_weight=self.ce_weight,
                            kd_weight=self.kd_weight, T=self.T)
        if self.feat_weight > 0:
            terms["semckd"] = self.feat_weight * self.objective(s.feats[1:], t.feats[1:])
        return terms
