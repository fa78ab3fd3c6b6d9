"""Data sets and device-side loaders for kdsweep (see docs/data.md).

``build_data(cfg, batch_size=..., eval_batch_size=..., device=..., seed=...)`` turns a ``dataset``
config node into a :class:`DataBundle` whose ``train``/``val`` loaders yield
``(images, labels, indices)`` on the device.

Every module of this package is imported here, so a data source declared in its own module with
``@register_source`` (:mod:`kdsweep.data.sources`) needs no other edit.
"""

import importlib
import pkgutil

from kdsweep.data.build import DataBundle, Loader, build_data, check_dataset, parse_config
from kdsweep.data.embedded_io import EMBEDDED_PATH, load_embedded
from kdsweep.data.loaders import StreamingLoader, TensorLoader, derive_seed
from kdsweep.data.sources import DataSource, get_source, list_sources, register_source

# Source modules: importing them runs their @register_source decorators.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "EMBEDDED_PATH",
    "DataBundle",
    "DataSource",
    "Loader",
    "StreamingLoader",
    "TensorLoader",
    "build_data",
    "derive_seed",
    "get_source",
    "list_sources",
    "load_embedded",
    "check_dataset",
    "parse_config",
    "register_source",
]
