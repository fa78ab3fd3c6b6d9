"""The data-source registry: each ``dataset.source`` is declared once, in the module that
implements it, by decorating its builder::

    @register_source("embedded", check=check_embedded)
    def build_embedded(c, *, batch_size, eval_batch_size, device, seed) -> DataBundle:
        \"\"\"The packaged 5,000 + 1,000 image CIFAR-10 subset.\"\"\"

``c`` is the parsed ``dataset`` node (:func:`kdsweep.data.build.parse_config`: defaults filled
in, the values every source shares checked). ``check(c)`` makes the source's own checks that need
no decoding (files present, ``dataset.root`` required or not) and raises a one-line
:class:`~kdsweep.errors.ConfigError` or :class:`~kdsweep.errors.DataError`; it runs before any
work (``run.py``, every value of a sweep) and again at the start of ``build_data``, so the builder
may take it as done. The builder returns a :class:`~kdsweep.data.bundle.DataBundle` whose loaders
are on ``device``.

Every module of ``kdsweep/data`` is imported with the package (``kdsweep/data/__init__.py``), so a
new source is one new file there: ``dataset.source=NAME`` (or a preset ``conf/dataset/NAME.yaml``)
is accepted, checked and built at once, and the choices listed when a source is refused are
:func:`list_sources`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kdsweep.errors import ConfigError, close_matches

#: ``check(c)``: raises a one-line ConfigError/DataError, or returns None.
Check = Callable[[dict[str, Any]], None]
#: ``build(c, *, batch_size, eval_batch_size, device, seed) -> DataBundle``.
Build = Callable[..., Any]


@dataclass(frozen=True)
class DataSource:
    """Everything kdsweep knows about one ``dataset.source``."""

    name: str
    check: Check
    build: Build
    description: str = ""  # the builder's docstring, first line
    location: str | None = None  # where its data is when dataset.root is unset (for the record)


_SOURCES: dict[str, DataSource] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_source(*names: str, check: Check,
                    location: str | None = None) -> Callable[[Build], Build]:
    """Decorator registering a builder under one or more ``dataset.source`` names (one builder may
    serve several, e.g. ``cifar10`` and ``cifar100``; it reads ``c["source"]``). ``location``:
    where the data is when ``dataset.root`` is unset (recorded as the run's dataset input)."""

    def decorator(build: Build) -> Build:
        doc = (build.__doc__ or "").strip().splitlines()
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"data source name {name!r}: use lower case letters, digits and _")
            if name in _SOURCES:
                raise ValueError(f"data source {name!r} is registered twice")
            _SOURCES[name] = DataSource(name, check, build, doc[0] if doc else "", location)
        return build

    if not names:
        raise ValueError("register_source needs at least one name")
    return decorator


def list_sources() -> list[str]:
    """Sorted names of the registered data sources."""
    return sorted(_SOURCES)


def get_source(name: str) -> DataSource:
    """The :class:`DataSource` of ``name``; a one-line ConfigError naming the valid choices."""
    try:
        return _SOURCES[name]
    except KeyError:
        near = close_matches(str(name), _SOURCES)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"dataset.source={name!r} (from dataset.name when unset) is not one of "
                          f"{list_sources()}{hint}") from None


__all__ = ["Build", "Check", "DataSource", "get_source", "list_sources", "register_source"]
