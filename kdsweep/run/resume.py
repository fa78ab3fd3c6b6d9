"""Resuming a crashed run in the same MLflow run, from its last full checkpoint.

A run is identified by a hash of its composed config (``kdsweep.run_key`` tag), leaving out what
does not change the result (progress bars, thread count, device, tracking location, the sweep
bookkeeping). Re-running the same command finds the newest *unfinished* MLflow run with that key
(a ``kill -9`` leaves it RUNNING; an exception leaves it FAILED) whose process is gone, and:

* when its ``last.pt`` (tag ``kdsweep.resume_path``) exists, continues from the epoch after it;
* when the process died before the first checkpoint, starts the run again from epoch 1 as a new
  MLflow run and deletes the old one (nothing of it was saved), instead of leaving it RUNNING
  forever beside the new one (:func:`kdsweep.run.record.supersede`).

Pruned runs are not resumed; ``resume=false`` always starts fresh.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from kdsweep import liveness
from kdsweep.tracking import metric_names, retry

RUN_KEY_TAG = "kdsweep.run_key"
RESUME_PATH_TAG = "kdsweep.resume_path"
OWNER_TAG = "kdsweep.owner"  # host:pid:start of the process that last ran it
PRUNED_TAG = "pruned_at_epoch"
LABEL_TAG = "kdsweep.label"  # a sweep trial's label (``t05 alpha=0.4 T=4``), this attempt's
# Config keys that do not change what a run computes.
IGNORED = (("sweep",), ("train", "progress"), ("cpu_threads",), ("device",), ("tracking",),
           ("resume",), ("fuse",))


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


@dataclass
class Previous:
    """An unfinished run to continue: its MLflow run and, when one was saved, its ``last.pt``."""

    run: Run
    checkpoint: Path | None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def find_resumable(client: MlflowClient, experiment_id: str, key: str) -> Previous | None:
    """The newest unfinished, unpruned run with ``key`` whose process is gone (on this host; a
    run of another host is resumed only when its checkpoint is readable here)."""
    runs = retry(client.search_runs, [experiment_id],
                 f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status != 'FINISHED'",
                 order_by=["attributes.start_time DESC"], max_results=20)
    for r in runs:
        tags = r.data.tags
        if PRUNED_TAG in tags:
            continue
        alive = liveness.alive(liveness.parse_tag(tags.get(OWNER_TAG)))
        if alive:
            continue  # never take over a live run (the same point proposed twice, say)
        path = tags.get(RESUME_PATH_TAG)
        if path and Path(path).is_file():
            return Previous(r, Path(path))
        if alive is False:  # died here before its first checkpoint: restart it in place
            return Previous(r, None)
    return None


def find_finished(client: MlflowClient, experiment_id: str, key: str,
                  parent_run_id: str | None) -> Run | None:
    """A sweep trial's run with ``key`` under the same parent run that already ended (finished,
    or pruned): a trial whose job was killed after its run ended but before the sweeper recorded
    the trial. Its point is not trained again; its result is reused. None outside sweeps."""
    if not parent_run_id:
        return None
    runs = retry(client.search_runs, [experiment_id],
                 f"tags.`{RUN_KEY_TAG}` = '{key}' and tags.`mlflow.parentRunId` = "
                 f"'{parent_run_id}' and attributes.status != 'RUNNING'",
                 order_by=["attributes.start_time DESC"], max_results=20)
    for r in runs:
        if r.info.status == "FINISHED" and "best_val_acc" in r.data.metrics:
            return r
        if r.info.status == "KILLED" and PRUNED_TAG in r.data.tags:
            return r
    return None


def logged_epochs(client: MlflowClient, run_id: str) -> set[int]:
    """The epochs whose validation accuracy reached MLflow (``acc/val``, or a name an older
    version logged it under)."""
    return {m.step for key in metric_names("acc/val")
            for m in retry(client.get_metric_history, run_id, key)}
