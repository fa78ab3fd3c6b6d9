"""A member whose method couples several students: they learn offline from the teacher and
online from each other (ModReduce's peers), and are recorded as one run.

Each peer is an ordinary :class:`~kdsweep.engine.member.Member` (its own student, offline method,
optimiser, LR schedule and RNG stream). Per batch, every peer's forward pass and offline loss
terms come first; then the group's *coupling* (the method, e.g. ModReduce) turns them, with the
peers' detached logits, into one loss per peer and the loss of its own parts (an aggregator);
then each peer steps its own optimiser, and the coupling its own. Each epoch every peer is
validated, the coupling's aggregate too; the group's ``val_acc`` is the best peer's, and
``best.pt`` holds that peer's weights, so it loads as a plain student.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from kdsweep.engine.device import Precision
from kdsweep.engine.distributed import SINGLE, DistEnv, any_true, average_gradients
from kdsweep.engine.forward import limited
from kdsweep.engine.member import (
    DIVERGED,
    FitResult,
    Member,
    RngStream,
    StepContext,
    Sums,
    diverged,
)
from kdsweep.methods import BuildContext, Method, StepInfo
from kdsweep.models import ModelOutput


class Coupling(Protocol):
    """What a method that couples peers provides (see :class:`kdsweep.methods.modreduce.ModReduce`)."""

    peer_names: tuple[str, ...]

    def attach_peers(self, students: Sequence[nn.Module], num_classes: int) -> None: ...
    def combine(self, logits: list[Tensor], terms: list[dict[str, Tensor]], targets: Tensor,
                x: Tensor, info: StepInfo) -> tuple[list[Tensor], Tensor | None, dict[str, Tensor]]: ...
    def aggregate(self, logits: list[Tensor], x: Tensor) -> Tensor | None: ...
    def end_epoch(self, students: Sequence[nn.Module], epoch: int) -> None: ...
    def make_optimizer(self) -> torch.optim.Optimizer | None: ...


class PeerGroup(Member):
    """Several peers trained as one member (one MLflow run); see the module docstring."""

    def __init__(self, name: str, peers: Sequence[Member], coupling: Method, *, arch: str,
                 rng: RngStream):
        super().__init__(name, peers[0].student, coupling, peers[0].schedule, arch=arch, rng=rng)
        self.peers = list(peers)
        self.coupling: Any = coupling
        self.coupling_opt: torch.optim.Optimizer | None = None
        self.best_peer = 0

    @property
    def needs_teacher(self) -> bool:
        return any(p.needs_teacher for p in self.peers)

    @property
    def needs_features(self) -> bool:
        return any(p.needs_features for p in self.peers)

    def attach(self, channels_last: bool, compile: bool = False) -> None:
        for p in self.peers:
            p.attach(channels_last, compile)

    def build(self, x: Tensor, t_out: ModelOutput | None, ctx: BuildContext,
              step: StepContext) -> None:
        for p in self.peers:
            p.build(x, t_out, ctx, step)
        with self.rng.active():
            self.coupling.attach_peers([p.student for p in self.peers], ctx.num_classes)
            self.coupling.to(step.device)
        self.coupling_opt = self.coupling.make_optimizer()
        self.optimizer, self.scheduler = self.peers[0].optimizer, self.peers[0].scheduler

    def begin_epoch(self, device: torch.device, epoch: int = -1) -> None:
        for p in self.peers:
            p.begin_epoch(device, epoch)
        self.coupling.train()
        self.sums = Sums(device)

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, t_out: ModelOutput | None,
                   epoch: int, step: StepContext, views: dict[str, Tensor] | None = None) -> None:
        info = StepInfo(epoch=epoch, step=self.global_step, epochs=step.epochs,
                        steps_per_epoch=step.steps_per_epoch, indices=idx)
        outs, offline = [], []
        for p in self.peers:
            with p.rng.active(), step.precision.autocast():
                s_out = p.forward(x)
                outs.append(s_out.logits)
                offline.append(p.method(s_out, t_out, y, info))
        with self.rng.active():
            losses, agg_loss, terms = self.coupling.combine(outs, offline, y, x, info)
        total = sum(losses) + (agg_loss if agg_loss is not None else 0.0)
        bad = any_true(~torch.isfinite(total.detach()), step.dist)
        if step.sync_every == 1 and bool(bad):
            self.stop(DIVERGED, diverged(epoch, self.global_step, terms))
            return
        for p, loss, logits in zip(self.peers, losses, outs, strict=True):
            p.apply(loss, bad, step)  # the peers share no graph: online targets are detached
            p.sums.add(loss, logits, y, {}, bad, p.global_step)
            p.global_step += 1
        if agg_loss is not None and self.coupling_opt is not None:
            self.coupling_opt.zero_grad(set_to_none=True)
            agg_loss.backward()
            average_gradients(self.coupling.parameters(), step.dist)
            if step.sync_every > 1:
                self.coupling_opt.found_inf = bad.float()
            self.coupling_opt.step()
        self.sums.add(total, outs[self.best_peer], y, terms, bad, self.global_step)
        self.global_step += 1

    def epoch_stats(self, seen: int, dist_env: DistEnv = SINGLE, epoch: int = -1) -> dict[str, float]:
        out = {**self.sums.stats(seen, dist_env),
               "lr": self.peers[0].optimizer.param_groups[0]["lr"]}
        for name, p in zip(self.coupling.peer_names, self.peers, strict=True):
            s = p.sums.stats(seen, dist_env)
            out[f"train_loss_{name}"], out[f"train_acc_{name}"] = s["train_loss"], s["train_acc"]
        return out

    @torch.no_grad()
    def validate(self, loader: Any, precision: Precision, limit: int | None) -> dict[str, float]:
        """Every peer's accuracy, the coupling's aggregate's, and the group's: its best peer's."""
        out: dict[str, float] = {}
        accs = []
        for name, p in zip(self.coupling.peer_names, self.peers, strict=True):
            v = p.validate(loader, precision, limit)
            out[f"val_loss_{name}"], out[f"val_acc_{name}"] = v["val_loss"], v["val_acc"]
            accs.append(v)
        agg = self._aggregate_accuracy(loader, precision, limit)
        if agg is not None:
            out["val_acc_aggregate"] = agg
        self.best_peer = max(range(len(accs)), key=lambda k: accs[k]["val_acc"])
        out.update(accs[self.best_peer])
        out["val_deployed_peer"] = float(self.best_peer)  # logged as peers/deployed
        self.coupling.end_epoch([p.student for p in self.peers], len(self.result.history))
        return out

    def _aggregate_accuracy(self, loader: Any, precision: Precision, limit: int | None) -> float | None:
        correct, n = 0, 0
        for p in self.peers:
            p.student.eval()
        try:
            for x, y, _ in limited(loader, limit):
                with precision.autocast():
                    logits = [p.forward(x).logits.float() for p in self.peers]
                    g = self.coupling.aggregate(logits, x)
                if g is None:
                    return None
                correct += int((g.argmax(1) == y).sum())
                n += y.numel()
        finally:
            for p in self.peers:
                p.student.train()
        return 100.0 * correct / max(n, 1)

    def best_weights(self) -> dict[str, Any]:
        """The best peer's weights, as a plain student (``peer`` names it)."""
        p = self.peers[self.best_peer]
        return {"model": p.student.state_dict(), "method": p.method.state_dict(),
                "peer": self.coupling.peer_names[self.best_peer]}

    def modules(self) -> list[nn.Module]:
        return [m for p in self.peers for m in p.modules()] + [self.coupling]

    def close(self) -> None:
        for p in self.peers:
            p.close()

    def state_dict(self) -> dict[str, Any]:
        return {"peers": [p.state_dict() for p in self.peers],
                "coupling": self.coupling.state_dict(),
                "coupling_opt": self.coupling_opt.state_dict() if self.coupling_opt else None,
                "global_step": self.global_step, "result": self.result.to_dict(),
                "rng": self.rng.state_dict(), "best_peer": self.best_peer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, s in zip(self.peers, state["peers"], strict=True):
            p.load_state_dict(s)
        self.coupling.load_state_dict(state["coupling"])
        if self.coupling_opt is not None and state.get("coupling_opt"):
            self.coupling_opt.load_state_dict(state["coupling_opt"])
        self.global_step = int(state["global_step"])
        self.result = FitResult.from_dict(state["result"])
        self.rng.load_state_dict(state["rng"])
        self.start_epoch = len(self.result.history)
        self.best_peer = int(state.get("best_peer", 0))
