"""Training objectives: one module per method, each registered under its standard name.

Adding a method: write ``kdsweep/methods/NAME.py`` with a :class:`Method` subclass decorated by
``@register_method("NAME")`` and add ``conf/method/NAME.yaml`` with its defaults. Every module of
this package is imported here, so nothing else needs editing.
"""

import importlib
import pkgutil

from kdsweep.methods.base import (
    BuildContext,
    Method,
    StepInfo,
    check_range,
    create_method,
    get_method,
    list_methods,
    register_method,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BuildContext",
    "Method",
    "StepInfo",
    "check_range",
    "create_method",
    "get_method",
    "list_methods",
    "register_method",
]
