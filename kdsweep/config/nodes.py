"""Config nodes generated from code, so that nothing is declared twice.

- ``teacher/NAME`` and ``student/NAME`` for every model of the registry (:mod:`kdsweep.models`):
  an architecture is defined once, in Python, and usable in both roles;
- ``method/NAME`` for every registered method, as a typed structured config built from the
  method's declared hyper-parameters (:func:`kdsweep.methods.hparams`), so ``method.alpha=abc``
  is refused by Hydra at composition and ``--cfg job`` shows every option with its default;
- ``kdsweep_schema``, the typed schema of the whole run config (:mod:`kdsweep.config.schema`).

YAML files in ``teacher/``, ``student/`` or ``method/`` of a config directory of the user's
(``python run.py --config-dir DIR ...``) add presets on top (a teacher with a fixed checkpoint,
``kd_at`` as a ``multi`` preset, ...).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hydra.core.config_store import ConfigStore

from kdsweep.config.schema import RunConfig, StudentConf, TeacherConf
from kdsweep.methods import Method, get_method, hparams, list_methods
from kdsweep.models import list_models, renamed_models

_DONE = False


def method_schema(cls: type[Method]) -> type:
    """A dataclass ``{name: str, <hyper-parameter>: <type> = <default>, ...}`` for ``cls``."""
    fields: list[tuple[str, Any, Any]] = [("name", str, dataclasses.field(default=cls.name))]
    for hp in hparams(cls):
        typ = hp.type
        if typ is not Any and hp.nullable:
            typ = typing.Optional[typ]  # noqa: UP045  (OmegaConf reads typing.Optional)
        if isinstance(hp.default, (list, dict)):
            default = dataclasses.field(default_factory=lambda v=hp.default: list(v))
        else:
            default = dataclasses.field(default=hp.default)
        fields.append((hp.name, typ, default))
    return dataclasses.make_dataclass(f"{type(cls).__name__}_{cls.name}_conf", fields)


def register_configs() -> None:
    """Store the generated nodes in Hydra's ConfigStore (idempotent)."""
    global _DONE
    if _DONE:
        return
    cs = ConfigStore.instance()
    cs.store(name="kdsweep_schema", node=RunConfig)
    for name in list_models():
        cs.store(group="teacher", name=name, node=TeacherConf(name=name))
        cs.store(group="student", name=name, node=StudentConf(name=name))
    for old in renamed_models():  # kept as options so that they fail with a pointer to the new name
        cs.store(group="teacher", name=old, node=TeacherConf(name=old))
        cs.store(group="student", name=old, node=StudentConf(name=old))
    for name in list_methods():
        cs.store(group="method", name=name, node=method_schema(get_method(name)))
    _DONE = True
