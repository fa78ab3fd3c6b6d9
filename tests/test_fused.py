"""Fused sweeps (``hydra.sweeper.fuse=N``): several trials per job, one batch stream and one
teacher pass, and every trial still a whole trial with the results it would have alone."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState
from test_sweeper import TINY, _cmd, _env, parent_and_children, study_of, sweep

from kdsweep.report import write_report

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses: the full tier (pytest -q)

GRID = ["hydra/sweeper/sampler=grid", "method.alpha=choice(0.3,0.9)", "method.T=choice(2,8)",
        "teacher=resnet8", "student=resnet8"]


def results(tmp_path: Path, study: str) -> dict[tuple[str, ...], tuple[float, list[float]]]:
    client, _, children = parent_and_children(tmp_path, study)
    out = {}
    for c in children:
        p = c.data.params
        hist = [m.value for m in sorted(client.get_metric_history(c.info.run_id, "loss/train"),
                                        key=lambda m: m.step)]
        out[(p["method.alpha"], p["method.T"], p["schedule.batch_size"])] = (
            c.data.metrics["best_val_acc"], hist)
    return out


def test_fused_sweep_equals_the_unfused_one(tmp_path, teacher):
    args = [*GRID, f"teacher.checkpoint={teacher}", *TINY]
    sweep(tmp_path, [*args, "hydra.sweeper.study_name=solo", "hydra.sweeper.fuse=1"])
    p = sweep(tmp_path, [*args, "hydra.sweeper.study_name=fused", "hydra.sweeper.fuse=4"])
    assert "4 trials in 1 job(s): 4 fused" in p.stdout
    solo, fused = results(tmp_path, "solo"), results(tmp_path, "fused")
    assert len(fused) == 4 and fused == solo  # same metrics, bit for bit
    assert all(t.state == TrialState.COMPLETE for t in study_of(tmp_path, "fused").get_trials())
    a = write_report(tmp_path / "multirun" / "solo", log_to_parent=False).tables[0].markdown("x")
    b = write_report(tmp_path / "multirun" / "fused", log_to_parent=False).tables[0].markdown("x")
    assert a == b
    # Each member's record holds its own point: label tag, run name and config.yaml's sweep node
    client, _, children = parent_and_children(tmp_path, "fused")
    for c in children:
        own = f"alpha={c.data.params['method.alpha']} T={c.data.params['method.T']}"
        config = OmegaConf.load(client.download_artifacts(c.info.run_id, "config.yaml"))
        assert c.data.tags["kdsweep.label"].endswith(own) and own in c.info.run_name
        assert config.sweep.label == c.data.tags["kdsweep.label"]
        assert config.sweep.trial_number == int(c.data.tags["optuna.trial"])
        assert not any(k.startswith("sweep.") for k in c.data.params)


def test_incompatible_trials_are_split_into_jobs(tmp_path, teacher):
    """Trials with another batch size cannot share a batch stream: two fused jobs."""
    args = ["hydra/sweeper/sampler=grid", "method.alpha=choice(0.3,0.9)",
            "schedule.batch_size=choice(32,64)", "teacher=resnet8", "student=resnet8",
            f"teacher.checkpoint={teacher}", *TINY, "hydra.sweeper.study_name=split",
            "hydra.sweeper.fuse=4"]
    p = sweep(tmp_path, args)
    assert "4 trials in 2 job(s): 2 fused, 2 fused" in p.stdout
    assert len(results(tmp_path, "split")) == 4


def test_killed_fused_job_resumes_every_member(tmp_path, teacher):
    args = [*GRID, f"teacher.checkpoint={teacher}", *TINY, "schedule.epochs=2",
            "train.limit_train_batches=6", "hydra.sweeper.study_name=kf", "hydra.sweeper.fuse=4"]
    proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # every member has saved epoch 1
            time.sleep(0.2)
            assert proc.poll() is None, "the sweep ended before it could be killed"
            if len(list(tmp_path.glob("multirun/**/checkpoints/last.pt"))) == 4:
                break
        else:
            pytest.fail("no checkpoints appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    p = sweep(tmp_path, args)
    assert p.stdout.count("resuming MLflow run") == 4
    client, _, children = parent_and_children(tmp_path, "kf")
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4
    for c in finished:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "acc/val")]
        assert sorted(steps) == [1, 2]
    states = [t.state for t in study_of(tmp_path, "kf").get_trials()]
    assert states.count(TrialState.COMPLETE) == 4
