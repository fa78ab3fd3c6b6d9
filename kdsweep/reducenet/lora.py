"""LoRA branches beside a model's convolutions, VanillaNet's LambdaReLU inside them, and fusion.

A LoRA branch (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022,
arXiv:2106.09685) beside a convolution ``W`` (k x k, stride s) is a k x k convolution ``A`` to
``rank`` channels with the same stride, padding and dilation, then a 1x1 convolution ``B`` back
to ``W``'s output channels; ``B`` starts at zero, so the model starts exactly as it was. The
branch's output is added to ``W``'s output (a forward hook), before whatever follows ``W``.

Between ``A`` and ``B`` there may be VanillaNet's LambdaReLU (Chen et al., "VanillaNet: the Power
of Minimalism in Deep Learning", NeurIPS 2023, arXiv:2305.12972, "deep training"):
``act(x) = (1 - lambda) * relu(x) + lambda * x``, with ``lambda`` going linearly from 0 (ReLU) to 1
(identity) over the first ``anneal`` fraction of the training steps. VanillaNet updates lambda
once per epoch; here it moves every step, from a step counter saved with the model (a resumed run
continues at the same lambda).

Once the branch is linear (lambda = 1, or no LambdaReLU) it is one k x k convolution
``B @ A`` and :func:`fuse_lora` adds it to ``W``: the model is left with exactly its original
modules and tensors (hooks and branches removed). Before that, fusing is refused
(:class:`FuseError`): a ReLU between ``A`` and ``B`` is not a convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdsweep.errors import KDSweepError

__all__ = ["ATTR", "FuseError", "LoRASet", "attach_lora", "fuse_lora", "lora_of"]

#: Attribute of the adapted model that holds its :class:`LoRASet` (state dict prefix).
ATTR = "kdsweep_lora"


class FuseError(KDSweepError):
    """The LoRA branches cannot be fused (yet): they are not linear."""


class LoRABranch(nn.Module):
    """``B(act_lambda(A(x)))`` beside one convolution."""

    def __init__(self, conv: nn.Conv2d, rank: int):
        super().__init__()
        self.down = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, bias=False)
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))  # PyTorch's conv default
        nn.init.zeros_(self.up.weight)
        self.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: Tensor, lam: Tensor | None) -> Tensor:
        h = self.down(x)
        if lam is not None:  # LambdaReLU: lam * h + (1 - lam) * relu(h), lam a 0-d tensor
            h = torch.lerp(F.relu(h), h, lam.to(h.dtype))
        return self.up(h)

    def merged_weight(self) -> Tensor:
        """``B @ A`` as one convolution weight (out, in, k, k)."""
        return torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight)


class LoRASet(nn.Module):
    """Every LoRA branch of one model, the LambdaReLU schedule and its step counter."""

    def __init__(self, targets: dict[str, nn.Conv2d], rank: int, lambda_relu: bool,
                 anneal_steps: int):
        super().__init__()
        self.names = list(targets)
        self.branches = nn.ModuleDict({_key(n): LoRABranch(c, rank) for n, c in targets.items()})
        self.rank, self.lambda_relu, self.anneal_steps = rank, lambda_relu, max(1, anneal_steps)
        device = next(iter(targets.values())).weight.device
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64, device=device))
        self.lam: Tensor | None = None
        self.handles: list = []

    def schedule(self, training: bool) -> None:
        """Set lambda for this forward pass; a training pass counts one step (no host sync)."""
        if self.lambda_relu:
            self.lam = (self.steps.double() / self.anneal_steps).clamp(max=1.0).float()
        if training:
            self.steps += 1

    def lambda_value(self) -> float:
        """The current lambda (1.0 without LambdaReLU)."""
        if not self.lambda_relu:
            return 1.0
        return min(1.0, int(self.steps) / self.anneal_steps)

    def extra_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _key(name: str) -> str:
    return name.replace(".", "__")


def lora_of(model: nn.Module) -> LoRASet | None:
    """The model's :class:`LoRASet`, or None."""
    found = getattr(model, ATTR, None)
    return found if isinstance(found, LoRASet) else None


def conv_targets(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The convolutions a LoRA branch can sit beside: ungrouped, zero-padded ``Conv2d``."""
    return {n: m for n, m in model.named_modules()
            if type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"}


def attach_lora(model: nn.Module, rank: int, *, lambda_relu: bool = False,
                anneal_steps: int = 1) -> LoRASet:
    """Put a rank-``rank`` LoRA branch beside every convolution of ``model`` (in place).

    With ``lambda_relu`` the branch has a LambdaReLU whose lambda reaches 1 after
    ``anneal_steps`` training forward passes. Returns the :class:`LoRASet`, stored on the model
    as ``model.kdsweep_lora`` (so the branches are trained, saved and resumed with it).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if lora_of(model) is not None:
        raise ValueError("the model already has LoRA branches")
    targets = conv_targets(model)
    if not targets:
        raise FuseError(f"{type(model).__name__} has no convolution a LoRA branch can sit beside")
    lora = LoRASet(targets, rank, lambda_relu, anneal_steps)
    setattr(model, ATTR, lora)

    def count(module: nn.Module, args: tuple) -> None:
        lora.schedule(module.training and torch.is_grad_enabled())

    lora.handles.append(model.register_forward_pre_hook(count))
    for name, conv in targets.items():
        branch = lora.branches[_key(name)]

        def add(module: nn.Module, args: tuple, out: Tensor, branch: LoRABranch = branch) -> Tensor:
            return out + branch(args[0], lora.lam)

        lora.handles.append(conv.register_forward_hook(add))
    lora.schedule(False)
    return lora


@torch.no_grad()
def fuse_lora(model: nn.Module) -> int:
    """Fold every LoRA branch into its convolution and remove the branches and hooks (in place).

    Refused with :class:`FuseError` while a LambdaReLU is not yet the identity. Returns the
    number of convolutions changed. Afterwards ``model`` has exactly its original modules,
    parameters and cost.
    """
    lora = lora_of(model)
    if lora is None:
        raise FuseError("the model has no LoRA branches to fuse")
    lam = lora.lambda_value()
    if lam < 1.0:
        raise FuseError(
            f"cannot fuse the LoRA branches yet: their LambdaReLU is at lambda={lam:.3f}, not the "
            f"identity, so each branch is still non-linear; lambda reaches 1 after "
            f"{lora.anneal_steps} training steps ({int(lora.steps)} done)")
    modules = dict(model.named_modules())
    for name in lora.names:
        conv = modules[name]
        delta = lora.branches[_key(name)].merged_weight()
        conv.weight.add_(delta.to(conv.weight.dtype))
    for h in lora.handles:
        h.remove()
    lora.handles.clear()
    delattr(model, ATTR)
    return len(lora.names)
