"""One MLflow run, written through an explicit client and run id.

kdsweep never relies on MLflow's *active* run: a cohort trains several students at once, each
with its own run, in one process (and a sweep's trials may run in the sweeper's process). Every
call is retried while a shared store is briefly busy (:mod:`kdsweep.tracking.retries`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.entities import Run as MlflowRun
from mlflow.tracking import MlflowClient

from kdsweep.tracking.params import canonical
from kdsweep.tracking.retries import retry
from kdsweep.tracking.secrets import mask_text, mask_tree

ERROR_TAG = "kdsweep.error"  # why a run failed
BATCH = 100  # MLflow's limit of params/tags/metrics per log_batch request (of one kind)


class RunRecorder:
    """Writes params, tags, metrics and artifacts of one MLflow run."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def start(cls, uri: str, experiment_id: str, *, run_name: str | None, tags: Mapping[str, Any],
              resume_run_id: str | None = None, description: str | None = None) -> RunRecorder:
        client = MlflowClient(tracking_uri=uri)
        if resume_run_id:  # this attempt's name and tags; a reason it failed before is gone
            retry(client.update_run, resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING),
                  name=run_name)
            rec = cls(client, resume_run_id)
            rec.set_tags(tags)
            if ERROR_TAG in retry(client.get_run, resume_run_id).data.tags:
                retry(client.delete_tag, resume_run_id, ERROR_TAG)
            return rec
        all_tags = dict(tags)
        if description:
            all_tags["mlflow.note.content"] = description
        run = retry(client.create_run, experiment_id, run_name=run_name,
                    tags={k: mask_text(str(v)) for k, v in all_tags.items()})
        return cls(client, run.info.run_id)

    def run(self) -> MlflowRun:
        return retry(self.client.get_run, self.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, canonical(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            retry(self.client.log_batch, self.run_id, params=items[i:i + BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, mask_text(str(v))[:5000]) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            retry(self.client.log_batch, self.run_id, tags=items[i:i + BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        for i in range(0, len(items), BATCH):
            retry(self.client.log_batch, self.run_id, metrics=items[i:i + BATCH])

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        retry(self.client.log_text, self.run_id, json.dumps(mask_tree(obj), indent=2, default=str)
              if artifact_file.endswith(".json") else _yaml(mask_tree(obj)), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Log a folder's text files with every URL masked (Hydra's config and overrides)."""
        with tempfile.TemporaryDirectory(prefix="kdsweep-artifacts-") as tmp:
            for f in Path(folder).rglob("*"):
                if f.is_file():
                    dst = Path(tmp) / f.relative_to(folder)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        dst.write_text(mask_text(f.read_text()))
                    except UnicodeDecodeError:
                        continue  # binary files have no place among config artifacts
            retry(self.client.log_artifacts, self.run_id, tmp, artifact_path)

    def metric_steps(self, key: str) -> set[int]:
        return {m.step for m in retry(self.client.get_metric_history, self.run_id, key)}

    def end(self, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, self.run_id, status)


def _yaml(obj: Any) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(obj))


def find_best_run(client: MlflowClient, experiment_id: str, filters: Mapping[str, str],
                  metric: str, extra: list[str] | None = None) -> MlflowRun | None:
    """The finished run whose tags equal ``filters`` (and that meets the ``extra`` filter
    clauses) with the highest ``metric``, or None."""
    clauses = [f"tags.`{k}` = '{v}'" for k, v in filters.items()] + list(extra or [])
    clauses.append("attributes.status = 'FINISHED'")
    runs = retry(client.search_runs, [experiment_id], " and ".join(clauses),
                 order_by=[f"metrics.`{metric}` DESC"], max_results=1)
    return runs[0] if runs else None
