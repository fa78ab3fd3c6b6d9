"""Data sets and device-side loaders for kdsweep (see docs/data.md).

``build_data(cfg, batch_size=..., eval_batch_size=..., device=..., seed=...)`` turns a ``dataset``
config node into a :class:`DataBundle` whose ``train``/``val`` loaders yield
``(images, labels, indices)`` on the device.
"""

from kdsweep.data.build import DataBundle, Loader, build_data, check_dataset, parse_config
from kdsweep.data.embedded_io import EMBEDDED_PATH, load_embedded
from kdsweep.data.loaders import StreamingLoader, TensorLoader, derive_seed

__all__ = [
    "EMBEDDED_PATH",
    "DataBundle",
    "Loader",
    "StreamingLoader",
    "TensorLoader",
    "build_data",
    "derive_seed",
    "load_embedded",
    "check_dataset",
    "parse_config",
]
