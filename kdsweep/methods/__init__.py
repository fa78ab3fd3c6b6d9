"""Training objectives: one module per method, each registered under its standard name.

Adding a method: write ``kdsweep/methods/NAME.py`` with a :class:`Method` subclass decorated by
``@register_method("NAME")`` whose ``__init__`` declares its hyper-parameters (typed, with
defaults). Every module of this package is imported here and the ``method=NAME`` config node is
generated from the declaration, so nothing else needs editing.
"""

import importlib
import pkgutil

from kdsweep.methods.base import (
    BuildContext,
    FeatureMethod,
    HParam,
    Method,
    StepInfo,
    check_range,
    create_method,
    get_method,
    hparams,
    list_methods,
    option_matches,
    register_method,
    teacher_reads_of,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BuildContext",
    "FeatureMethod",
    "HParam",
    "Method",
    "StepInfo",
    "check_range",
    "create_method",
    "get_method",
    "hparams",
    "list_methods",
    "option_matches",
    "register_method",
    "teacher_reads_of",
]
