"""Contrastive Representation Distillation (CRD), with RepDistiller's memory bank or in-batch negatives."""

from __future__ import annotations

import logging
import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    Count,
    Fraction,
    Method,
    OneOf,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.logits import logit_terms
from kdsweep.models import ModelOutput

log = logging.getLogger(__name__)

CRD_MODES = ("exact", "relax", "in_batch")
#: CRD's published CIFAR-100 settings (RepDistiller ``--feat_dim 128 --nce_k 16384 --nce_t 0.07
#: --nce_m 0.5``), declared once: ``crd`` and ``modreduce``'s CRD peer take their defaults from here.
FEAT_DIM, NCE_K, NCE_T, NCE_M = 128, 16384, 0.07, 0.5
NCE_EPS = 1e-7  # RepDistiller's eps in the NCE posterior
#: Random keys drawn at once when sampling negatives without replacement (64 MiB of float32).
_SAMPLE_CHUNK = 1 << 24


def require(method: str, out: ModelOutput | None, who: str, *, pooled: bool = False,
            feats: bool = False) -> ModelOutput:
    """The ``ModelOutput`` of ``who``, refusing one without the features the method reads."""
    if out is None:
        raise RuntimeError(f"{method} needs a teacher")
    if pooled and out.pooled is None:
        raise RuntimeError(f"{method} needs the {who}'s pooled embedding (feature taps missing)")
    if feats and len(out.feats) < 2:
        raise RuntimeError(f"{method} needs the {who}'s stage features (feature taps missing)")
    return out


class Embed(nn.Module):
    """CRD's projection head: ``x -> W x + b -> x / ||x||_2``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), p=2, dim=1)


def nce_loss(p: Tensor, num_data: int) -> Tensor:
    """CRD's NCE objective (Tian et al. 2020, Eq. 18) on ``p`` (B x (K+1), column 0 the positive).

    With the noise distribution ``P_n = 1 / N`` and ``m = K`` negatives per positive::

        loss = -1/B * sum_b [ log(p_b0 / (p_b0 + m P_n)) + sum_k log(m P_n / (p_bk + m P_n)) ]
    """
    m = p.shape[1] - 1
    mpn = m / float(num_data)
    pos, neg = p[:, 0], p[:, 1:]
    log_d1 = torch.log(pos / (pos + mpn + NCE_EPS))
    log_d0 = torch.log(mpn / (neg + mpn + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def info_nce(e_s: Tensor, e_t: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """Symmetric in-batch InfoNCE between paired unit embeddings (row ``i`` of each is a pair).

    ``S_ij = e_s_i . e_t_j / tau``; pairs of *different* samples of the same class are masked out
    of the negatives (CRD draws its negatives from the other classes)::

        loss = CE(S, diag) + CE(S^T, diag)   (each a mean over the batch)
    """
    logits = e_s @ e_t.t() / temperature
    same = targets[:, None] == targets[None, :]
    eye = torch.eye(len(targets), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    labels = torch.arange(len(targets), device=logits.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


class CRDObjective(nn.Module):
    """The CRD loss on (student, teacher) embedding pairs: embeddings, memory bank, sampling.

    ``mode="exact"`` / ``"relax"``: RepDistiller's ``ContrastMemory`` + ``ContrastLoss``. Two memory
    banks hold one unit 128-d vector per training sample (``memory_s`` student side, ``memory_t``
    teacher side). For each sample ``i`` of the batch a row of ``K + 1`` indices is drawn: the
    positive (``i`` itself in ``exact`` mode; a random sample of ``i``'s class in ``relax`` mode)
    and ``K`` negatives drawn *without replacement* from the samples of the other classes (all
    samples but ``i`` when the labels are unknown), as RepDistiller's ``CIFAR100InstanceSample``.
    ``p = exp(e . m / T) / Z`` with ``Z`` fixed on the first batch to ``mean(exp(e . m / T)) * N``;
    the student embedding is contrasted with the teacher memory and vice versa, and both NCE
    losses are summed. After the loss the memory rows of the batch move to the new embeddings:
    ``m_i <- normalise(momentum * m_i + (1 - momentum) * e_i)``.

    ``mode="in_batch"``: no memory bank; the other samples of the batch are the negatives
    (:func:`info_nce`), for data sets whose memory bank or sampling would be too large.
    """

    def __init__(self, s_dim: int, t_dim: int, *, feat_dim: int, nce_k: int, nce_t: float,
                 nce_m: float, mode: str, num_train: int, train_labels: Tensor | None,
                 owner: str = "crd"):
        super().__init__()
        self.mode, self.nce_t, self.nce_m, self.owner = mode, float(nce_t), float(nce_m), owner
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.num_train = int(num_train)
        self.nce_k = int(nce_k)
        if mode == "in_batch":
            return
        n = self.num_train
        if n < 2:
            raise ConfigError(f"{owner}: the memory bank needs at least 2 training samples, got {n}")
        if train_labels is not None:
            labels = torch.as_tensor(train_labels, dtype=torch.long).flatten().cpu()
            if labels.numel() != n:
                raise ConfigError(f"{owner}: {labels.numel()} training labels for {n} samples")
            counts = torch.bincount(labels)
            pool = n - int(counts.max())  # the fewest negatives any class has
            if pool < 1:
                raise ConfigError(f"{owner}: all training samples have one class; CRD's negatives "
                                  f"come from the other classes (use mode=in_batch)")
            order = torch.argsort(labels, stable=True)
            self.register_buffer("labels", labels, persistent=False)
            self.register_buffer("class_order", order, persistent=False)
            self.register_buffer("class_count", counts, persistent=False)
            self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        else:
            if mode == "relax":
                raise ConfigError(f"{owner}: mode=relax draws positives from the same class and "
                                  f"needs the training labels, which this data set does not give")
            pool = n - 1
            self.register_buffer("labels", None, persistent=False)
        if self.nce_k > pool:
            log.warning("%s: nce_k=%d negatives asked for but only %d training samples are "
                        "available to every class as negatives (%d training samples); using "
                        "nce_k=%d (all of them for the largest class)",
                        owner, self.nce_k, pool, n, pool)
            self.nce_k = pool
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_t", torch.rand(n, feat_dim).mul_(2 * stdv).sub_(stdv))
        # NCE normalisation constants, set from the first batch (negative: not set yet)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self._z_ready = False

    def extra_repr(self) -> str:
        return f"mode={self.mode}, nce_k={self.nce_k}, nce_t={self.nce_t}, nce_m={self.nce_m}"

    @torch.no_grad()
    def sample_contrast(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``B x (K+1)`` training indices: column 0 the positive, then ``K`` distinct negatives."""
        device = self.memory_s.device
        idx = indices.to(device=device, dtype=torch.long).flatten()
        b, n, k = idx.numel(), self.num_train, self.nce_k
        labels = self.labels
        if self.mode == "relax":
            cls = labels[idx]
            offset = (torch.rand(b, device=device, generator=generator)
                      * self.class_count[cls]).long().clamp_max(self.class_count[cls] - 1)
            pos = self.class_order[self.class_start[cls] + offset]
        else:
            pos = idx
        out = torch.empty(b, k + 1, dtype=torch.long, device=device)
        out[:, 0] = pos
        rows = max(1, _SAMPLE_CHUNK // n)
        for s in range(0, b, rows):
            e = min(b, s + rows)
            keys = torch.rand(e - s, n, device=device, generator=generator)
            if labels is not None:  # same class (the sample itself included): never a negative
                keys.masked_fill_(labels[None, :] == labels[idx[s:e], None], -1.0)
            else:
                keys.scatter_(1, idx[s:e, None], -1.0)
            out[s:e, 1:] = keys.topk(k, dim=1, sorted=False).indices
        return out

    def forward(self, f_s: Tensor, f_t: Tensor, indices: Tensor | None, targets: Tensor,
                contrast_idx: Tensor | None = None) -> Tensor:
        """The unweighted CRD loss of one batch (memory banks updated in memory modes)."""
        device_type = f_s.device.type
        with torch.autocast(device_type, enabled=False):
            e_s = self.embed_s(f_s.float())
            e_t = self.embed_t(f_t.detach().float())
            if self.mode == "in_batch":
                return info_nce(e_s, e_t, targets, self.nce_t)
            if indices is None:
                raise RuntimeError(f"{self.owner}: mode={self.mode} needs the batch's sample "
                                   f"indices (StepInfo.indices); use mode=in_batch without them")
            idx = indices.to(device=self.memory_s.device, dtype=torch.long).flatten()
            if contrast_idx is None:
                contrast_idx = self.sample_contrast(idx)
            b, d = e_s.shape
            flat = contrast_idx.reshape(-1)
            w_t = self.memory_t.index_select(0, flat).view(b, -1, d)
            w_s = self.memory_s.index_select(0, flat).view(b, -1, d)
            # student anchor against the teacher memory, teacher anchor against the student memory
            out_s = torch.exp(torch.bmm(w_t, e_s.unsqueeze(2)).squeeze(2) / self.nce_t)
            out_t = torch.exp(torch.bmm(w_s, e_t.unsqueeze(2)).squeeze(2) / self.nce_t)
            if not self._z_ready:  # one host sync, on the first step only
                with torch.no_grad():
                    for z, out, side in ((self.z_s, out_s, "s"), (self.z_t, out_t, "t")):
                        if float(z) < 0:
                            z.fill_(float(out.mean()) * self.num_train)
                            log.info("%s: NCE normalisation constant Z_%s = %.1f", self.owner,
                                     side, float(z))
                self._z_ready = True
            loss = (nce_loss(out_s / self.z_s, self.num_train)
                    + nce_loss(out_t / self.z_t, self.num_train))
            with torch.no_grad():
                m = self.nce_m
                for memory, e in ((self.memory_s, e_s), (self.memory_t, e_t)):
                    rows = memory.index_select(0, idx).mul_(m).add_(e.detach(), alpha=1.0 - m)
                    memory.index_copy_(0, idx, F.normalize(rows, p=2, dim=1))
            return loss


@register_method("crd")
class CRD(Method):
    """Contrastive Representation Distillation, Tian, Krishnan & Isola, ICLR 2020,
    arXiv:1910.10699 (RepDistiller's ``CRDLoss``).

    The pooled embeddings (classifier inputs) of student and teacher are projected by
    ``g_s, g_t`` (Linear -> L2 norm) to ``feat_dim`` and contrasted: the teacher's embedding of the
    same image is the positive, ``K`` embeddings of other-class images kept in a momentum memory
    bank are the negatives. With ``h(s, t) = exp(g_s(s) . g_t(t) / tau) / Z`` and noise
    ``P_n = 1/N`` (Eq. 18, both directions: student anchor vs teacher memory and vice versa)::

        L_crd = -E_pos[log h / (h + K/N)] - K E_neg[log (K/N) / (h + K/N)]
        loss  = ce_weight * CE + feat_weight * L_crd  [+ kd_weight * KD]

    Modes: ``exact`` (RepDistiller's default: positive = the sample itself, negatives drawn
    without replacement from the other classes by the data set's labels), ``relax`` (positive
    = a random same-class sample) and ``in_batch`` (no memory bank: symmetric InfoNCE over the
    batch, same-class pairs masked out of the negatives; for large data sets). When the other
    classes hold fewer than ``nce_k`` samples (small data sets) ``nce_k`` is lowered to that
    number, with a warning. Defaults: ``feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5,
    feat_weight 0.8, ce 1, kd 0`` (RepDistiller ``-a 0 -b 0.8``; CRD+KD is ``kd_weight=1``).
    Logged terms: ``ce``, ``crd`` (and ``kd``).
    """

    teacher_reads = "pooled"  # the teacher's pooled embedding (and logits) only

    needs_features = True

    def __init__(self, feat_weight: Weight = 0.8, feat_dim: Count = FEAT_DIM, nce_k: Count = NCE_K,
                 nce_t: Temperature = NCE_T, nce_m: Fraction = NCE_M,
                 mode: Annotated[str, OneOf(CRD_MODES)] = "exact", ce_weight: Weight = 1.0,
                 kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.feat_dim, self.nce_k = feat_weight, feat_dim, nce_k
        self.nce_t, self.nce_m, self.mode = nce_t, nce_m, mode
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.objective: CRDObjective | None = None

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        s = require(self.name, student_out, "student", pooled=True)
        t = require(self.name, teacher_out, "teacher", pooled=True)
        self.objective = CRDObjective(
            s.pooled.flatten(1).shape[1], t.pooled.flatten(1).shape[1], feat_dim=self.feat_dim,
            nce_k=self.nce_k, nce_t=self.nce_t, nce_m=self.nce_m, mode=self.mode,
            num_train=context.num_train, train_labels=context.train_labels, owner=self.name,
        ).to(s.pooled.device)

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        if self.objective is None:
            raise RuntimeError("crd: build() must run before the first step")
        s = require(self.name, student_out, "student", pooled=True)
        t = require(self.name, teacher_out, "teacher", pooled=True)
        terms = logit_terms(s.logits, t.logits.detach(), targets, ce_weight=self.ce_weight,
                            kd_weight=self.kd_weight, T=self.T)
        if self.feat_weight > 0:
            terms["crd"] = self.feat_weight * self.objective(s.pooled, t.pooled, info.indices, targets)
        return terms
