"""Correlation congruence (CC / CCKD)."""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.methods.base import (
    BuildContext,
    Count,
    FeatureMethod,
    OneOf,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import require_features
from kdsweep.models import ModelOutput

CC_KERNELS = ("repdistiller", "gaussian")


def cc_repdistiller(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RepDistiller's ``Correlation``: with ``d = |e_s - e_t|`` (``b x D``), the batch mean over
    neighbouring rows of ``sum_k d[i, k] * d[i + 1, k]`` (``i = 0 .. b-2``); 0 for ``b < 2``."""
    d = (e_s - e_t).abs()
    if d.shape[0] < 2:
        return d.sum() * 0.0
    return (d[:-1] * d[1:]).sum(1).mean()


def taylor_rbf(e: Tensor, gamma: float, order: int) -> Tensor:
    """The ``b x b`` correlation matrix of the paper's kernel (Peng et al. 2019, Eq. 9): the
    order-``P`` Taylor expansion of ``exp(-gamma ||x_i - x_j||^2)`` for unit vectors ``x``::

        k(x_i, x_j) = sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! * (x_i . x_j)^p
    """
    x = F.normalize(e, p=2, dim=1)
    sim = x @ x.t()
    out = torch.zeros_like(sim)
    for p in range(order + 1):
        out = out + (math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)) * sim.pow(p)
    return out


def cc_gaussian(e_s: Tensor, e_t: Tensor, gamma: float, order: int) -> Tensor:
    """``1/b^2 ||K(e_s) - K(e_t)||_F^2`` with the Taylor-RBF correlation matrices (Eq. 5)."""
    return (taylor_rbf(e_s, gamma, order) - taylor_rbf(e_t, gamma, order)).pow(2).mean()


@register_method("cc")
class CC(FeatureMethod):
    """Correlation Congruence for Knowledge Distillation, Peng, Jin, Liu, Li, Wu, Liu, Zhou &
    Zhang, ICCV 2019, arXiv:1904.01802 (RepDistiller's ``Correlation`` + ``LinearEmbed``).

    The pooled embeddings (classifier inputs) of student and teacher each go through their own
    trainable linear projection to ``feat_dim`` (RepDistiller's ``LinearEmbed``, no normalisation;
    both are trained, the teacher's on the detached teacher vector): ``e_s = W_s s + b_s``,
    ``e_t = W_t t + b_t``. Then, by ``kernel``:

    - ``repdistiller`` (default, the public code, "emailed by the original author"): with
      ``d = |e_s - e_t|``, ``L = mean_{i<b-1} sum_k d[i, k] d[i+1, k]`` (neighbouring samples of
      the batch; not the paper's kernel matrix);
    - ``gaussian`` (the paper's Eq. 5 and 9): ``L = 1/b^2 sum_{i,j} (k(e_s^i, e_s^j) -
      k(e_t^i, e_t^j))^2`` with ``k`` the order-``P`` Taylor expansion of the Gaussian RBF
      ``exp(-gamma ||x_i - x_j||^2)`` of the L2-normalised embeddings ``x``.

    ::

        loss = ce_weight * CE + feat_weight * L  [+ kd_weight * KD]

    Defaults: ``feat_weight 0.02, ce 1, kd 0, feat_dim 128`` (RepDistiller ``-a 0 -b 0.02
    --feat_dim 128``); ``gamma 0.4, order 2`` (the paper's second-order expansion; gamma as in
    AberHu's Knowledge-Distillation-Zoo ``CC``); ``feat_weight 0.02`` is calibrated for the
    ``repdistiller`` loss (the Gaussian one is far smaller: sweep it). The embeddings and the loss run in float32 (also
    under autocast). Logged terms: ``ce``, ``cc``. Deviation: a batch of one sample has no
    neighbour under ``repdistiller`` and gives 0 (RepDistiller: NaN). The paper's class-aware
    mini-batch sampler is not reproduced (neither does RepDistiller).
    """

    teacher_reads = "pooled"  # the teacher's pooled embedding (and logits) only

    def __init__(self, feat_weight: Weight = 0.02, feat_dim: Count = 128,
                 kernel: Annotated[str, OneOf(CC_KERNELS)] = "repdistiller",
                 gamma: Annotated[float, Range(0.0, lo_open=True)] = 0.4,
                 order: Annotated[int, Range(1, 20)] = 2,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.feat_dim, self.kernel = feat_weight, feat_dim, kernel
        self.gamma, self.order = gamma, order
        self._init_logits(ce_weight, kd_weight, T)
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student", pooled=True)
        require_features(self.name, teacher_out, "teacher", pooled=True)
        d_s = student_out.pooled[0].numel()
        d_t = teacher_out.pooled[0].numel()
        device = student_out.pooled.device
        self.embed_s = nn.Linear(d_s, self.feat_dim).to(device)
        self.embed_t = nn.Linear(d_t, self.feat_dim).to(device)

    def loss(self, e_s: Tensor, e_t: Tensor) -> Tensor:
        """The unweighted CC loss of two ``b x feat_dim`` embeddings."""
        if self.kernel == "gaussian":
            return cc_gaussian(e_s, e_t, self.gamma, self.order)
        return cc_repdistiller(e_s, e_t)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        if self.embed_s is None or self.embed_t is None:
            raise RuntimeError("cc: build() must run before the first step")
        require_features(self.name, student_out, "student", pooled=True)
        require_features(self.name, teacher_out, "teacher", pooled=True)
        terms = self._logit_terms(student_out, teacher_out, targets)
        s = student_out.pooled
        with torch.autocast(s.device.type, enabled=False):
            e_s = self.embed_s(s.float().flatten(1))
            e_t = self.embed_t(teacher_out.pooled.detach().float().flatten(1))
            terms["cc"] = self.feat_weight * self.loss(e_s, e_t)
        return terms
