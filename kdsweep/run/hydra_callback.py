"""A Hydra callback that gives sweeps of Hydra's own sweepers what the kdsweep sweeper gives its
own: an MLflow parent run with every job as its child, ``sweep.json``, and the report.

``python run.py -m method.alpha=0.2,0.8 method.T=2,4`` (the basic sweeper) then ends with the
alpha x T table, and ``python -m kdsweep.report multirun/DATE/TIME`` works on its directory.
Registered in ``conf/config.yaml`` (``hydra.callbacks``); it does nothing for single runs and for
the kdsweep Optuna sweeper, which records its sweeps itself. Jobs find the parent run in the
environment variable :data:`PARENT_ENV` (Hydra's basic launcher runs them in this process).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
PARENT_ENV = "KDSWEEP_PARENT_RUN_ID"


def _sweep_dir(config: DictConfig) -> Path:
    """``hydra.sweep.dir``, relative paths taken from the launch directory."""
    from kdsweep.data.build import launch_dir

    sweep_dir = Path(str(config.hydra.sweep.dir))
    return sweep_dir if sweep_dir.is_absolute() else launch_dir() / sweep_dir


def _ours(config: DictConfig) -> bool:
    return "kdsweep_optuna" in str(config.hydra.sweeper.get("_target_", ""))


class SweepRecord(Callback):
    def __init__(self) -> None:
        self.parent: tuple[str, str] | None = None  # (tracking URI, run id)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _ours(config) or "tracking" not in config:
            return
        from mlflow.tracking import MlflowClient

        from kdsweep import liveness
        from kdsweep.data.build import launch_dir
        from kdsweep.sweep.parent import OWNER_TAG, close_dead_parents
        from kdsweep.sweep.space import SearchSpaceError, build
        from kdsweep.tracking import absolute_uri, mask_tree, mask_url, open_store

        uri = absolute_uri(str(config.tracking.uri), launch_dir())
        experiment_id = open_store(uri, str(config.tracking.experiment),
                                   launch_dir() / str(config.tracking.lock_dir))
        sweep_dir = _sweep_dir(config)
        client = MlflowClient(uri)
        close_dead_parents(client, experiment_id)
        run = client.create_run(experiment_id, run_name=f"sweep {sweep_dir.name}",
                                tags={"kdsweep.role": "sweep", "kdsweep.study": sweep_dir.name,
                                      OWNER_TAG: liveness.owner_tag()})
        self.parent = (uri, run.info.run_id)
        os.environ[PARENT_ENV] = run.info.run_id
        try:
            space = build(None, list(config.hydra.overrides.task), grid=True, points=None).describe()
        except SearchSpaceError:
            space = {"params": {}, "fixed": list(config.hydra.overrides.task)}
        from kdsweep.run.job import SWEPT_ENV

        os.environ[SWEPT_ENV] = ",".join(space["params"])  # the jobs' run names: their point
        info = mask_tree({"study_name": sweep_dir.name, "parent_run_id": run.info.run_id,
                          "tracking_uri": mask_url(uri), "experiment": str(config.tracking.experiment),
                          "study_dir": str(sweep_dir), "space": space, "report": {}})
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "sweep.json").write_text(json.dumps(info, indent=2, default=str) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent is None:
            return
        from mlflow.tracking import MlflowClient

        from kdsweep.report import write_report
        from kdsweep.run.job import SWEPT_ENV

        uri, run_id = self.parent
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop(SWEPT_ENV, None)
        client = MlflowClient(uri)
        children = client.search_runs([client.get_run(run_id).info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=5000)
        failed = [c for c in children if c.info.status == "FAILED"]
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        try:
            rep = write_report(_sweep_dir(config), log_to_parent=True)
            print(rep.markdown, flush=True)
            print(f"  report: {rep.markdown_path}", flush=True)
        except Exception as e:  # a report problem must not fail the sweep
            log.warning("could not write the sweep report: %s: %s", type(e).__name__, e)
        if failed:
            import shlex
            import sys

            from kdsweep.errors import EXIT_INCOMPLETE

            print(f"kdsweep: {len(failed)} of {len(children)} runs of this sweep failed (reasons "
                  "above and on each run, tag kdsweep.error); re-run the same command to retry "
                  f"them (Hydra's basic sweeper trains every run again; hydra/sweeper=kdsweep_optuna keeps "
                  f"finished points): {shlex.join(['python', *sys.argv])}",
                  file=sys.stderr, flush=True)
            sys.exit(EXIT_INCOMPLETE)
