"""Cost profile of a model: trainable parameters and multiply-accumulates (MACs).

MACs are counted by PyTorch's maintained ``torch.utils.flop_counter.FlopCounterMode`` on one
image: it counts the matrix products (convolutions incl. grouped/depthwise, linear layers,
matmuls) and reports FLOPs = 2 x MACs. Normalisation, activations, pooling and element-wise
additions are not counted, which is how torchsummaryX/thop-style tables count "MAdds" too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), shared tensors counted once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_macs(model: nn.Module, input_size: int, device: str | torch.device | None = None) -> int:
    """MACs of one ``3 x input_size x input_size`` image, eval mode, no grad.

    ``device`` defaults to the device of the model's parameters. The train/eval mode of every
    submodule is restored afterwards.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, 3, input_size, input_size, device=device, dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(counter.get_total_flops()) // 2
