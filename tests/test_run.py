"""End-to-end runs on the embedded data set (a few steps on the CPU) against a real MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsweep.engine import save_checkpoint
from kdsweep.errors import CheckpointError
from kdsweep.models import create_model
from kdsweep.run import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["schedule.epochs=2", "train.limit_train_batches=2", "train.limit_val_batches=1",
        "schedule.eval_batch_size=100", "train.progress=false"]


def runs_of(experiment: str = "kdsweep", filter_string: str = "") -> list:
    exp = MlflowClient().get_experiment_by_name(experiment)
    return MlflowClient().search_runs([exp.experiment_id], filter_string) if exp else []


def test_ce_run_is_tracked_and_becomes_the_teacher(compose, mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("KDSWEEP_LOG_MODEL", "true")
    ce = run(compose(["method=ce", "student=resnet14", *TINY]), output_dir=tmp_path / "ce")
    client = MlflowClient()
    r = client.get_run(ce.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["method.name"] == "ce" and r.data.params["student.name"] == "resnet14"
    assert r.data.params["schedule.epochs"] == "2" and "teacher.name" not in r.data.params
    assert {"dataset": "embedded", "method": "ce", "student": "resnet14"}.items() <= r.data.tags.items()
    assert r.data.tags["env.torch"] == torch.__version__
    for key in ("best_val_acc", "final_val_acc", "train_val_gap"):
        assert key in r.data.metrics
    assert {"cost.student_params", "cost.student_macs", "cohort_size"} <= set(r.data.params)
    assert not {"student_params", "cohort_size", "perf/cohort_size"} & set(r.data.metrics)
    for key in ("loss/train", "acc/train", "loss/val", "acc/val", "opt/lr", "perf/images_per_s"):
        assert [m.step for m in client.get_metric_history(ce.run_id, key)] == [1, 2]
    # the MLflow UI draws one section per prefix, sorted by name: accuracy is the top one
    assert min(k.split("/")[0] for k in r.data.metrics if "/" in k) == "acc"
    [data_input] = r.inputs.dataset_inputs
    assert data_input.dataset.name == "embedded" and data_input.dataset.digest
    # the best checkpoint is also an MLflow logged model that loads back as the student
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(f"runs:/{ce.run_id}/model")
    x = torch.randn(2, 3, 32, 32)
    ref = create_model("resnet14", num_classes=10)
    from kdsweep.engine import load_checkpoint, load_model_weights

    load_model_weights(ref, load_checkpoint(ce.checkpoint), arch="resnet14", num_classes=10,
                       source="best.pt")
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-5)
    artifacts = {a.path for a in client.list_artifacts(ce.run_id)}
    assert {"config.yaml", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(ce.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert r.data.metrics["best_val_acc"] == pytest.approx(ce.best_val_acc)

    kd = run(compose(["method=kd", "teacher=resnet14", "student=resnet8", *TINY]),
             output_dir=tmp_path / "kd")
    t = client.get_run(kd.run_id).data.tags
    assert t["teacher_source"] == "mlflow" and t["teacher_run_id"] == ce.run_id
    assert t["teacher"] == "resnet14" and t["method"] == "kd"
    assert len(runs_of(filter_string="tags.method = 'ce'")) == 1  # no teacher trained twice
    history = client.get_metric_history(kd.run_id, "loss/kd")
    assert len(history) == 2 and all(m.value > 0 for m in history)


def test_missing_teacher_is_trained_once(compose, mlflow_uri, tmp_path, capsys):
    cfg = compose(["method=kd", "teacher=resnet8", "student=resnet8", *TINY])
    first = run(cfg, output_dir=tmp_path / "a")
    assert "training one first" in capsys.readouterr().out
    ce_runs = runs_of(filter_string="tags.method = 'ce'")
    assert len(ce_runs) == 1 and ce_runs[0].data.tags["student"] == "resnet8"
    assert MlflowClient().get_run(first.run_id).data.tags["teacher_source"] == "trained"
    run(cfg, output_dir=tmp_path / "b")
    assert len(runs_of(filter_string="tags.method = 'ce'")) == 1


def test_teacher_checkpoint_path_is_used_and_checked(compose, mlflow_uri, tmp_path):
    good = tmp_path / "r14.pt"
    model = create_model("resnet14", num_classes=10)
    save_checkpoint(good, {"arch": "resnet14", "num_classes": 10, "model": model.state_dict()})
    res = run(compose(["teacher=resnet14", f"teacher.checkpoint={good}", *TINY]),
              output_dir=tmp_path / "ok")
    assert MlflowClient().get_run(res.run_id).data.tags["teacher_source"] == "checkpoint"
    assert not runs_of(filter_string="tags.method = 'ce'")

    with pytest.raises(CheckpointError, match=r"is a 'resnet14' model but the config asks for 'resnet20'"):
        run(compose(["teacher=resnet20", f"teacher.checkpoint={good}", *TINY]), output_dir=tmp_path / "x")
    wrong_classes = tmp_path / "r14_100.pt"
    save_checkpoint(wrong_classes, {"arch": "resnet14", "num_classes": 100,
                                    "model": create_model("resnet14", num_classes=100).state_dict()})
    with pytest.raises(CheckpointError, match="has 100 classes but the data set has 10"):
        run(compose(["teacher=resnet14", f"teacher.checkpoint={wrong_classes}", *TINY]),
            output_dir=tmp_path / "y")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        run(compose(["teacher=resnet14", f"teacher.checkpoint={truncated}", *TINY]),
            output_dir=tmp_path / "z")


def cli(args: list[str], cwd: Path, uri: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, **kw)


def test_cli_prints_composed_config(tmp_path, mlflow_uri):
    p = cli(["method=kd", "teacher=wrn_28_4", "student=wrn_16_2", "--cfg", "job"], tmp_path, mlflow_uri)
    assert p.returncode == 0, p.stderr
    assert "name: wrn_28_4" in p.stdout and "name: wrn_16_2" in p.stdout and "alpha: 0.9" in p.stdout


@pytest.mark.slow
def test_cli_bad_value_is_one_line_and_writes_nothing(tmp_path, mlflow_uri):
    p = cli(["method.alpha=1.5"], tmp_path, mlflow_uri)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == (
        "error: method.alpha=1.5 is out of range; allowed: [0, 1]")
    assert not (tmp_path / "mlflow.db").exists()
    p = cli(["student=wrn_16_3"], tmp_path, mlflow_uri)
    assert p.returncode != 0 and "wrn_16_2" in p.stderr


@pytest.mark.slow
def test_cli_basic_sweep_runs_each_combination(tmp_path, mlflow_uri):
    ckpt = tmp_path / "t.pt"
    save_checkpoint(ckpt, {"arch": "resnet8", "num_classes": 10,
                           "model": create_model("resnet8", num_classes=10).state_dict()})
    p = cli(["-m", "hydra/sweeper=basic", "method.alpha=0.2,0.8", "method.T=2,4", "teacher=resnet8",
             f"teacher.checkpoint={ckpt}", *TINY], tmp_path, mlflow_uri)
    assert p.returncode == 0, p.stderr[-3000:]
    mlflow.set_tracking_uri(mlflow_uri)
    kd_runs = runs_of(filter_string="tags.method = 'kd'")
    combos = sorted((r.data.params["method.alpha"], r.data.params["method.T"]) for r in kd_runs)
    assert combos == [("0.2", "2"), ("0.2", "4"), ("0.8", "2"), ("0.8", "4")]
    assert all(r.info.status == "FINISHED" for r in kd_runs)
    # named by their point, as the kdsweep sweeper's trials
    assert sorted(r.info.run_name for r in kd_runs) == [
        "alpha=0.2 T=2", "alpha=0.2 T=4", "alpha=0.8 T=2", "alpha=0.8 T=4"]
    # which preset of each group composed the run (schedule=quick's node says name: cosine)
    assert {(r.data.tags["preset.schedule"], r.data.tags["preset.method"]) for r in kd_runs} == {
        ("quick", "kd")}
    assert len(list((tmp_path / "multirun").glob("*/*/*/checkpoints/best.pt"))) == 4
    # Hydra's basic sweeper gets a parent run, sweep.json and the report too (a Hydra callback)
    (parent,) = runs_of(filter_string="tags.`kdsweep.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in kd_runs} == {parent.info.run_id}
    (sweep_dir,) = [d for d in (tmp_path / "multirun").glob("*/*") if (d / "sweep.json").is_file()]
    assert (sweep_dir / "report.md").is_file() and "| alpha \\ T | 2 | 4 |" in p.stdout


@pytest.mark.slow
def test_cli_basic_sweep_goes_on_past_a_failed_run_and_exits_3(tmp_path, mlflow_uri):
    """Hydra's own sweeper: a diverging run is one line, the next runs, the parent run ends
    FAILED, the report is written, and the exit status is 3 with the retry command."""
    ckpt = tmp_path / "t.pt"
    save_checkpoint(ckpt, {"arch": "resnet8", "num_classes": 10,
                           "model": create_model("resnet8", num_classes=10).state_dict()})
    p = cli(["-m", "hydra/sweeper=basic", "schedule.lr=1e8,0.05", "teacher=resnet8",
             f"teacher.checkpoint={ckpt}", *TINY], tmp_path, mlflow_uri)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "error: loss became non-finite" in p.stderr
    assert "kdsweep: 1 of 2 runs of this sweep failed" in p.stderr
    mlflow.set_tracking_uri(mlflow_uri)
    kd_runs = runs_of(filter_string="tags.method = 'kd'")
    assert sorted(r.info.status for r in kd_runs) == ["FAILED", "FINISHED"]
    (parent,) = runs_of(filter_string="tags.`kdsweep.role` = 'sweep'")
    assert parent.info.status == "FAILED"


@pytest.mark.slow
def test_parallel_runs_train_the_teacher_once(tmp_path, mlflow_uri):
    # Create the store first: two processes racing to create the SQLite schema is another matter.
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("kdsweep")
    args = ["teacher=resnet8", "student=resnet8", "cpu_threads=1", *TINY]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"seed={i}"], cwd=tmp_path,
                              env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert sum("training one first" in o[0] for o in outs) == 1
    assert len(runs_of(filter_string="tags.method = 'ce'")) == 1
    kd_runs = runs_of(filter_string="tags.method = 'kd'")
    assert len(kd_runs) == 2 and len({r.data.tags["teacher_run_id"] for r in kd_runs}) == 1


def test_epoch_metric_names_put_the_quantity_first():
    """Train and validation values of one quantity share a prefix (one chart section); loss terms
    and peers' values join their quantity; older names stay readable."""
    from kdsweep.tracking import epoch_metric_name, metric_names

    names = {k: epoch_metric_name(k) for k in (
        "val_acc", "train_acc", "val_loss", "train_loss", "loss_kd", "lr", "val_acc_rel",
        "train_loss_feat", "val_deployed_peer", "images_per_s", "method_T", "something")}
    assert names == {"val_acc": "acc/val", "train_acc": "acc/train", "val_loss": "loss/val",
                     "train_loss": "loss/train", "loss_kd": "loss/kd", "lr": "opt/lr",
                     "val_acc_rel": "acc/val_rel", "train_loss_feat": "loss/train_feat",
                     "val_deployed_peer": "peers/deployed", "images_per_s": "perf/images_per_s",
                     "method_T": "method/T",
                     "something": "other/something"}
    assert metric_names("acc/val") == ("acc/val", "val/acc", "val_acc")
