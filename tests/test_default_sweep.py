"""``python run.py -m a=1,2 b=3,4`` as a new user types it: kdsweep's sweep, a fused grid, runs
named by their point, the study as Optuna users read it, and a terminal that reads at a glance."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from test_sweeper import ROOT, TINY, _env, parent_and_children

pytestmark = pytest.mark.slow  # an end-to-end sweep in a subprocess


def test_m_runs_a_fused_grid_named_by_its_points(tmp_path, teacher):
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "method.alpha=0.3,0.9", "method.T=2,8",
           "teacher=resnet8", "student=resnet8", f"teacher.checkpoint={teacher}",
           "hydra.sweeper.study_name=plain", *TINY]
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "kdsweep: 4 trials, a grid (every swept key is a list or choice()): up to 4 per job" in out
    assert "4 trials in 1 job(s): 4 fused" in out
    # what a user should not have to read
    for noise in ("ExperimentalWarning", "sweep.members_file", "sweep.parent_run_id",
                  "A new study created"):
        assert noise not in out, noise
    # one line per epoch for the cohort, then one table of the trials
    assert sum("(4 runs)" in line and "ETA" in line for line in out.splitlines()) == 2
    table = out[out.index("  run "):].splitlines()
    assert table[0].split() == ["run", "val", "best", "epoch", "final", "gap", "MLflow", "run"]
    assert sorted(line.split()[1:3] for line in table[1:5]) == [
        ["alpha=0.3", "T=2"], ["alpha=0.3", "T=8"], ["alpha=0.9", "T=2"], ["alpha=0.9", "T=8"]]
    assert "kdsweep: sweep 4/4 trials done, best" in out
    # MLflow: children named by their point, rounded derived metrics, a described parent
    client, parent, children = parent_and_children(tmp_path, "plain")
    assert sorted(c.info.run_name for c in children) == [
        "alpha=0.3 T=2", "alpha=0.3 T=8", "alpha=0.9 T=2", "alpha=0.9 T=8"]
    for c in children:
        gap = c.data.metrics["train_val_gap"]
        assert gap == round(gap, 4)
    note = parent.data.tags["mlflow.note.content"]
    assert "Best: **" in note and "| alpha \\ T |" in note
    # Optuna: the grid as written (categorical), each trial's point as a user attribute
    study = optuna.load_study(study_name="plain",
                              storage=f"sqlite:///{tmp_path / 'multirun' / 'plain' / 'optuna.db'}")
    for t in study.trials:
        assert t.distributions["method.T"] == CategoricalDistribution([2, 8])
        assert t.user_attrs["point"] == (f"alpha={t.params['method.alpha']} "
                                         f"T={t.params['method.T']}")
