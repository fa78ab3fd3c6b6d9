"""Fault injection: a run killed with SIGKILL and re-run resumes to exactly the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsweep.engine import load_checkpoint, save_checkpoint
from kdsweep.models import create_model

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses: the full tier (pytest -q)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["method=kd", "teacher=resnet8", "student=resnet8", "schedule.epochs=6",
        "train.limit_train_batches=3", "train.limit_val_batches=1", "schedule.eval_batch_size=100",
        "train.progress=false", "cpu_threads=1", "seed=3"]


def launch(cwd: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *ARGS, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen) -> str:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return out


def only_run(cwd: Path, method: str = "kd"):
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("kdsweep")
    runs = client.search_runs([exp.experiment_id], f"tags.method = '{method}'")
    assert len(runs) == 1, [r.info.status for r in runs]
    return client, runs[0]


@pytest.mark.parametrize("method", [
    [],
    # AB: 3 pre-stage epochs (its own optimiser, connectors + body), then 3 of the main schedule;
    # the first checkpoint is written in the pre-stage, so the kill lands there or just after
    ["method=ab", "method.init_epochs=3", "schedule.epochs=3"],
    # FT: the paraphraser trained in the pre-stage and frozen after it, the translator trained
    # in the main stage; killed after the first checkpoint, wherever that lands
    ["method=ft", "method.init_epochs=2", "schedule.epochs=4"],
    # CTKD: a learned temperature (state of the method, logged per epoch as method/T)
    ["method=ctkd"],
    # MLKD: the strong view of each batch, made from the epoch's own seeded draws
    ["method=mlkd", "method.logit_stand=true", "method.T=2", "method.kd_weight=9"],
], ids=["kd", "ab-prestage", "ft", "ctkd", "mlkd+ls"])
def test_sigkill_then_rerun_resumes_to_identical_result(tmp_path, method):
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    save_checkpoint(teacher, {"arch": "resnet8", "num_classes": 10,
                              "model": create_model("resnet8", num_classes=10).state_dict()})
    extra = [f"teacher.checkpoint={teacher}", *method]
    name = method[0].split("=")[1] if method else "kd"
    a, b = tmp_path / "uninterrupted", tmp_path / "killed"
    a.mkdir()
    b.mkdir()

    finished(launch(a, extra))

    p = launch(b, extra)
    deadline = time.time() + 300
    while not list(b.glob("outputs/*/*/checkpoints/last.pt")):
        assert p.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    client, killed = only_run(b, name)
    assert killed.info.status == "RUNNING"  # what a kill -9 leaves behind
    epoch_at_kill = load_checkpoint(killed.data.tags["kdsweep.resume_path"])["epoch"]
    assert 1 <= epoch_at_kill < 6

    out = finished(launch(b, extra))
    assert f"resuming MLflow run {killed.info.run_id}" in out

    client_b, run_b = only_run(b, name)
    assert run_b.info.run_id == killed.info.run_id and run_b.info.status == "FINISHED"
    steps = [m.step for m in client_b.get_metric_history(run_b.info.run_id, "acc/val")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # nothing duplicated, nothing missing
    client_a, run_a = only_run(a, name)
    for key in ("best_val_acc", "final_val_acc", "final_train_acc", "best_epoch"):
        assert run_b.data.metrics[key] == run_a.data.metrics[key], key
    train_loss_a = [m.value for m in sorted(client_a.get_metric_history(run_a.info.run_id, "loss/train"),
                                            key=lambda m: m.step)]
    train_loss_b = [m.value for m in sorted(client_b.get_metric_history(run_b.info.run_id, "loss/train"),
                                            key=lambda m: m.step)]
    assert train_loss_a == train_loss_b
    if name == "ctkd":  # the learned temperature moved, and moved the same way
        t_a, t_b = ([m.value for m in sorted(c.get_metric_history(r.info.run_id, "method/T"),
                                             key=lambda m: m.step)]
                    for c, r in ((client_a, run_a), (client_b, run_b)))
        assert len(t_a) == 6 and t_a == t_b and len(set(t_a)) > 1
    wa = load_checkpoint(run_a.data.tags["kdsweep.resume_path"])["trainer"]["model"]
    wb = load_checkpoint(run_b.data.tags["kdsweep.resume_path"])["trainer"]["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_false_starts_a_new_run(tmp_path):
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, {"arch": "resnet8", "num_classes": 10,
                              "model": create_model("resnet8", num_classes=10).state_dict()})
    args = [f"teacher.checkpoint={teacher}", "schedule.epochs=2"]
    p = launch(tmp_path, args)
    while not list(tmp_path.glob("outputs/*/*/checkpoints/last.pt")):
        assert p.poll() is None
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    out = finished(launch(tmp_path, [*args, "resume=false"]))
    assert "resuming" not in out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = MlflowClient().get_experiment_by_name("kdsweep")
    statuses = sorted(r.info.status for r in MlflowClient().search_runs([exp.experiment_id]))
    assert statuses == ["FINISHED", "RUNNING"]


def test_a_run_whose_process_is_alive_is_not_taken_over():
    from kdsweep import liveness

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    host = liveness.owner()["host"]
    try:
        assert liveness.alive(liveness.parse_tag(f"{host}:{alive.pid}"))
        start = liveness._proc_start(alive.pid)
        assert liveness.alive(liveness.parse_tag(f"{host}:{alive.pid}:{start}"))
        # the same pid with another start time: a reused pid, not our process
        assert liveness.alive(liveness.parse_tag(f"{host}:{alive.pid}:1")) is False
    finally:
        alive.kill()
        alive.wait()
    assert liveness.alive(liveness.parse_tag(f"{host}:{alive.pid}")) is False
    assert liveness.alive(liveness.parse_tag(f"other-host:{os.getpid()}")) is None
    assert liveness.alive(liveness.owner()) is True


def test_sigkill_before_the_first_checkpoint_restarts_the_run(tmp_path):
    """Killed after its MLflow run exists but before any last.pt: the re-run starts it again as
    a new run and deletes the old one (not left RUNNING forever beside the new one, and no step
    or param of the dead attempt is mixed into the new run)."""
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, {"arch": "resnet8", "num_classes": 10,
                              "model": create_model("resnet8", num_classes=10).state_dict()})
    args = [f"teacher.checkpoint={teacher}", "train.limit_train_batches=16", "schedule.epochs=1"]
    p = launch(tmp_path, args)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    deadline = time.time() + 120
    while time.time() < deadline:  # the run exists, no checkpoint yet
        time.sleep(0.05)
        assert p.poll() is None
        try:
            exp = client.get_experiment_by_name("kdsweep")
            if exp and client.search_runs([exp.experiment_id]):
                break
        except Exception:
            continue
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/last.pt"))
    (old,) = client.search_runs([exp.experiment_id])
    p.send_signal(signal.SIGKILL)
    p.wait()
    out = finished(launch(tmp_path, args))
    assert f"MLflow run {old.info.run_id} died before its first checkpoint" in out
    _, r = only_run(tmp_path)  # the active runs: the new one only
    assert r.info.status == "FINISHED" and r.info.run_id != old.info.run_id
    assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "acc/val")) == [1]
    gone = client.get_run(old.info.run_id)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert gone.data.tags["kdsweep.restarted_as"] == r.info.run_id
