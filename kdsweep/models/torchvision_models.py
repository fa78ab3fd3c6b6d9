"""torchvision's ImageNet models (224-px input) with the kdsweep feature contract.

Registered as ``tv_`` + torchvision's name, so that no name can be mistaken for a CIFAR model's:
``tv_resnet18``, ``tv_resnet34``, ``tv_resnet50``, ``tv_resnet152`` (He et al., CVPR 2016),
``tv_shufflenet_v2_x0_5`` ... ``tv_shufflenet_v2_x2_0`` (Ma et al., ECCV 2018),
``tv_mobilenet_v2`` (Sandler et al., CVPR 2018) and ``tv_efficientnet_b0`` (Tan, Le, ICML 2019).
The CIFAR models ``ResNet18`` ... ``ResNet152``, ``ShuffleV2``, ``MobileNetV2`` and
``EfficientNetB0`` are other networks (32-px input).

The networks are torchvision's own classes (same modules, same ``state_dict`` keys, so
``pretrained=True`` loads torchvision's ImageNet weights); only the residual / shuffle units are
small subclasses whose ``forward`` routes the pre-activation through an ``nn.Identity`` tap
(``preact``) and applies the final ReLU out of place, so hooked tensors are never overwritten.
Their outputs are identical to torchvision's.

``pretrained=True`` downloads torchvision's default ImageNet weights (or finds them in the torch
hub cache). For ``num_classes != 1000`` the backbone is loaded and the classifier stays freshly
initialised. Offline, a :class:`kdsweep.errors.CheckpointError` says which file to put where.

Features (f0 = stem output before max pooling, then the last block at each resolution):
- ResNets: f1..f4 = ``layer1..layer4``; pre-activation = the last block's residual sum before
  ReLU; BN-before-ReLU = its ``bn2`` / ``bn3``.
- ShuffleNetV2: f1..f3 = ``stage2..stage4``; pre-activation = ``shuffle(cat(x1, branch BN))``
  (see :mod:`kdsweep.models.shufflenet`); BN-before-ReLU = a full-width snapshot of the branch BN.
- MobileNetV2 / EfficientNet-B0: stages at strides 2/4/8/16/32 (``features.1/3/6/13/17`` and
  ``features.1/2/3/5/7``); linear bottlenecks, so pre-activation = the stage output;
  BN-before-activation = the block's last (projection) BN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import shufflenetv2 as tv_shufflenet

from kdsweep.errors import CheckpointError
from kdsweep.models.registry import FeatureSpec, register_model

__all__ = ["load_torchvision_weights"]


# ------------------------------------------------------------------------- tapped units
class TapBasicBlock(tv_resnet.BasicBlock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.preact(out + identity))


class TapBottleneck(tv_resnet.Bottleneck):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.preact(out + identity))


class TapInvertedResidual(tv_shufflenet.InvertedResidual):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.preact = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            return super().forward(x)
        x1, x2 = x.chunk(2, dim=1)
        branch = list(self.branch2)
        for m in branch[:-1]:  # everything but the final ReLU
            x2 = m(x2)
        pre = tv_shufflenet.channel_shuffle(torch.cat((x1, x2), dim=1), 2)
        return F.relu(self.preact(pre))  # x1 >= 0 already: same values as torchvision


# ------------------------------------------------------------------------- feature specs
_RES = ("layer1", "layer2", "layer3", "layer4")


def _resnet_features(last_bn: str) -> FeatureSpec:
    return FeatureSpec(
        stem="relu",
        stages=_RES,
        preact=tuple(f"{s}.-1.preact" for s in _RES),
        pooled="fc",
        bn_before_relu=tuple(f"{s}.-1.{last_bn}" for s in _RES),
    )


_SHUF = ("stage2", "stage3", "stage4")
SHUFFLENET_FEATURES = FeatureSpec(
    stem="conv1",
    stages=_SHUF,
    preact=tuple(f"{s}.-1.preact" for s in _SHUF),
    pooled="fc",
    bn_before_relu=tuple(f"{s}.-1.branch2.6" for s in _SHUF),
    bn_layout="shuffle_v2",
)
_MBV2 = (1, 3, 6, 13, 17)
MOBILENET_V2_FEATURES = FeatureSpec(
    stem="features.0",
    stages=tuple(f"features.{i}" for i in _MBV2),
    preact=(None,) * 5,
    pooled="classifier",
    bn_before_relu=tuple(f"features.{i}.conv.-1" for i in _MBV2),
)
_EFF = (1, 2, 3, 5, 7)
EFFICIENTNET_FEATURES = FeatureSpec(
    stem="features.0",
    stages=tuple(f"features.{i}" for i in _EFF),
    preact=(None,) * 5,
    pooled="classifier",
    bn_before_relu=tuple(f"features.{i}.-1.block.-1.1" for i in _EFF),
)


# ------------------------------------------------------------------------- weights
_HEADS = {"fc", "classifier.1"}


def load_torchvision_weights(model: nn.Module, name: str, weights: tvm.WeightsEnum) -> None:
    """Load torchvision's ImageNet ``weights`` into ``model`` (classifier only if 1000 classes)."""
    url = weights.url
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=False)
    except Exception as exc:  # URLError, HTTPError, OSError, hash mismatch ...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        target = f"{torch.hub.get_dir()}/checkpoints/{url.rsplit('/', 1)[-1]}"
        raise CheckpointError(
            f"cannot load torchvision ImageNet weights for {name!r} ({reason}); when offline, "
            f"download {url} elsewhere and put it at {target}"
        ) from None
    own = model.state_dict()
    head_keys = {k for k in state if k.rsplit(".", 1)[0] in _HEADS}
    if any(own[k].shape != state[k].shape for k in head_keys if k in own):
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.rsplit(".", 1)[0] not in _HEADS for k in missing):
        raise CheckpointError(
            f"torchvision weights for {name!r} do not fit: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


# ------------------------------------------------------------------------- registration
PREFIX = "tv_"  # every model of this file: tv_ + torchvision's own name


def _builder(name: str, make, weights: tvm.WeightsEnum, doc: str):
    def build(num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
        model = make(num_classes, **kwargs)
        if pretrained:
            load_torchvision_weights(model, name, weights)
        return model

    build.__doc__ = doc
    build.__name__ = name
    return build


_RESNETS = {
    "resnet18": (TapBasicBlock, [2, 2, 2, 2], tvm.ResNet18_Weights.DEFAULT),
    "resnet34": (TapBasicBlock, [3, 4, 6, 3], tvm.ResNet34_Weights.DEFAULT),
    "resnet50": (TapBottleneck, [3, 4, 6, 3], tvm.ResNet50_Weights.DEFAULT),
    "resnet152": (TapBottleneck, [3, 8, 36, 3], tvm.ResNet152_Weights.DEFAULT),
}
for _name, (_block, _layers, _w) in _RESNETS.items():

    def _make_resnet(num_classes, _block=_block, _layers=_layers, **kwargs):
        return tvm.ResNet(_block, _layers, num_classes=num_classes, **kwargs)

    register_model(
        PREFIX + _name,
        family="tv_resnet",
        input_size=224,
        features=_resnet_features("bn2" if _block is TapBasicBlock else "bn3"),
        pretrained=True,
    )(_builder(PREFIX + _name, _make_resnet, _w, f"torchvision {_name} (ImageNet, 224 px)"))

_SHUFFLENETS = {
    "shufflenet_v2_x0_5": ([24, 48, 96, 192, 1024], tvm.ShuffleNet_V2_X0_5_Weights.DEFAULT),
    "shufflenet_v2_x1_0": ([24, 116, 232, 464, 1024], tvm.ShuffleNet_V2_X1_0_Weights.DEFAULT),
    "shufflenet_v2_x1_5": ([24, 176, 352, 704, 1024], tvm.ShuffleNet_V2_X1_5_Weights.DEFAULT),
    "shufflenet_v2_x2_0": ([24, 244, 488, 976, 2048], tvm.ShuffleNet_V2_X2_0_Weights.DEFAULT),
}
for _name, (_channels, _w) in _SHUFFLENETS.items():

    def _make_shufflenet(num_classes, _channels=_channels, **kwargs):
        return tvm.ShuffleNetV2(
            [4, 8, 4],
            _channels,
            num_classes=num_classes,
            inverted_residual=TapInvertedResidual,
            **kwargs,
        )

    register_model(
        PREFIX + _name,
        family="tv_shufflenetv2",
        input_size=224,
        features=SHUFFLENET_FEATURES,
        pretrained=True,
    )(_builder(PREFIX + _name, _make_shufflenet, _w, f"torchvision {_name} (ImageNet, 224 px)"))


def _make_mobilenet_v2(num_classes, **kwargs):
    return tvm.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)


def _make_efficientnet_b0(num_classes, **kwargs):
    return tvm.efficientnet_b0(weights=None, num_classes=num_classes, **kwargs)


register_model(
    PREFIX + "mobilenet_v2",
    family="tv_mobilenet_v2",
    input_size=224,
    features=MOBILENET_V2_FEATURES,
    pretrained=True,
)(
    _builder(
        PREFIX + "mobilenet_v2",
        _make_mobilenet_v2,
        tvm.MobileNet_V2_Weights.DEFAULT,
        "torchvision mobilenet_v2, width 1.0 (ImageNet, 224 px)",
    )
)
register_model(
    PREFIX + "efficientnet_b0",
    family="tv_efficientnet",
    input_size=224,
    features=EFFICIENTNET_FEATURES,
    pretrained=True,
)(
    _builder(
        PREFIX + "efficientnet_b0",
        _make_efficientnet_b0,
        tvm.EfficientNet_B0_Weights.DEFAULT,
        "torchvision efficientnet_b0 (ImageNet, 224 px)",
    )
)
