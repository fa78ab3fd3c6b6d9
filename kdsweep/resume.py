"""Resuming a crashed run in the same MLflow run, from its last full checkpoint.

A run is identified by a hash of its composed config (``kdsweep.run_key`` tag), leaving out what
does not change the result (progress bars, thread count, device, tracking location, the sweep
bookkeeping). Re-running the same command finds the newest *unfinished* MLflow run with that key
(a ``kill -9`` leaves it RUNNING; an exception leaves it FAILED), loads the ``last.pt`` its tag
``kdsweep.resume_path`` points at, and continues from the epoch after it. Pruned runs and runs
without a checkpoint are not resumed; ``resume=false`` always starts fresh.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

RUN_KEY_TAG = "kdsweep.run_key"
RESUME_PATH_TAG = "kdsweep.resume_path"
OWNER_TAG = "kdsweep.owner"  # host:pid of the process that last ran it
# Config keys that do not change what a run computes.
IGNORED = (("sweep",), ("train", "progress"), ("cpu_threads",), ("device",), ("tracking",),
           ("resume",))


def run_key(composed: Mapping[str, Any]) -> str:
    cfg = copy.deepcopy(dict(composed))
    for path in IGNORED:
        node = cfg
        for part in path[:-1]:
            node = node.get(part) or {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    blob = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive_here(owner_tag: str | None) -> bool:
    """Whether the run's process is still alive on this host (an identical run running now, e.g.
    the same point proposed twice in a sweep, must not be taken over)."""
    if not owner_tag or ":" not in owner_tag:
        return False
    host, _, pid = owner_tag.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_resumable(experiment_id: str, key: str) -> tuple[Run, Path] | None:
    """The newest unfinished, unpruned run with ``key`` whose checkpoint file exists and whose
    process is not alive on this host."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=20,
    )
    for r in runs:
        path = r.data.tags.get(RESUME_PATH_TAG)
        if "pruned_at_epoch" in r.data.tags or not path or _alive_here(r.data.tags.get(OWNER_TAG)):
            continue
        if Path(path).is_file():
            return r, Path(path)
    return None


def capture_rng() -> dict[str, Any]:
    """Every RNG state a run touches, as tensors and plain Python (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def logged_epochs(run_id: str, metric: str = "val_acc") -> set[int]:
    return {m.step for m in MlflowClient().get_metric_history(run_id, metric)}
