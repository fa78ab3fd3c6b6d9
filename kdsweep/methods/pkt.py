"""Probabilistic knowledge transfer."""

from __future__ import annotations

from torch import Tensor

from kdsweep.methods.base import FeatureMethod, StepInfo, Temperature, Weight, register_method
from kdsweep.methods.connectors import require_features
from kdsweep.models import ModelOutput


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = 1e-7) -> Tensor:
    """``mean_{i,j} P_t(j|i) * log((P_t(j|i) + eps) / (P_s(j|i) + eps))`` over the batch.

    ``P(j|i)`` is the cosine-similarity kernel ``(1 + cos(e_i, e_j)) / 2`` normalised over ``j``.
    """

    def conditional(e: Tensor) -> Tensor:
        e = e.float().flatten(1)
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        k = (e @ e.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    p_s, p_t = conditional(e_s), conditional(e_t)
    return (p_t * ((p_t + eps) / (p_s + eps)).log()).mean()


@register_method("pkt")
class PKT(FeatureMethod):
    """Probabilistic Knowledge Transfer, Passalis & Tefas, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", ECCV 2018, arXiv:1803.10837 (RepDistiller's ``PKT``).

    On the pooled embeddings ``e``, the conditional probabilities of the cosine kernel
    ``P(j|i) = K(e_i, e_j) / sum_k K(e_i, e_k)`` with ``K = (1 + cos) / 2``::

        loss = ce_weight * CE + feat_weight * mean_{i,j} P_t(j|i) log((P_t(j|i)+eps) / (P_s(j|i)+eps))
               [+ kd_weight * KD]

    (a KL divergence averaged, not summed, over the ``b x b`` entries; ``eps = 1e-7``). Any pair works
    without a connector. Defaults: ``feat_weight 30000, ce 1`` (RepDistiller ``-a 0 -b 30000``).
    Logged terms: ``ce``, ``pkt``.
    """

    teacher_reads = "pooled"  # the teacher's pooled embedding (and logits) only

    def __init__(self, feat_weight: Weight = 30000.0, ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight = feat_weight
        self._init_logits(ce_weight, kd_weight, T)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        require_features(self.name, student_out, "student", pooled=True)
        require_features(self.name, teacher_out, "teacher", pooled=True)
        terms = self._logit_terms(student_out, teacher_out, targets)
        terms["pkt"] = self.feat_weight * pkt_loss(student_out.pooled, teacher_out.pooled.detach())
        return terms
