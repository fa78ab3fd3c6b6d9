"""The sweep's MLflow parent run: created once per study, reused when the sweep is resumed.

Trials become its children on the job side (``sweep.parent_run_id`` -> tag ``mlflow.parentRunId``).
The sweeper never makes the parent the *active* run of its process: with Hydra's basic launcher the
trials run in this very process and start their own runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kdsweep import liveness
from kdsweep.sweep.claims import Claims
from kdsweep.tracking import mask_text, mask_url, retry

log = logging.getLogger(__name__)

PARENT_KEY = "__mlflow_parent_run__"
STUDY_TAG = "kdsweep.study"
STORAGE_TAG = "kdsweep.storage"
ROLE_TAG = "kdsweep.role"


OWNER_TAG = "kdsweep.owner"  # host:pid:start of the sweeper process that holds the parent run


def close_dead_parents(client: MlflowClient, experiment_id: str) -> None:
    """Sweep parent runs left RUNNING by a sweeper process that died (on this host) are ended
    FAILED with the reason; a later run of the same study reopens its own."""
    with contextlib.suppress(Exception):
        runs = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'sweep' and "
                                  "attributes.status = 'RUNNING'", max_results=1000)
        for r in runs:
            if liveness.alive(liveness.parse_tag(r.data.tags.get(OWNER_TAG))) is False:
                client.set_tag(r.info.run_id, "kdsweep.error", "its sweeper process died")
                client.set_terminated(r.info.run_id, "FAILED")
                log.info("closed sweep parent run %s: its sweeper process died", r.info.run_id)


class ParentRun:
    def __init__(self, tracking_uri: str, experiment: str):
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = retry(self.client.get_experiment_by_name, experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # created meanwhile by another process
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id
        self.run_id: str | None = None

    def _usable(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id

    def ensure(self, claims: Claims, study: str, storage: str, params: Mapping[str, str],
               tags: Mapping[str, str]) -> str:
        """The parent run of ``study``: the claimed one, a tagged one, or a new one (claimed)."""
        claim = claims.get(study, PARENT_KEY)
        if claim is not None and not claim.pending and self._usable(claim.value):
            self.run_id = claim.value
        else:
            found = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{STUDY_TAG}` = '{study}' and tags.`{STORAGE_TAG}` = '{mask_url(storage)}'",
                order_by=["attributes.start_time ASC"], max_results=1)
            run_id = found[0].info.run_id if found else None
            if run_id is None:
                run = self.client.create_run(self.experiment_id, run_name=study, tags={
                    STUDY_TAG: study, STORAGE_TAG: mask_url(storage), ROLE_TAG: "sweep"})
                run_id = run.info.run_id
            won = (claims.insert(study, PARENT_KEY, run_id) if claim is None
                   else claims.swap(study, PARENT_KEY, claim.value, run_id))
            if won:
                self.run_id = run_id
            else:  # another sweeper of this study got there first: use its run
                if not found:
                    self.client.delete_run(run_id)
                winner = claims.get(study, PARENT_KEY)
                assert winner is not None
                self.run_id = winner.value
            log.info("MLflow parent run %s for study %s", self.run_id, study)
        close_dead_parents(self.client, self.experiment_id)
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if "kdsweep.error" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "kdsweep.error")
        self.log_params(params)
        self.set_tags({**tags, OWNER_TAG: liveness.owner_tag()})
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params are immutable in MLflow: new keys are logged, changed values become tags."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        params = {k: mask_text(str(v)) for k, v in params.items()}
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        for k, v in params.items():
            if k in existing and existing[k] != str(v)[:6000]:
                self.client.set_tag(self.run_id, f"changed.{k}", str(v)[:5000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, mask_text(str(v))[:5000])
                                                 for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0)
                                                    for k, v in metrics.items()])

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def child_of_trial(self, number: int) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.run_id}' and tags.`optuna.trial` = '{number}'",
            order_by=["attributes.start_time DESC"])

    def link_trial(self, storage: Any, trial_id: int, number: int) -> None:
        """The trial's MLflow run id as a trial attribute (optuna-dashboard shows it)."""
        with contextlib.suppress(Exception):
            children = self.child_of_trial(number)
            if children:
                storage.set_trial_user_attr(trial_id, "mlflow_run_id", children[0].info.run_id)

    def record_failure(self, number: int, study: str, reason: str, overrides: list[str],
                       create: bool = True) -> None:
        """Mark a failed trial's child run FAILED with the reason; with ``create``, create one if
        the trial failed before starting one (a config error, say), so every failed trial shows
        up under the parent."""
        reason, overrides = mask_text(reason), [mask_text(o) for o in overrides]
        children = self.child_of_trial(number)
        if children or not create:
            for run in children:
                if run.info.status in ("RUNNING", "SCHEDULED"):
                    self.client.set_tag(run.info.run_id, "kdsweep.error", reason[:5000])
                    self.client.set_terminated(run.info.run_id, "FAILED")
            return
        run = self.client.create_run(self.experiment_id, run_name=f"trial {number} (failed)", tags={
            "mlflow.parentRunId": self.run_id, "optuna.study": study, "optuna.trial": str(number),
            "kdsweep.error": reason[:5000]})
        from mlflow.entities import Param

        params = {"overrides": " ".join(overrides) or "(none)"}
        params.update(o.split("=", 1) for o in overrides if "=" in o)
        self.client.log_batch(run.info.run_id, params=[Param(k.lstrip("+~"), str(v)[:6000])
                                                       for k, v in params.items()])
        self.client.set_terminated(run.info.run_id, "FAILED")
