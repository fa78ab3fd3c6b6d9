"""Factor transfer (FT): a paraphraser pre-trained on the teacher, a translator on the student."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    Range,
    StepInfo,
    Temperature,
    Weight,
    register_method,
)
from kdsweep.methods.connectors import match_spatial, require_features
from kdsweep.models import ModelOutput

#: LeakyReLU slope of the paraphraser and the translator (RepDistiller's ``models/util.py``).
SLOPE = 0.1


def _conv_stack(channels: list[int], *, transposed: bool = False, bn: bool = False) -> nn.Sequential:
    """3x3 stride-1 'same' convolutions ``channels[0] -> channels[1] -> ...``, each followed by
    (BatchNorm and) LeakyReLU(0.1)."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers.append(conv(c_in, c_out, 3, 1, 1))
        if bn:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(SLOPE))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Encoder ``C -> C -> kC -> kC`` (3x3 convs) and decoder ``kC -> kC -> C -> C`` (3x3
    transposed convs), LeakyReLU(0.1) after each, no BatchNorm (RepDistiller's default
    ``use_bn=False``). ``factor`` is the encoder's output."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = _conv_stack([c, c, k, k])
        self.decoder = _conv_stack([k, k, c, c], transposed=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(factor, reconstruction)``."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student-side encoder ``C_s -> C_s -> kC_t -> kC_t`` (3x3 convs, each with BatchNorm and
    LeakyReLU(0.1), RepDistiller's ``use_bn=True``)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], bn=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def factor_map(f: Tensor) -> Tensor:
    """RepDistiller's ``FactorTransfer.factor``: ``normalize(mean_c f^2)`` flattened to ``B x HW``."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1)


def ft_loss(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """``mean_{b,hw} |factor_map(F_s) - factor_map(F_t)|`` after pooling the larger map to the
    smaller one's H x W (RepDistiller's ``FactorTransfer`` with ``p1=2, p2=1``)."""
    factor_s, factor_t = match_spatial(factor_s, factor_t)
    return (factor_map(factor_s) - factor_map(factor_t)).abs().mean()


@register_method("ft")
class FT(FeatureMethod):
    """Factor Transfer, Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via
    Factor Transfer", NeurIPS 2018, arXiv:1802.04977 (follows RepDistiller's ``factor``:
    ``Paraphraser``, ``Translator``, ``FactorTransfer`` and its ``init()`` pre-stage).

    On the last stage map ``feats[-1]`` (RepDistiller's ``feat[-2]``), with ``k = int(rate *
    C_t)``: the paraphraser ``P`` (encoder ``C_t -> C_t -> k -> k``, decoder back to ``C_t``,
    3x3 convs and LeakyReLU(0.1), no BN) and the translator ``Q`` (``C_s -> C_s -> k -> k``, 3x3
    convs with BN and LeakyReLU(0.1)).

    **Pre-stage** (``init_epochs`` epochs, :meth:`init_forward`): the paraphraser alone learns to
    reconstruct the teacher's map, ``L_rec = mean((dec(enc(f_t)) - f_t)^2)`` (term ``rec``); the
    student is not trained (:meth:`init_parameters` returns the paraphraser's parameters only).

    **Main stage** (:meth:`forward`), with ``phi(F) = normalize(mean_c F^2)`` flattened per
    sample (the larger factor first average-pooled to the smaller one's H x W)::

        L_ft = mean_{b,hw} |phi(Q(f_s)) - phi(enc(f_t))|
        loss = ce_weight * CE + feat_weight * L_ft  [+ kd_weight * KD]

    The translator trains with the student; the paraphraser is frozen and in eval mode
    (RepDistiller keeps it out of ``trainable_list`` and calls ``eval()`` on it).

    **How the paraphraser is frozen** (for the engine): :meth:`build` creates it with
    ``requires_grad=False``, so an optimiser built from the parameters that require grad leaves
    it out; :meth:`init_parameters` switches it to ``requires_grad=True`` and returns it, so the
    pre-stage optimiser trains it; the first main-stage :meth:`forward` switches it back to
    ``requires_grad=False``, and every :meth:`forward` computes the teacher's factor under
    ``torch.no_grad()`` with the paraphraser in eval mode, so it never gets a gradient there
    even if a main optimiser holds it. :meth:`extra_parameters` counts both modules. With
    ``init_epochs=0`` the paraphraser stays at its random initialisation (as in RepDistiller).

    Defaults: ``feat_weight 200`` (``-b 200``), ``rate 0.5`` (``k=0.5``), ``init_epochs 30``
    (``--init_epochs 30``), ``init_lr 0.01`` (RepDistiller's ``init()`` trains the paraphraser at
    0.01 for its ResNet/WRN students, at the run's LR otherwise: 0.01 for MobileNetV2/ShuffleNet,
    0.05 for vgg; null: the schedule's LR), ``ce 1, kd 0, T 4`` (``-a 0``). Logged terms: ``init_rec``
    (pre-stage), ``ce``, ``ft``, ``kd`` when ``kd_weight > 0``.

    Deviations: ``phi`` is the code's (channel mean of the squared factor, then L2-normalised);
    the paper normalises the whole flattened factor. The pooling target is the smaller map's full (H, W) (the code pools to a square ``(H, H)``).
    """

    def __init__(self, feat_weight: Weight = 200.0,
                 rate: Annotated[float, Range(0.0, lo_open=True)] = 0.5,
                 init_epochs: Annotated[int, Range(0)] = 30,
                 init_lr: Annotated[float, Range(0.0, lo_open=True)] | None = 0.01,
                 ce_weight: Weight = 1.0, kd_weight: Weight = 0.0, T: Temperature = 4.0):
        super().__init__()
        self.feat_weight, self.rate, self.init_epochs = feat_weight, rate, init_epochs
        self.init_lr = init_lr
        self._init_logits(ce_weight, kd_weight, T)
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        require_features(self.name, student_out, "student")
        require_features(self.name, teacher_out, "teacher")
        c_s, c_t = int(student_out.feats[-1].shape[1]), int(teacher_out.feats[-1].shape[1])
        k = int(c_t * self.rate)
        if k < 1:
            raise ConfigError(f"method.rate={self.rate:g} gives the teacher's {c_t}-channel map a "
                              f"factor of {k} channels; ft needs rate * {c_t} >= 1")
        self.paraphraser = Paraphraser(c_t, k).requires_grad_(False)
        self.translator = Translator(c_s, k)

    def _built(self) -> tuple[Paraphraser, Translator]:
        if self.paraphraser is None or self.translator is None:
            raise RuntimeError("ft: build() must run before the first step")
        return self.paraphraser, self.translator

    def extra_parameters(self) -> int:
        """The translator's and the paraphraser's parameters (each trained in one stage)."""
        return sum(p.numel() for p in self.parameters())

    # -- pre-stage ------------------------------------------------------------------------------
    def init_parameters(self, body: list[nn.Parameter]) -> list[nn.Parameter]:
        """The paraphraser only (RepDistiller's ``init_trainable_list``), switched to trainable."""
        paraphraser, _ = self._built()
        paraphraser.requires_grad_(True)
        return list(paraphraser.parameters())

    def init_forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                     info: StepInfo) -> dict[str, Tensor]:
        paraphraser, _ = self._built()
        require_features(self.name, teacher_out, "teacher")
        paraphraser.train()
        f_t = teacher_out.feats[-1].detach()
        _, rec = paraphraser(f_t)
        return {"rec": F.mse_loss(rec.float(), f_t.float())}

    # -- main stage -----------------------------------------------------------------------------
    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        paraphraser, translator = self._built()
        require_features(self.name, teacher_out, "teacher")
        terms = self._logit_terms(student_out, teacher_out, targets)
        if next(paraphraser.parameters()).requires_grad:
            paraphraser.requires_grad_(False)
        paraphraser.eval()
        with torch.no_grad():
            factor_t = paraphraser.encoder(teacher_out.feats[-1].detach())
        factor_s = translator(student_out.feats[-1])
        with torch.autocast(factor_s.device.type, enabled=False):
            terms["ft"] = self.feat_weight * ft_loss(factor_s, factor_t)
        return terms
