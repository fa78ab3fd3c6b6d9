"""Small helpers shared by the model files."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["channel_shuffle", "kaiming_init"]


def kaiming_init(model: nn.Module, linear: str = "default") -> None:
    """The reference repos' init: He-normal (fan_out, relu) convs, BN weight 1 / bias 0.

    ``linear="default"`` keeps PyTorch's default Linear init (RepDistiller's ResNets);
    ``"zero_bias"`` zeroes Linear biases (WRN); ``"normal"`` draws N(0, 0.01) weights with
    zero bias (VGG, MobileNetV2).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            if linear in ("normal", "zero_bias") and m.bias is not None:
                nn.init.zeros_(m.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: (N, g*k, H, W) -> interleave the g groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
