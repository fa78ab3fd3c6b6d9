"""kdsweep's model zoo: one registry of architectures and one feature contract for all of them.

Importing this package registers every model; see ``docs/models.md``. To add a model, write one
file with ``@register_model`` constructors and import it below.
"""

from kdsweep.models.features import FeatureTap, ModelOutput, bn_margin, resolve_module
from kdsweep.models.profile import count_macs, count_parameters
from kdsweep.models.registry import (
    FeatureSpec,
    ModelSpec,
    create_model,
    get_spec,
    list_families,
    list_models,
    register_model,
)

# Model files: importing them runs their @register_model decorators.
from kdsweep.models import (  # noqa: E402, F401  isort: skip
    cifar_resnet,
    densenet,
    efficientnet,
    mobilenetv2,
    resnet_cifar,
    resnext,
    shufflenet,
    torchvision_models,
    vgg,
    wrn,
)

__all__ = [
    "FeatureSpec",
    "FeatureTap",
    "ModelOutput",
    "ModelSpec",
    "bn_margin",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_spec",
    "list_families",
    "list_models",
    "register_model",
    "resolve_module",
]
