"""MLflow tracking: opening the store, recording runs, and keeping credentials out of both.

- :mod:`~kdsweep.tracking.store`: checked URIs, store creation under a lock, UI commands and links;
- :mod:`~kdsweep.tracking.recorder`: :class:`RunRecorder`, one run written through a client;
- :mod:`~kdsweep.tracking.params`: flat params in one canonical format, package versions;
- :mod:`~kdsweep.tracking.secrets`: URL masking; :mod:`~kdsweep.tracking.retries`: the one retry helper.
"""

from kdsweep.tracking.params import (
    CONSTANT_PER_EPOCH,
    canonical,
    epoch_metric_name,
    flatten,
    metric_names,
    package_versions,
)
from kdsweep.tracking.recorder import RunRecorder, find_best_run
from kdsweep.tracking.retries import retry
from kdsweep.tracking.secrets import mask_files, mask_text, mask_tree, mask_url
from kdsweep.tracking.store import (
    absolute_uri,
    check_reachable,
    check_uri,
    open_store,
    runs_link,
    sqlite_path,
    ui_command,
)

__all__ = [
    "CONSTANT_PER_EPOCH",
    "epoch_metric_name",
    "metric_names",
    "RunRecorder",
    "absolute_uri",
    "canonical",
    "check_reachable",
    "check_uri",
    "find_best_run",
    "flatten",
    "mask_files",
    "mask_text",
    "mask_tree",
    "mask_url",
    "open_store",
    "package_versions",
    "retry",
    "runs_link",
    "sqlite_path",
    "ui_command",
]
