"""Multi-level logit distillation (MLKD): instance-, batch- and class-level alignment of the
predictions on a weak and a strong view of each batch, at several temperatures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdsweep.methods.base import (
    BuildContext,
    Method,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.logits import kd_loss, require_same_classes
from kdsweep.models import ModelOutput

#: The temperatures MLKD adds to ``T`` (the authors' code, in its order).
LEVELS = (3.0, 5.0, 2.0, 6.0)


def class_correlation(zs: Tensor, zt: Tensor, T: float) -> Tensor:
    """Class-level alignment: ``||P_t^T P_t - P_s^T P_s||_F^2 / C`` with ``P = softmax(z / T)``
    (N x C): the classes' C x C co-activation matrices over the batch."""
    ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
    return (pt.t() @ pt - ps.t() @ ps).pow(2).sum() / zs.shape[1]


def batch_correlation(zs: Tensor, zt: Tensor, T: float) -> Tensor:
    """Batch-level alignment: ``||P_t P_t^T - P_s P_s^T||_F^2 / N``: the samples' N x N
    similarity matrices."""
    ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)
    return (pt @ pt.t() - ps @ ps.t()).pow(2).sum() / zs.shape[0]


def below_median(values: Tensor) -> Tensor:
    """The fraction of ``values`` at or below their median (linear interpolation between the two
    middle values for an even count, numpy's ``percentile(., 50)``)."""
    return (values <= torch.quantile(values, 0.5)).float().mean()


@register_method("mlkd")
class MLKD(Method):
    """Multi-level logit distillation, Jin, Wang & Lin, "Multi-Level Logit Distillation",
    CVPR 2023; follows the authors' code (Jin-Ying/Multi-Level-Logit-Distillation
    ``mdistiller/distillers/MLKD.py``, as also kept with logit standardisation in
    sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py``).

    The student and the teacher each see two views of every batch: the batch itself (*weak*: crop
    and flip) and a *strong* view of the same images (an independent crop and flip, RandAugment(2)
    and Cutout; :mod:`kdsweep.data.views`). With ``w``/``s`` for the views, temperatures
    ``Ts = (T, 3, 5, 2, 6)``, ``KD_tau`` Hinton's ``tau^2``-scaled KL (batch mean) and
    ``p_t = softmax(z_t,w)`` (tau 1)::

        m_inst  = fraction of samples whose max(p_t) <= its batch median
        m_class = fraction of classes whose sum over the batch of p_t <= its median
        ce = ce_weight * (CE(z_s,w, y) + CE(z_s,s, y))
        kd = kd_weight * (m_inst * sum_tau KD_tau(z_s,w, z_t,w)
                          + KD_T(s) + KD_3(s) + KD_5(s) + KD_2(w) + KD_6(w))
        cc = kd_weight * m_class * sum_tau ||P_t^T P_t - P_s^T P_s||^2 / C    (weak view)
        bc = kd_weight * m_inst  * sum_tau ||P_t P_t^T - P_s P_s^T||^2 / N    (weak view)

    As in the authors' code: each term is reduced over the batch *before* the confidence mask
    multiplies it (their ``reduce=False`` is commented out), so a mask scales its term by the
    fraction it keeps (about 1/2); the strong-view instance sum takes its last two temperatures
    on the weak view; and the strong-view class and batch terms they compute are not in the
    loss (so not computed here). ``logit_stand`` (Sun et al., "Logit Standardization in
    Knowledge Distillation", CVPR 2024, arXiv:2403.01427) Z-scores the logits of the ``kd``
    term only, as that repository's ``--logit-stand``; its CIFAR-100 MLKD+LS is
    ``method.logit_stand=true method.T=2 method.kd_weight=9`` (``--base-temp 2 --kd-weight 9``).

    Defaults, the authors' mdistiller configuration: ``T 4``, ``ce_weight 0.1``, ``kd_weight
    0.9``. Their training recipe differs from the CRD one: the logit-standardization repository's
    ``configs/cifar100/mlkd/*.yaml`` train 480 epochs with batch 64 at lr 0.025, x0.1 at epochs
    150, 180 and 210 (0.01 or 0.005 for MobileNetV2 students; versions of the configs disagree),
    kdsweep's ``schedule=mlkd``. Computed in float32, also under autocast. Logged terms: ``ce``,
    ``kd``, ``cc``, ``bc`` (weighted).
    """

    views = ("strong",)

    def __init__(self, T: Temperature = 4.0, ce_weight: Weight = 0.1, kd_weight: Weight = 0.9,
                 logit_stand: bool = False):
        super().__init__()
        self.T, self.ce_weight, self.kd_weight, self.logit_stand = T, ce_weight, kd_weight, logit_stand

    @property
    def temperatures(self) -> tuple[float, ...]:
        return (self.T, *LEVELS)

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_same_classes("mlkd", student_out.logits,
                             teacher_out.logits if teacher_out is not None else None)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        assert teacher_out is not None, "mlkd needs a teacher"
        if "strong" not in student_out.views or "strong" not in teacher_out.views:
            raise RuntimeError("mlkd reads the strong view of each batch; the engine did not "
                               "pass it (Method.views)")
        with torch.autocast(student_out.logits.device.type, enabled=False):
            sw, ss = student_out.logits.float(), student_out.views["strong"].logits.float()
            tw = teacher_out.logits.detach().float()
            ts = teacher_out.views["strong"].logits.detach().float()
            p_t = F.softmax(tw, dim=1)
            m_inst, m_class = below_median(p_t.max(dim=1).values), below_median(p_t.sum(dim=0))
            terms: dict[str, Tensor] = {}
            if self.ce_weight > 0:
                terms["ce"] = self.ce_weight * (F.cross_entropy(sw, targets)
                                                + F.cross_entropy(ss, targets))
            if self.kd_weight > 0:
                def kd(zs: Tensor, zt: Tensor, tau: float) -> Tensor:
                    return kd_loss(zs, zt, tau, logit_stand=self.logit_stand)

                weak = sum(kd(sw, tw, tau) for tau in self.temperatures)
                strong = (kd(ss, ts, self.T) + kd(ss, ts, 3.0) + kd(ss, ts, 5.0)
                          + kd(sw, tw, 2.0) + kd(sw, tw, 6.0))
                terms["kd"] = self.kd_weight * (m_inst * weak + strong)
                terms["cc"] = self.kd_weight * m_class * sum(
                    class_correlation(sw, tw, tau) for tau in self.temperatures)
                terms["bc"] = self.kd_weight * m_inst * sum(
                    batch_correlation(sw, tw, tau) for tau in self.temperatures)
        return terms
