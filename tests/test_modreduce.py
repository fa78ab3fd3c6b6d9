"""ModReduce as published: three real students (peers) coupled by an aggregator, one run."""

from __future__ import annotations

import pytest
import torch

from kdsweep.engine import Member, RngStream, load_model_weights
from kdsweep.engine.device import resolve_precision
from kdsweep.engine.forward import Forward
from kdsweep.engine.member import StepContext
from kdsweep.engine.peers import PeerGroup
from kdsweep.methods import BuildContext, create_method
from kdsweep.methods.modreduce import PEERS
from kdsweep.models import create_model

CPU = torch.device("cpu")
SCHED = {"name": "constant", "epochs": 240, "batch_size": 8, "lr": 0.05, "optimizer": "sgd"}


def group(online: str, epochs: int = 240):
    torch.manual_seed(0)
    method = create_method({"name": "modreduce", "online": online, "batch_size": 8,
                            "crd_mode": "in_batch"})
    peers = []
    for k, (name, m) in enumerate(zip(PEERS, method.peer_methods(), strict=True)):
        torch.manual_seed(k)
        peers.append(Member(name, create_model("resnet8", num_classes=10), m, SCHED,
                            arch="resnet8", rng=RngStream(CPU)))
    g = PeerGroup("g", peers, method, arch="resnet8", rng=RngStream(CPU))
    g.attach(channels_last=False)
    teacher = create_model("resnet14", num_classes=10).eval().requires_grad_(False)
    t_fwd = Forward(teacher, "resnet14", features=True)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    step = StepContext(epochs, 1, resolve_precision("fp32", CPU), 1, CPU)
    with torch.no_grad():
        t_out = t_fwd(x)
    g.build(x[:2], t_fwd(x[:2]), BuildContext(num_train=8, num_classes=10, epochs=epochs,
                                              steps_per_epoch=1, batch_size=8), step)
    return g, x, y, t_out, step


@pytest.mark.parametrize("online", ["WAvg", "FC", "ONE", "PCL"])
def test_every_aggregator_trains_three_peers_and_reduces_the_loss(online):
    g, x, y, t_out, step = group(online)
    assert len(g.peers) == 3 and len({id(p.student) for p in g.peers}) == 3
    before = [p.student.conv1.weight.detach().clone() for p in g.peers]
    g.begin_epoch(CPU)
    losses = []
    for _ in range(5):  # the last epoch: the online weight is at its final 0.7
        prev = float(g.sums.loss)
        g.train_step(x, y, torch.arange(8), t_out, 239, step)
        losses.append(float(g.sums.loss) - prev)
    assert g.active, g.error
    assert losses[-1] < losses[0], losses
    assert all(not torch.equal(b, p.student.conv1.weight) for b, p in zip(before, g.peers, strict=True))
    if online != "PCL":  # the aggregator learns with its own optimiser
        assert g.coupling_opt is not None and "agg_ce" in g.sums.terms
    else:
        assert g.coupling_opt is None and len(g.coupling.means) == 3


def test_the_deployed_checkpoint_is_the_best_peer():
    g, x, y, t_out, step = group("WAvg")
    g.begin_epoch(CPU)
    for _ in range(3):
        g.train_step(x, y, torch.arange(8), t_out, 0, step)

    class Val:  # the training batch as a one-batch validation set
        def __iter__(self):
            return iter([(x, y, torch.arange(8))])

    metrics = g.validate(Val(), step.precision, None)
    accs = [metrics[f"val_acc_{n}"] for n in PEERS]
    assert metrics["val_acc"] == max(accs) and "val_acc_aggregate" in metrics
    k = int(metrics["val_deployed_peer"])
    saved = g.best_weights()
    assert saved["peer"] == PEERS[k]
    plain = create_model("resnet8", num_classes=10)
    load_model_weights(plain, saved, arch="resnet8", num_classes=10, source="best.pt")
    plain.eval()
    g.peers[k].student.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), g.peers[k].student(x))


@pytest.mark.slow
def test_the_published_table_preset_runs_offline(tmp_path, compose):
    """ModReduce's table preset, smoke-sized: its first pair (wrn_40_2 -> wrn_16_2, the student
    alone and its four methods, taken from the preset itself) as one fused job."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient
    from omegaconf import OmegaConf

    from kdsweep.engine import save_checkpoint
    from kdsweep.sweep.space import format_value

    root = Path(__file__).resolve().parents[1]
    preset = compose(["experiment=modreduce_benchmark"], return_hydra_config=True)
    points = [dict(p) for p in OmegaConf.to_container(preset.hydra.sweeper.points)
              if p.get("student") == "wrn_16_2" and p.get("teacher", "wrn_40_2") == "wrn_40_2"]
    assert sorted(p["method"] for p in points) == ["ce", "crd", "kd", "modreduce", "semckd"]
    override = "[" + ", ".join("{" + ", ".join(f"{k}: {format_value(v)}" for k, v in p.items())
                               + "}" for p in points) + "]"
    teacher = tmp_path / "wrn_40_2.pt"
    save_checkpoint(teacher, {"arch": "wrn_40_2", "num_classes": 10,
                              "model": create_model("wrn_40_2", num_classes=10).state_dict()})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = subprocess.run(
        [sys.executable, str(root / "run.py"), "-m", "experiment=modreduce_benchmark", "debug=smoke",
         f"hydra.sweeper.points={override}", "hydra.sweeper.fuse=5", "schedule.epochs=1",
         "train.limit_train_batches=2", "train.limit_val_batches=1", "schedule.eval_batch_size=100",
         "schedule.batch_size=32", f"teacher.checkpoint={teacher}", "cpu_threads=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "5 trials in 1 job(s): 5 fused" in p.stdout
    runs = [r for r in MlflowClient(uri).search_runs(["1"]) if "optuna.trial" in r.data.tags]
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.info.run_name, r.data.tags.get("kdsweep.error")) for r in runs]
    assert sorted(r.data.tags["method"] for r in runs) == ["ce", "crd", "kd", "modreduce", "semckd"]
    mr = next(r for r in runs if r.data.tags["method"] == "modreduce")
    assert mr.info.status == "FINISHED"
    assert {"acc/val_resp", "acc/val_rel", "acc/val_feat", "acc/val_aggregate"} <= set(mr.data.metrics)
