"""Extensions: a feature that not every run uses lives in one package and plugs into kdsweep
through the hooks of :class:`Extension`. :data:`EXTENSIONS` is the registry: removing an
extension is deleting its folder and its line here (docs/architecture.md, "Add an extension").

An extension package's ``__init__`` defines ``EXTENSION = Extension(...)`` and imports nothing
heavier than its config schemas, because this registry is read by the lowest layers (the model
registry, the config schema). What it can add:

- ``nodes``: config nodes, each a dataclass. A top-level key (``"reducenet"``) is null unless a
  preset or the command line sets it; a key under an existing node (``"student.adapt"``) is
  always there with the dataclass's defaults (:mod:`kdsweep.config.schema`).
- ``models``: modules whose ``@register_model`` constructors join the model registry
  (imported with :mod:`kdsweep.models`).
- ``hooks``: ``"module:Class"``, a subclass of :class:`kdsweep.run.hooks.RunHooks`: checks
  before any work, what is done to a student once it is built and after it is trained, and,
  for an extension that turns one config into several runs, the job it runs instead.
- ``presets``: a folder of config groups (``experiment/*.yaml``) on Hydra's search path, next to
  ``conf/`` (added by the Hydra plugin in ``hydra_plugins/kdsweep_optuna_sweeper``).

Only this module names the extensions, as strings; no kdsweep module imports one.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The registry: one line per extension (its package).
EXTENSIONS: tuple[str, ...] = (
    "kdsweep.reducenet",  # ReduceNet's grow-shrink-distil stages (kdsweep/reducenet/README.md)
)


@dataclass(frozen=True)
class Extension:
    """What an extension adds (see the module's docstring)."""

    name: str
    nodes: Mapping[str, type] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    hooks: str | None = None
    presets: Path | None = None


@functools.cache
def loaded() -> tuple[Extension, ...]:
    """Every registered extension's :class:`Extension`, in registry order."""
    out = []
    for package in EXTENSIONS:
        ext = getattr(importlib.import_module(package), "EXTENSION", None)
        if not isinstance(ext, Extension):
            raise TypeError(f"extension {package} defines no EXTENSION = Extension(...)")
        out.append(ext)
    return tuple(out)


def nodes() -> dict[str, type]:
    """The config nodes the extensions add, by dotted key; two extensions may not share one."""
    out: dict[str, type] = {}
    for ext in loaded():
        for key, schema in ext.nodes.items():
            if key in out:
                raise ValueError(f"extensions: config node {key!r} is added twice")
            out[key] = schema
    return out


def import_models() -> None:
    """Import the extensions' model modules (their constructors register themselves)."""
    for ext in loaded():
        for module in ext.models:
            importlib.import_module(module)


def load_object(spec: str) -> Any:
    """``"package.module:Name"`` -> the object."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["EXTENSIONS", "Extension", "import_models", "load_object", "loaded", "nodes"]
