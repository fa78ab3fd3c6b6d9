"""The DOT optimiser (kdsweep/engine/dot.py) against a hand-written reference of mdistiller's
``DistillationOrientedTrainer`` update, and its state, skip and grad-scaler behaviour."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.engine.dot import DOT, KD_BUFFER, KD_STARTED, TASK_BUFFER
from kdsweep.engine.optim import build_scheduler
from kdsweep.errors import ConfigError


class TwoHeads(nn.Module):
    """trunk: task and distillation gradients; task_head: task only; kd_head: distillation only."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(5, 6)
        self.task_head = nn.Linear(6, 3)
        self.kd_head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.trunk(x))
        return self.task_head(h), self.kd_head(h)


def make_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> TwoHeads:
    torch.manual_seed(seed)
    return TwoHeads().to(dtype)


def batches(n: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 5, generator=g, dtype=dtype), torch.randint(0, 3, (4,), generator=g),
             torch.randn(4, 3, generator=g, dtype=dtype)) for _ in range(n)]


def losses(out: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, t: torch.Tensor):
    z_task, z_kd = out
    return F.cross_entropy(z_task, y), 3.0 * F.mse_loss(z_kd, t)


def dot_iter(model: nn.Module, opt: DOT, batch: tuple, kind: str) -> None:
    """One mdistiller-style DOT iteration; kind: both | no_task (no CE term) | no_kd (no stash)."""
    x, y, t = batch
    opt.zero_grad(set_to_none=True)
    task, kd = losses(model(x), y, t)
    if kind != "no_kd":
        kd.backward(retain_graph=True)
        opt.stash_distillation_grads()
    opt.zero_grad(set_to_none=True)
    if kind != "no_task":
        task.backward()
    opt.step()


# --- the reference, written from the paper and mdistiller's dot.py ---------------------------

def reference_grads(model: nn.Module, P: dict, batch: tuple, kind: str):
    x, y, t = batch
    names = list(P)
    task, kd = losses(torch.func.functional_call(model, P, (x,)), y, t)
    params = [P[n] for n in names]

    def grads(loss, retain):
        return dict(zip(names, torch.autograd.grad(loss, params, retain_graph=retain,
                                                   allow_unused=True), strict=True))

    g_task = dict.fromkeys(names) if kind == "no_task" else grads(task, True)
    g_kd = dict.fromkeys(names) if kind == "no_kd" else grads(kd, False)
    return g_task, g_kd


def reference_step(P: dict, bufs: dict, g_task: dict, g_kd: dict, hp: dict, lrs: dict) -> None:
    """mdistiller's update: first every task gradient (weight decay on it; momentum m - delta
    where a distillation gradient exists too, else the mean of the two momenta; a new buffer is
    the gradient itself; no buffer at all when m - delta == 0), then every distillation gradient
    (momentum m + delta where a task gradient exists, no weight decay; else the mean momentum and
    weight decay, except on the buffer's first step, which is the bare gradient)."""
    for n, g in g_task.items():
        if g is None:
            continue
        base, delta, wd = hp[n]
        m_task, m_kd = base - delta, base + delta
        d = torch.add(g, P[n], alpha=wd) if wd else g
        if m_task != 0:
            if ("task", n) not in bufs:
                bufs["task", n] = d.clone()
            else:
                m = m_task if g_kd[n] is not None else (m_kd + m_task) / 2.0
                bufs["task", n] = bufs["task", n] * m + d
            d = bufs["task", n]
        P[n] = torch.add(P[n], d, alpha=-lrs[n]).detach().requires_grad_()
    for n, k in g_kd.items():
        if k is None:
            continue
        base, delta, wd = hp[n]
        m_task, m_kd = base - delta, base + delta
        if ("kd", n) not in bufs:
            bufs["kd", n] = k.clone()
        elif g_task[n] is not None:
            bufs["kd", n] = bufs["kd", n] * m_kd + k
        else:
            d = torch.add(k, P[n], alpha=wd) if wd else k
            bufs["kd", n] = bufs["kd", n] * ((m_kd + m_task) / 2.0) + d
        P[n] = torch.add(P[n], bufs["kd", n], alpha=-lrs[n]).detach().requires_grad_()


def two_groups(model: TwoHeads, momentum: float, delta: float, wd: float) -> DOT:
    return DOT([{"params": model.trunk.parameters()},
                {"params": [*model.task_head.parameters(), *model.kd_head.parameters()],
                 "lr": 0.05, "weight_decay": 2 * wd}],
               lr=0.1, momentum=momentum, delta=delta, weight_decay=wd)


def group_of(opt: DOT, model: nn.Module) -> dict[str, dict]:
    ids = {id(p): g for g in opt.param_groups for p in g["params"]}
    return {n: ids[id(p)] for n, p in model.named_parameters()}


SEQUENCES = {
    "mixed": ["both", "no_task", "both", "no_kd", "both", "both"],
    "task_first": ["no_kd", "no_task", "both", "no_task", "no_kd", "both"],
}


def run_against_reference(momentum: float, delta: float, wd: float, kinds: list[str],
                          skips: set[int] = frozenset()) -> None:
    model = make_model()
    opt = two_groups(model, momentum, delta, wd)
    sched = build_scheduler(opt, {"name": "step", "epochs": 2, "milestones": [0.5], "gamma": 0.1},
                            steps_per_epoch=3)
    groups = group_of(opt, model)
    P = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    bufs: dict = {}
    for i, (batch, kind) in enumerate(zip(batches(len(kinds)), kinds, strict=True)):
        hp = {n: (g["momentum"], g["delta"], g["weight_decay"]) for n, g in groups.items()}
        lrs = {n: g["lr"] for n, g in groups.items()}
        g_task, g_kd = reference_grads(model, P, batch, kind)
        if i in skips:
            opt.found_inf = torch.tensor(1.0)
        else:
            opt.found_inf = torch.tensor(0.0) if skips else None
            reference_step(P, bufs, g_task, g_kd, hp, lrs)
        dot_iter(model, opt, batch, kind)
        sched.step()
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), P[n].detach()), (i, kind, n)
    params = dict(model.named_parameters())
    for (which, n), b in bufs.items():
        assert torch.equal(opt.state[params[n]][TASK_BUFFER if which == "task" else KD_BUFFER], b)


@pytest.mark.parametrize("momentum,delta,wd", [(0.9, 0.075, 5e-4), (0.9, 0.0, 1e-2),
                                               (0.5, 0.5, 1e-2), (0.9, 0.075, 0.0)])
@pytest.mark.parametrize("sequence", list(SEQUENCES))
def test_matches_hand_written_reference(momentum, delta, wd, sequence):
    """Two groups (own lr and weight decay), a step LR schedule, parameters with both
    gradients / task only / distillation only, steps without a task loss and without a stash:
    bit for bit the reference in float64 (delta == momentum: no task momentum at all)."""
    run_against_reference(momentum, delta, wd, SEQUENCES[sequence])


def test_found_inf_skips_everything_and_the_next_step_is_a_first_step():
    """Skipped steps (found_inf != 0), the very first one included, change nothing: the
    reference that never saw them matches bit for bit (kd-only first-step rule included)."""
    run_against_reference(0.9, 0.075, 5e-3, SEQUENCES["mixed"], skips={0, 3})


def test_found_inf_leaves_params_and_state_unchanged_and_clears_the_stash():
    model = make_model(torch.float32)
    opt = DOT(model.parameters(), lr=0.1, weight_decay=5e-4)
    data = batches(3, torch.float32)
    dot_iter(model, opt, data[0], "both")
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    x, y, t = data[1]
    task, kd = losses(model(x), y, t)
    (kd * float("nan")).backward(retain_graph=True)
    opt.stash_distillation_grads()
    (task * float("inf")).backward()
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    after = (model.state_dict(), opt.state_dict())
    for k, v in before[0].items():
        assert torch.equal(after[0][k], v)
    for i, st in before[1]["state"].items():
        for k, v in st.items():
            assert torch.equal(after[1]["state"][i][k], v), (i, k)
    # the stash was emptied: a step with no new stash is the task-only update (mean momentum)
    twin = copy.deepcopy(model)
    twin_opt = DOT(twin.parameters(), lr=0.1, weight_decay=5e-4)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # else they share the buffers
    opt.found_inf = torch.tensor(0.0)
    dot_iter(model, opt, data[2], "no_kd")
    dot_iter(twin, twin_opt, data[2], "no_kd")
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b) and torch.isfinite(a).all()


def test_state_dict_resume_is_exact():
    model = make_model(torch.float32)
    opt = DOT([{"params": model.trunk.parameters()},
               {"params": [*model.task_head.parameters(), *model.kd_head.parameters()],
                "lr": 0.03}], lr=0.1, weight_decay=5e-4)
    sched = build_scheduler(opt, {"name": "cosine", "epochs": 1, "warmup_epochs": 0.4},
                            steps_per_epoch=5)
    data = batches(5, torch.float32)
    kinds = ["both", "no_task", "both", "no_kd", "both"]
    for b, k in zip(data[:3], kinds[:3], strict=True):
        dot_iter(model, opt, b, k)
        sched.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    for b, k in zip(data[3:], kinds[3:], strict=True):
        dot_iter(model, opt, b, k)
        sched.step()

    buf.seek(0)
    saved = torch.load(buf)
    model2 = make_model(torch.float32, seed=123)
    model2.load_state_dict(saved["model"])
    opt2 = DOT([{"params": model2.trunk.parameters()},
                {"params": [*model2.task_head.parameters(), *model2.kd_head.parameters()],
                 "lr": 0.03}], lr=0.1, weight_decay=5e-4)
    sched2 = build_scheduler(opt2, {"name": "cosine", "epochs": 1, "warmup_epochs": 0.4},
                             steps_per_epoch=5)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    for b, k in zip(data[3:], kinds[3:], strict=True):
        dot_iter(model2, opt2, b, k)
        sched2.step()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        st, st2 = opt.state[p], opt2.state[p2]
        assert set(st) == set(st2) and set(st) <= {TASK_BUFFER, KD_BUFFER, KD_STARTED}
        for k in st:
            assert torch.equal(st[k], st2[k]) and st[k].dtype == st2[k].dtype
    assert set(opt.state[model.kd_head.weight]) == {KD_BUFFER, KD_STARTED}
    assert set(opt.state[model.task_head.weight]) == {TASK_BUFFER}


def sgd_twin(delta: float, wd: float, shared_head: bool, steps: int = 5):
    """(DOT, SGD on the summed loss) parameters after ``steps``; shared_head: both losses on the
    task head, so no parameter gets only distillation gradients."""
    model = make_model()
    twin = copy.deepcopy(model)
    opt = DOT(model.parameters(), lr=0.1, momentum=0.9, delta=delta, weight_decay=wd)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=wd)

    def split(m, x, y, t):
        z_task, z_kd = m(x)
        return losses((z_task, z_task if shared_head else z_kd), y, t)

    for x, y, t in batches(steps):
        opt.zero_grad(set_to_none=True)
        task, kd = split(model, x, y, t)
        kd.backward(retain_graph=True)
        opt.stash_distillation_grads()
        task.backward()  # no zero_grad needed: the stash took the gradients
        opt.step()
        sgd.zero_grad(set_to_none=True)
        sum(split(twin, x, y, t)).backward()
        sgd.step()
    return dict(model.named_parameters()), dict(twin.named_parameters())


def test_delta_zero_is_sgd_on_the_summed_loss_only_where_the_reference_allows():
    # no weight decay: two momenta of 0.9 sum to SGD's buffer (rounding apart)
    dot, sgd = sgd_twin(delta=0.0, wd=0.0, shared_head=False)
    for n in dot:
        torch.testing.assert_close(dot[n], sgd[n], rtol=1e-12, atol=1e-14)
    # weight decay, every parameter with a task gradient: the same
    dot, sgd = sgd_twin(delta=0.0, wd=1e-2, shared_head=True)
    for n in dot:
        torch.testing.assert_close(dot[n], sgd[n], rtol=1e-12, atol=1e-14)
    # weight decay and a distillation-only head: its first step has no weight decay (the
    # reference's clone(grad) branch), so DOT(delta=0) is not SGD
    dot, sgd = sgd_twin(delta=0.0, wd=1e-2, shared_head=False, steps=1)
    p0 = make_model().kd_head.weight.detach()
    torch.testing.assert_close(dot["kd_head.weight"] - sgd["kd_head.weight"], 0.1 * 1e-2 * p0,
                               rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(dot["trunk.weight"], sgd["trunk.weight"], rtol=1e-12, atol=1e-14)


def test_grad_scaler_unscales_task_and_stash_and_skips_a_non_finite_stash():
    data = batches(3, torch.float32)
    plain, scaled = make_model(torch.float32), make_model(torch.float32)
    opt_plain = DOT(plain.parameters(), lr=0.1, weight_decay=5e-4)
    opt_scaled = DOT(scaled.parameters(), lr=0.1, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for x, y, t in data[:2]:
        dot_iter(plain, opt_plain, (x, y, t), "both")
        opt_scaled.zero_grad(set_to_none=True)
        task, kd = losses(scaled(x), y, t)
        scaler.scale(kd).backward(retain_graph=True)
        opt_scaled.stash_distillation_grads()
        scaler.scale(task).backward()
        scaler.step(opt_scaled)
        scaler.update()
    for a, b in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.equal(a, b)  # power-of-two scaling is exact
    before = copy.deepcopy(scaled.state_dict())
    x, y, t = data[2]
    task, kd = losses(scaled(x), y, t)
    scaler.scale(kd * float("inf")).backward(retain_graph=True)
    opt_scaled.stash_distillation_grads()
    scaler.scale(task).backward()  # finite: the scaler's own check passes
    scaler.step(opt_scaled)
    scaler.update()
    for k, v in before.items():
        assert torch.equal(scaled.state_dict()[k], v)
    assert not hasattr(opt_scaled, "found_inf") and not hasattr(opt_scaled, "grad_scale")


@pytest.mark.parametrize("kwargs,key", [
    ({"delta": -0.01}, "schedule.dot_delta"),
    ({"delta": 0.95}, "schedule.dot_delta"),            # > momentum
    ({"momentum": 0.95, "delta": 0.1}, "schedule.dot_delta"),  # m + delta > 1
    ({"delta": float("nan")}, "schedule.dot_delta"),
    ({"momentum": 1.5, "delta": 0.0}, "schedule.momentum"),
    ({"lr": -0.1}, "schedule.lr"),
    ({"weight_decay": -1.0}, "schedule.weight_decay"),
    ({"nesterov": True}, "schedule.nesterov"),
])
def test_refusals_are_one_line_config_errors(kwargs, key):
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError) as e:
        DOT([p], **{"lr": 0.1, **kwargs})
    assert key in str(e.value) and "\n" not in str(e.value)


def test_edges_accepted_and_groups_checked():
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    DOT([p], lr=0.1, momentum=0.4, delta=0.4)   # task momentum 0
    DOT([p], lr=0.1, momentum=0.5, delta=0.5)   # task momentum 0, distillation momentum 1
    DOT([p], lr=0.1, momentum=0.9, delta=0.0)   # one momentum
    opt = DOT([p], lr=0.1)
    with pytest.raises(ConfigError, match="schedule.dot_delta"):
        opt.add_param_group({"params": [q], "delta": 0.2, "momentum": 0.9})
    assert len(opt.param_groups) == 1


def test_a_member_with_dot_backpropagates_task_and_distillation_apart():
    """``Member.apply`` with ``schedule.optimizer=dot``: the ``ce`` term is the task loss, every
    other term the distillation loss, as mdistiller's DOT trainer splits them."""
    import copy

    from kdsweep.engine.device import resolve_precision
    from kdsweep.engine.member import Member, RngStream, StepContext
    from kdsweep.methods import create_method

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    ref = copy.deepcopy(net)
    sched = {"optimizer": "dot", "lr": 0.1, "momentum": 0.9, "dot_delta": 0.075,
             "weight_decay": 5e-4, "name": "constant", "epochs": 1}
    member = Member("m", net, create_method({"name": "kd"}), sched, arch="resnet8",
                    rng=RngStream(torch.device("cpu")))
    from kdsweep.engine.optim import build_optimizer, build_scheduler

    member.optimizer = build_optimizer(net.parameters(), sched)
    member.scheduler = build_scheduler(member.optimizer, sched, 1)
    step = StepContext(1, 1, resolve_precision("fp32", torch.device("cpu")), 1,
                       torch.device("cpu"))
    member.scaler = step.precision.grad_scaler()
    opt = DOT(ref.parameters(), lr=0.1, momentum=0.9, delta=0.075, weight_decay=5e-4)
    x, y, t = torch.randn(8, 6), torch.arange(8) % 4, torch.randn(8, 4)
    for _ in range(3):
        for model, use_member in ((net, True), (ref, False)):
            z = model(x)
            terms = {"ce": torch.nn.functional.cross_entropy(z, y),
                     "kd": torch.nn.functional.mse_loss(z, t) * 3.0}
            if use_member:
                member.apply(sum(terms.values()), torch.zeros((), dtype=torch.bool), step, terms)
            else:
                opt.zero_grad(set_to_none=True)
                terms["kd"].backward(retain_graph=True)
                opt.stash_distillation_grads()
                terms["ce"].backward()
                opt.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
