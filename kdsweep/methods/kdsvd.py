"""Self-supervised knowledge distillation using singular value decomposition (KD-SVD)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    Count,
    FeatureMethod,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import align_tail, require_features
from kdsweep.models import ModelOutput

#: Width of the radial basis function ``exp(-d^2 / 8)`` (the reference code's constant).
RBF_DENOMINATOR = 8.0
#: Extra student singular vectors searched for the one best aligned with each teacher vector.
EXTRA_STUDENT_VECTORS = 3


class _TopRightSingular(torch.autograd.Function):
    """The ``n`` leading right singular vectors (columns) and singular values of a batch of
    matrices, with a backward that stays finite where singular values coincide.

    Forward: ``torch.linalg.svd(x, full_matrices=False)``. Backward: the first-order perturbation
    of ``v_i`` and ``s_i`` for the *returned* ``i < p`` only (``X = U diag(s) V^T``, ``r = min(m,
    n)``)::

        dv_i = sum_{j<r, j!=i} v_j (s_i u_i^T dX v_j + s_j u_j^T dX v_i) / (s_i^2 - s_j^2)
               + (I - V V^T) dX^T u_i / s_i,          ds_i = u_i^T dX v_i

    PyTorch's own ``svd_backward`` divides by ``s_i^2 - s_j^2`` for *every* pair, so two equal
    singular values anywhere in the spectrum (the zeros of a rank-deficient map: dead ReLU
    channels, more channels than positions) make the whole gradient NaN even though the leading
    vectors are well defined. Here only the gaps between a returned vector and the others enter;
    a gap ``|s_i^2 - s_j^2| <= max(m, n) * eps * s_max^2`` (numerically a tie, where the vectors
    are not determined) contributes nothing, and a returned vector with ``s_i <= max(m, n) * eps *
    s_max`` (inside the null space: arbitrary) gets no gradient, as the original TensorFlow code's
    custom SVD gradient zeroes the non-finite ``1 / (s_i^2 - s_j^2)``. Elsewhere it is the exact
    gradient (tested against float64 autograd and finite differences).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        v = vh.transpose(-2, -1)
        p = min(n, s.shape[-1])
        ctx.save_for_backward(u, s, v)
        ctx.p = p
        return v[..., :p].clone(), s[..., :p].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gv: Tensor | None, gs: Tensor | None) -> tuple[Tensor, None]:
        u, s, v = ctx.saved_tensors
        p = ctx.p
        m, n = u.shape[-2], v.shape[-2]
        up, sp, vp = u[..., :p], s[..., :p], v[..., :p]
        rel = max(m, n) * torch.finfo(s.dtype).eps
        s_max = s[..., :1]  # descending order
        live = sp > rel * s_max  # (B, p): vectors determined by the data
        grad = u.new_zeros(*u.shape[:-2], m, n)
        if gv is not None:
            gv = gv * live.unsqueeze(-2)
            gap = sp.pow(2).unsqueeze(-1) - s.pow(2).unsqueeze(-2)  # (B, p, r)
            distinct = gap.abs() > (rel * s_max.pow(2)).unsqueeze(-1)
            inv_gap = torch.where(distinct, 1.0 / torch.where(distinct, gap, 1.0), 0.0)
            mix = (gv.transpose(-2, -1) @ v) * inv_gap  # (B, p, r)
            grad = grad + (up * sp.unsqueeze(-2)) @ (mix @ v.transpose(-2, -1))
            grad = grad + (u * s.unsqueeze(-2)) @ (mix.transpose(-2, -1) @ vp.transpose(-2, -1))
            inv_s = torch.where(live, 1.0 / torch.where(live, sp, 1.0), 0.0)
            off = gv - v @ (v.transpose(-2, -1) @ gv)  # component outside the row space
            grad = grad + (up * inv_s.unsqueeze(-2)) @ off.transpose(-2, -1)
        if gs is not None:
            grad = grad + (up * gs.unsqueeze(-2)) @ vp.transpose(-2, -1)
        return grad, None


def top_right_singular(x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``(V[..., :p], s[..., :p])`` of ``x`` (``..., rows, cols``), ``p = min(n, rows, cols)``:
    the ``n`` leading right singular vectors as columns and their singular values; see
    :class:`_TopRightSingular` for the gradient."""
    return _TopRightSingular.apply(x, n)


def position_by_channel(f: Tensor) -> Tensor:
    """A ``(B, C, H, W)`` map as ``(B, H*W, C)`` in float32 (float64 stays float64), whose right
    singular vectors live in channel space."""
    f = f.to(torch.promote_types(f.dtype, torch.float32))
    return f.reshape(f.shape[0], f.shape[1], -1).transpose(1, 2)


def distilled_vectors(f_s: Tensor, f_t: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """One stage's ``(B, C, k)`` student and teacher vectors.

    Teacher: its ``k`` leading right singular vectors, each signed so that its entries sum to
    >= 0. Student: of its ``k + 3`` leading ones, for each teacher vector the one with the largest
    ``|cos|`` to it, multiplied by the sign of that cosine (ties: the signed sum of the tied ones,
    as the reference's mask does). Both are scaled by the teacher's L2-normalised leading ``k``
    singular values (all ones for ``k = 1``).
    """
    with torch.no_grad():
        v_t, s_t = top_right_singular(position_by_channel(f_t), k)
        v_t = v_t * torch.where(v_t.sum(1, keepdim=True) >= 0, 1.0, -1.0)
    v_s, _ = top_right_singular(position_by_channel(f_s), k + EXTRA_STUDENT_VECTORS)
    with torch.no_grad():
        cos = v_s.transpose(1, 2) @ v_t  # (B, k + 3, k)
        best = cos.abs() == cos.abs().amax(1, keepdim=True)
        pick = torch.where(best, torch.sign(cos), 0.0)
        weight = F.normalize(s_t, dim=1).unsqueeze(1)  # (B, 1, k)
    return (v_s @ pick) * weight, v_t * weight


def rbf(top: Tensor, bottom: Tensor) -> Tensor:
    """``exp(-(top[:, a, q] - bottom[:, c, q])^2 / 8)`` as ``(B, C_top, C_bottom, k)``."""
    return torch.exp(-(top.unsqueeze(2) - bottom.unsqueeze(1)).pow(2) / RBF_DENOMINATOR)


def kdsvd_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor], k: int) -> Tensor:
    """``sum_l sum_{b,a,c,q} (RBF_s^l - RBF_t^l)^2 / B`` over consecutive stage pairs ``l-1, l``."""
    loss = g_s[0].new_zeros((), dtype=torch.promote_types(g_s[0].dtype, torch.float32))
    previous: tuple[Tensor, Tensor] | None = None
    for f_s, f_t in zip(g_s, g_t, strict=True):
        v_s, v_t = distilled_vectors(f_s, f_t.detach(), k)
        if previous is not None:
            diff = rbf(v_s, previous[0]) - rbf(v_t, previous[1])
            loss = loss + diff.pow(2).sum()
        previous = (v_s, v_t)
    return loss / g_s[0].shape[0]


@register_method("kdsvd")
class KDSVD(FeatureMethod):
    """Self-supervised Knowledge Distillation using Singular Value Decomposition, Lee, Kim & Song,
    ECCV 2018, arXiv:1807.06819; follows RepDistiller's ``KDSVD`` (a port of the authors'
    TensorFlow code, sseung0703/SSKD_SVD).

    Each stage map, as an ``H*W x C`` matrix per sample, is compressed to its leading right
    singular vectors (channel space): ``k`` for the teacher; for the student, of its ``k + 3``
    leading ones the one best aligned (largest ``|cos|``) with each teacher vector, sign-flipped
    to a positive cosine; both scaled by the teacher's L2-normalised leading singular values
    (``= 1`` for ``k = 1``). The knowledge is the radial-basis-function correlation between the
    vectors ``v^{l-1}``, ``v^l`` of consecutive stages::

        R^l[a, c, q] = exp(-(v^l[a, q] - v^{l-1}[c, q])^2 / 8)        (C_l x C_{l-1} x k)
        loss = ce_weight * CE + feat_weight * sum_l sum_{b,a,c,q} (R_s^l - R_t^l)^2 / B
               [+ kd_weight * KD]

    over the stages ``feats[1:]`` (RepDistiller's ``feat[1:-1]``; the deepest are paired when the
    counts differ). Spatial sizes may differ (the vectors are over channels: the code does no
    pooling and neither does this), but the paired stages must have the **same channel counts**
    (the RBF matrices are compared entry by entry), and at least two stages are needed; other
    pairs are refused at build. SVD in float32 with autocast off.

    Defaults: ``k 1`` (RepDistiller ``KDSVD(k=1)``), ``feat_weight 1``, ``ce 1``, ``kd 0``:
    RepDistiller's script and README give no line for kdsvd (its ``-b`` has no default), so the
    plain sum of the code's loss terms is used, as the authors' TensorFlow code adds the transfer
    loss unweighted. Logged terms: ``ce``, ``kdsvd``.

    Deviations: (1) gradients: :class:`_TopRightSingular` instead of ``torch.svd``'s backward, which
    is NaN when any two singular values coincide (the authors' TF code also overrides the SVD
    gradient); (2) the teacher's singular vectors are signed so their entries sum to >= 0 (the code
    keeps the SVD library's arbitrary sign, so its loss can differ between LAPACK and cuSOLVER);
    (3) ``H*W`` instead of the code's ``H*H`` (equal for square maps); (4) the code's
    ``removenan`` / non-finite masking is left out: for finite features it is the identity, and
    non-finite features give a non-finite loss that the engine reports instead of a silent zero;
    the ``F.normalize`` of the (already unit) singular vectors is the identity and left out too.
    """

    def __init__(self, feat_weight: Weight = 1.0, k: Count = 1, ce_weight: Weight = 1.0,
                 kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.k = feat_weight, k
        self._init_logits(ce_weight, kd_weight, T)

    def _pairs(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
               context: BuildContext | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """The paired stages, or a one-line refusal when the pair cannot be served."""
        require_features(self.name, student_out, "student", min_stages=2)
        require_features(self.name, teacher_out, "teacher", min_stages=2)
        g_s, g_t = align_tail(student_out.feats[1:], teacher_out.feats[1:])
        names = ""
        if context is not None and context.teacher_arch and context.student_arch:
            names = f" ({context.teacher_arch} -> {context.student_arch})"
        if [f.shape[1] for f in g_s] != [f.shape[1] for f in g_t]:
            raise ConfigError(
                f"method 'kdsvd' cannot serve the pair{names}: it needs equal channel counts at "
                f"the paired stages; teacher {[f.shape[1] for f in g_t]}, student "
                f"{[f.shape[1] for f in g_s]}")
        for f in g_t:
            rank = min(f.shape[1], f.shape[2] * f.shape[3])
            if self.k > rank:
                raise ConfigError(
                    f"method.k={self.k} exceeds min(C, H*W)={rank} of the teacher's stage "
                    f"{'x'.join(str(d) for d in f.shape[1:])}{names}; use method.k<={rank}")
        return g_s, g_t

    checks_pair = True

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        self._pairs(student_out, teacher_out, context)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        g_s, g_t = self._pairs(student_out, teacher_out)
        terms = self._logit_terms(student_out, teacher_out, targets)
        with torch.autocast(g_s[0].device.type, enabled=False):
            terms["kdsvd"] = self.feat_weight * kdsvd_loss(g_s, g_t, self.k)
        return terms
