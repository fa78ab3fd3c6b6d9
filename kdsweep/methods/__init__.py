"""Training objectives: one module per method, each registered under its standard name.

Adding a method: write ``kdsweep/methods/NAME.py`` with a :class:`Method` subclass decorated by
``@register_method("NAME")``, import it below, and add ``conf/method/NAME.yaml`` with its defaults.
"""

from kdsweep.methods import ce, kd  # noqa: F401  (registration side effects)
from kdsweep.methods.base import (
    Method,
    StepInfo,
    check_range,
    create_method,
    get_method,
    list_methods,
    register_method,
)

__all__ = [
    "Method",
    "StepInfo",
    "check_range",
    "create_method",
    "get_method",
    "list_methods",
    "register_method",
]
