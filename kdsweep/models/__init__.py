"""kdsweep's model zoo: one registry of architectures and one feature contract for all of them.

Importing this package registers every model; see ``docs/models.md``. Every module of this package
except the infrastructure below is a model file and is imported here automatically (as
:mod:`kdsweep.methods` does for methods), so adding a model is one file with ``@register_model``
constructors and no other edit.
"""

import importlib
import pkgutil

from kdsweep import extensions
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
    renamed_models,
)

# Modules that hold no model: the registry, the feature taps, the cost counters, shared layers.
INFRASTRUCTURE = frozenset({"registry", "features", "profile", "layers"})

# Model files: importing them runs their @register_model decorators.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")
# ... and the extensions' model files (kdsweep/extensions.py), e.g. kdsweep/reducenet/network.py.
extensions.import_models()

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
    "renamed_models",
    "resolve_module",
]
