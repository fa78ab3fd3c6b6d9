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
    k = int(metrics["deployed_peer"])
    saved = g.best_weights()
    assert saved["peer"] == PEERS[k]
    plain = create_model("resnet8", num_classes=10)
    load_model_weights(plain, saved, arch="resnet8", num_classes=10, source="best.pt")
    plain.eval()
    g.peers[k].student.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), g.peers[k].student(x))
