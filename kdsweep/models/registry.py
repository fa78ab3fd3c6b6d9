"""The model registry: one flat ``name -> constructor`` table shared by teachers and students.

A model file declares each architecture once::

    @register_model("resnet20", family="resnet", features=FEATURES)
    def resnet20(num_classes: int, **kwargs) -> nn.Module:
        return CifarResNet(20, [16, 16, 32, 64], num_classes=num_classes, **kwargs)

and everything else (config validation, ``create_model``, the feature taps, the cost table of
``python -m kdsweep.zoo``) reads the :class:`ModelSpec` stored here.

Names are unambiguous: no two registered names are equal after lower-casing and removing ``_`` and
``-`` (``register_model`` refuses such a name), torchvision's 224-px ImageNet models carry the
prefix ``tv_``, and names that were changed are kept in :data:`RENAMED`, refused with a one-line
pointer to the new name instead of silently meaning another network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdsweep.errors import ConfigError, close_matches, name_key

__all__ = [
    "FeatureSpec",
    "ModelSpec",
    "close_matches",
    "create_model",
    "get_spec",
    "list_models",
    "name_key",
    "register_model",
    "renamed_models",
]

_TV = "(torchvision, ImageNet input)"
_CIFAR = "(CIFAR input)"

# Old name -> the current name, or a one-line explanation starting with "use". Never reusable.
RENAMED: dict[str, str] = {
    # torchvision's models took the prefix tv_: the lower-case names differed from the CIFAR
    # models' only by case or punctuation (resnet50 vs ResNet50, mobilenet_v2 vs MobileNetV2).
    "resnet18": f"use 'tv_resnet18' {_TV} or 'ResNet18' {_CIFAR}",
    "resnet34": f"use 'tv_resnet34' {_TV} or 'ResNet34' {_CIFAR}",
    "resnet50": f"use 'tv_resnet50' {_TV} or 'ResNet50' {_CIFAR}",
    "resnet152": f"use 'tv_resnet152' {_TV} or 'ResNet152' {_CIFAR}",
    "mobilenet_v2": f"use 'tv_mobilenet_v2' {_TV} or 'MobileNetV2' {_CIFAR}",
    "efficientnet_b0": f"use 'tv_efficientnet_b0' {_TV} or 'EfficientNetB0' {_CIFAR}",
    "shufflenet_v2_x0_5": f"use 'tv_shufflenet_v2_x0_5' {_TV} or 'ShuffleV2_0_5' {_CIFAR}",
    "shufflenet_v2_x1_0": f"use 'tv_shufflenet_v2_x1_0' {_TV} or 'ShuffleV2' {_CIFAR}",
    "shufflenet_v2_x1_5": f"use 'tv_shufflenet_v2_x1_5' {_TV} or 'ShuffleV2_1_5' {_CIFAR}",
    "shufflenet_v2_x2_0": f"use 'tv_shufflenet_v2_x2_0' {_TV} or 'ShuffleV2_2_0' {_CIFAR}",
    # The CIFAR ShuffleNetV2 widths are spelled after ShuffleV2, which is width 1.0.
    "shufflenetv2_0_5": "ShuffleV2_0_5",
    "shufflenetv2_1_0": "use 'ShuffleV2' (the same network: CIFAR ShuffleNetV2 at width 1.0)",
    "shufflenetv2_1_5": "ShuffleV2_1_5",
    "shufflenetv2_2_0": "ShuffleV2_2_0",
}


def _renamed_message(old: str) -> str:
    pointer = RENAMED[old]
    if not pointer.startswith("use "):
        pointer = f"use {pointer!r}"
    return f"model {old!r} was renamed: {pointer}"


def renamed_models() -> dict[str, str]:
    """Old model names, each with the one-line message ``get_spec``/``create_model`` refuse it with.

    E.g. ``{"resnet50": "model 'resnet50' was renamed: use 'tv_resnet50' (torchvision, ImageNet
    input) or 'ResNet50' (CIFAR input)", ...}``. These names are not in :func:`list_models`.
    """
    return {old: _renamed_message(old) for old in RENAMED}


def _models_hint(name: str) -> str:
    near = close_matches(name, _REGISTRY)
    where = "list: python -m kdsweep.zoo"
    return f"did you mean {' or '.join(near)}? ({where})" if near else where


@dataclass(frozen=True)
class FeatureSpec:
    """Where a model's distillation features live, as dotted module paths.

    Paths are resolved with :func:`kdsweep.models.features.resolve_module`; an integer segment
    indexes a ``Sequential``/``ModuleList`` and may be negative (``"layer1.-1.preact"`` is the
    last block of ``layer1``), so one spec serves every depth of a family.

    - ``stem``: module whose *output* is ``f0``.
    - ``stages``: modules whose outputs are ``f1 .. fn``.
    - ``preact``: for each of ``f1 .. fn``, the module whose output is that stage's
      pre-activation feature, or ``None`` where the stage output has no activation after it
      (then the pre-activation feature *is* the stage output). ``f0`` is never changed
      (RepDistiller / mdistiller convention). An empty tuple means "all ``None``".
    - ``pooled``: module whose *input* is the pooled embedding (the classifier's input).
    - ``bn_before_relu``: one BatchNorm2d per stage ``f1 .. fn`` (paths), the BN that precedes
      that stage's final activation (overhaul / OFD margins).
    - ``bn_layout``: ``"full"`` when each BN covers all channels of its stage, or
      ``"shuffle_v2"`` when it covers only the branch half of a ShuffleNetV2 block whose other
      half passes through (see :meth:`FeatureTap.bn_before_relu`).
    """

    stem: str
    stages: tuple[str, ...]
    pooled: str
    preact: tuple[str | None, ...] = ()
    bn_before_relu: tuple[str, ...] = ()
    bn_layout: str = "full"

    def __post_init__(self) -> None:
        if self.preact and len(self.preact) != len(self.stages):
            raise ValueError("FeatureSpec.preact needs one entry per stage")
        if self.bn_before_relu and len(self.bn_before_relu) != len(self.stages):
            raise ValueError("FeatureSpec.bn_before_relu needs one entry per stage")
        if self.bn_layout not in ("full", "shuffle_v2"):
            raise ValueError(f"unknown bn_layout {self.bn_layout!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything kdsweep knows about one registered architecture."""

    name: str
    family: str
    input_size: int
    constructor: Callable[..., nn.Module]
    features: FeatureSpec | None = None
    default_lr: float | None = None
    pretrained: bool = False  # True when create_model(..., pretrained=True) can load weights
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_size: int = 32,
    features: FeatureSpec | None = None,
    default_lr: float | None = None,
    pretrained: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``fn(num_classes: int, **kwargs) -> nn.Module`` under ``name``.

    ``input_size`` is the native square input resolution (32 for CIFAR models, 224 for
    ImageNet ones); ``default_lr`` is a model-specific learning rate that recipes may use
    (RepDistiller hard-codes 0.01 for MobileNetV2 and the ShuffleNets); ``pretrained`` says the
    constructor accepts ``pretrained=True``. The function's docstring (first line) is kept as
    the model's description.
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if name in RENAMED:
            raise ValueError(f"model name {name!r} is retired ({_renamed_message(name)})")
        twins = [n for n in _REGISTRY if name_key(n) == name_key(name)]
        if twins:
            raise ValueError(
                f"model name {name!r} differs from the registered {twins[0]!r} only by case or "
                "punctuation; choose a name that cannot be confused with it"
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelSpec(
            name=name,
            family=family,
            input_size=input_size,
            constructor=fn,
            features=features,
            default_lr=default_lr,
            pretrained=pretrained,
            description=doc[0] if doc else "",
        )
        return fn

    return decorator


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; one-line ``ConfigError`` for unknown or renamed names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        if name in RENAMED:
            raise ConfigError(_renamed_message(name)) from None
        raise ConfigError(f"unknown model {name!r}; {_models_hint(name)}") from None


def list_models(input_size: int | None = None, family: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally only those of one input size/family."""
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (input_size is None or s.input_size == input_size)
        and (family is None or s.family == family)
    )


def list_families() -> list[str]:
    """Sorted family names."""
    return sorted({s.family for s in _REGISTRY.values()})


def create_model(name: str, num_classes: int, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``name`` for ``num_classes`` classes; extra ``kwargs`` go to its constructor.

    ``pretrained=True`` loads published weights (torchvision models only; raises
    :class:`kdsweep.errors.CheckpointError` when they cannot be downloaded) and is a
    ``ConfigError`` for models without published weights.
    """
    spec = get_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pretrained:
        if not spec.pretrained:
            raise ConfigError(
                f"model {name!r} has no published pretrained weights; train it (method=ce) "
                "or pass a checkpoint"
            )
        kwargs["pretrained"] = True
    return spec.constructor(num_classes, **kwargs)
