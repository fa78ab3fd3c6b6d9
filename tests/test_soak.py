"""Soak test: a fused sweep with parallel jobs, killed with ``kill -9`` at chosen moments and re-run
with the same command after each kill, then checked point by point.

The moments: (1) a job has opened its members' MLflow runs but no member has saved a checkpoint,
(2) mid-training (some members have a checkpoint), (3) some trials are complete and others run,
(4) every trial is complete (the sweeper is closing the study and writing the report). The last
rerun runs uninterrupted. Here on SQLite files; tests/test_soak_postgres.py runs it with the study
and the MLflow runs in PostgreSQL (moments 1 and 3). Then every point of the grid must have exactly one COMPLETE trial and
exactly one FINISHED MLflow run, carrying its own values (params, label, ``config.yaml``), every
per-epoch metric step exactly once, and nothing left RUNNING (trials, member runs, parent run).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_sweeper import TINY, _cmd, _env, study_of

pytestmark = pytest.mark.slow

EPOCHS = 2
ALPHAS, TS = (0.3, 0.6, 0.9), (2, 8)
ARGS = ["hydra/sweeper/sampler=grid", f"method.alpha=choice({','.join(map(str, ALPHAS))})",
        f"method.T=choice({','.join(map(str, TS))})", "teacher=resnet8", "student=resnet8",
        *TINY, f"schedule.epochs={EPOCHS}", "train.limit_train_batches=3",
        "hydra.sweeper.study_name=soak", "hydra.sweeper.fuse=2", "hydra.sweeper.n_jobs=2",
        "hydra/launcher=local"]


@dataclass
class Stores:
    """Where the sweep keeps its study and its MLflow runs (SQLite files, or PostgreSQL)."""

    mlflow: str
    optuna: str | None  # None: the study's default SQLite file under multirun/<study>/

    def count(self, which: str, sql: str, tmp_path: Path) -> int:
        """A read of a store the sweep is writing (0 while it does not exist yet)."""
        url = self.mlflow if which == "mlflow" else self.optuna
        if url is None or url.startswith("sqlite"):
            db = (Path(url[len("sqlite:///"):]) if url else
                  tmp_path / "multirun" / "soak" / "optuna.db")
            if not db.exists():
                return 0
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
                    return int(con.execute(sql).fetchone()[0])
            except sqlite3.Error:
                return 0
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        try:
            with engine.connect() as c:
                return int(c.execute(sa.text(sql)).scalar())
        except sa.exc.SQLAlchemyError:
            return 0
        finally:
            engine.dispose()


def _run_until(tmp_path: Path, args: list[str], env: dict[str, str], moment, what: str) -> None:
    """Start the sweep, wait for ``moment()``, then SIGKILL its whole process group."""
    log = (tmp_path / f"sweep-{len(list(tmp_path.glob('sweep-*.log')))}.log").open("w")
    proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            time.sleep(0.1)
            if moment():
                return
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended (rc {proc.returncode}) before the moment: {what}")
        pytest.fail(f"the moment never came: {what}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def test_fused_parallel_sweep_survives_kill_9_at_any_moment(tmp_path, teacher):
    """On SQLite files (tests/test_soak_postgres.py: the same on PostgreSQL)."""
    soak(tmp_path, teacher, Stores(f"sqlite:///{tmp_path / 'mlflow.db'}", None))


def soak(tmp_path: Path, teacher: str, stores: Stores) -> None:
    """Kill, rerun, check (the module docstring says which moments and what is checked)."""
    args = [*ARGS, f"teacher.checkpoint={teacher}"]
    if stores.optuna:
        args.append(f"hydra.sweeper.storage={stores.optuna}")
    env = {**_env(tmp_path), "MLFLOW_TRACKING_URI": stores.mlflow}
    n_points = len(ALPHAS) * len(TS)

    def checkpoints() -> int:
        return len(list(tmp_path.glob("multirun/**/checkpoints/last.pt")))

    def member_runs() -> int:
        return stores.count("mlflow", "select count(*) from tags where key = 'optuna.trial'",
                            tmp_path)

    def complete() -> int:
        return stores.count("optuna", "select count(*) from trials where state = 'COMPLETE'",
                            tmp_path)

    # (1) a job started its members' runs, none has a checkpoint yet
    _run_until(tmp_path, args, env, lambda: member_runs() >= 1 and checkpoints() == 0,
               "a member run open before any checkpoint")
    if stores.optuna is None:  # (PostgreSQL: moments 1 and 3, to keep the suite short)
        # (2) mid-training: a member saved a checkpoint, not every trial is done
        start = checkpoints()
        _run_until(tmp_path, args, env, lambda: checkpoints() > start, "a new checkpoint")
    # (3) some trials complete (their runs ended, the sweeper may not have recorded them)
    _run_until(tmp_path, args, env, lambda: complete() > 0, "a complete trial")
    if stores.optuna is None:
        # (4) every trial complete: the sweeper is summarising and writing the report
        _run_until(tmp_path, args, env, lambda: complete() >= n_points, "every trial complete")

    p = subprocess.run(_cmd(args), cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert f"{n_points} complete, 0 pruned, 0 failed (points)" in p.stdout
    assert (tmp_path / "multirun" / "soak" / "report.md").is_file()

    # Optuna: one COMPLETE trial per point, nothing RUNNING
    trials = (optuna.load_study(study_name="soak", storage=stores.optuna).get_trials()
              if stores.optuna else study_of(tmp_path, "soak").get_trials())
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    done = sorted((t.params["method.alpha"], t.params["method.T"]) for t in trials
                  if t.state == TrialState.COMPLETE)
    assert done == sorted((a, t) for a in ALPHAS for t in TS)

    # MLflow: one FINISHED child per point with its own values, every step once, none RUNNING
    client = MlflowClient(tracking_uri=stores.mlflow)
    exp = client.get_experiment_by_name("kdsweep")
    runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("kdsweep.study") == "soak"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED"
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    points = sorted((float(c.data.params["method.alpha"]), int(c.data.params["method.T"]))
                    for c in finished)
    assert points == sorted((a, t) for a in ALPHAS for t in TS)
    by_trial = {t.number: t for t in trials}
    for c in finished:
        alpha, T = c.data.params["method.alpha"], c.data.params["method.T"]
        label = f"alpha={alpha} T={T}"
        assert label in c.info.run_name, (c.info.run_name, alpha, T)
        trial = by_trial[int(c.data.tags["optuna.trial"])]
        assert trial.state == TrialState.COMPLETE
        assert (trial.params["method.alpha"], trial.params["method.T"]) == (float(alpha), int(T))
        assert trial.user_attrs.get("mlflow_run_id") == c.info.run_id
        assert c.data.tags["kdsweep.label"].endswith(label)
        assert "kdsweep.error" not in c.data.tags
        for key in ("acc/val", "loss/train", "opt/lr"):
            steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (c.info.run_name, key, steps)
        config = _config(client, c.info.run_id)
        assert config["sweep"]["label"].endswith(label) and config["method"]["alpha"] == float(alpha)
        assert config["sweep"]["trial_number"] == trial.number


def _config(client, run_id: str) -> dict:
    from omegaconf import OmegaConf

    path = client.download_artifacts(run_id, "config.yaml")
    return OmegaConf.to_container(OmegaConf.load(path))
