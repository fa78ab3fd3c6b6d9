"""Every registered method runs a short real distillation on the embedded set and logs its terms."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from kdsweep.engine import save_checkpoint
from kdsweep.methods import create_method, list_methods
from kdsweep.models import create_model
from kdsweep.run import run

METHODS = list_methods()


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "resnet14.pt"
    save_checkpoint(path, {"arch": "resnet14", "num_classes": 10,
                           "model": create_model("resnet14", num_classes=10).state_dict()})
    return path


@pytest.mark.parametrize("method", METHODS)
def test_method_short_run_logs_its_loss_terms(method, compose, mlflow_uri, tmp_path, teacher_ckpt):
    from kdsweep.methods import get_method, hparams

    pre = ["method.init_epochs=1"] if any(  # a pre-stage (AB, FT, FSP): one epoch of it
        hp.name == "init_epochs" for hp in hparams(get_method(method))) else []
    cfg = compose([f"method={method}", "teacher=resnet14", f"teacher.checkpoint={teacher_ckpt}",
                   "student=resnet8", "schedule.epochs=1", "train.limit_train_batches=2",
                   "train.limit_val_batches=1", "schedule.eval_batch_size=100", "train.progress=false",
                   *pre])
    res = run(cfg, output_dir=tmp_path / "out")
    r = MlflowClient().get_run(res.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["method"] == cfg.method.name
    terms = [k for k in r.data.metrics if k.startswith("loss/") and k not in ("loss/train", "loss/val")]
    assert terms, f"{method} logged no loss terms"
    assert "cost.method_extra_params" in r.data.params
    if pre:  # the pre-stage is step 1 (its own terms), the main schedule step 2
        assert [m.step for m in MlflowClient().get_metric_history(res.run_id, "acc/val")] == [1, 2]
        assert any(k.startswith("loss/init_") for k in r.data.metrics)
        lr = [m.value for m in MlflowClient().get_metric_history(res.run_id, "opt/lr") if m.step == 1]
        init_lr = getattr(create_method(cfg.method), "init_lr", None)  # FT: RepDistiller's 0.01
        assert lr == [init_lr if init_lr is not None else cfg.schedule.lr]
