"""CTKD (learned, adversarial temperature): the loss and its gradients against hand-written
references, the lambda curriculum, the direction a step moves T, state and options."""

from __future__ import annotations

import math

import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.methods.ctkd import CTKD_MODES
from kdsweep.models import ModelOutput, create_model

CTX = BuildContext(num_train=8, num_classes=5, epochs=240, steps_per_epoch=1)
S = [[1.0, 2.0, 3.0, -1.0, 0.0], [0.5, -0.5, 2.5, 1.0, -2.0], [2.0, 0.0, -1.0, 0.3, 1.1],
     [-1.0, 0.2, 0.4, 3.0, 0.7]]
T_ = [[3.0, 1.0, 0.0, 2.0, -1.0], [-1.0, 4.0, 0.0, 0.5, 1.0], [1.5, 0.5, 0.2, -2.0, 0.0],
      [0.1, -0.3, 2.2, 1.0, 0.4]]
Y = [2, 1, 0, 3]


def info(epoch: int) -> StepInfo:
    return StepInfo(epoch=epoch, step=0, epochs=240, steps_per_epoch=1)


def outs(s=S, t=T_, grad=False):
    zs = torch.tensor(s, requires_grad=grad)
    return zs, ModelOutput(zs), ModelOutput(torch.tensor(t))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def hand_kd(s, t, T):
    """Per-sample T_i^2 KL(softmax(t_i/T_i) || softmax(s_i/T_i)), averaged (plain floats)."""
    Ts = T if isinstance(T, list) else [T] * len(s)
    total = 0.0
    for a, b, tau in zip(s, t, Ts, strict=True):
        ps, pt = softmax(a, tau), softmax(b, tau)
        total += tau * tau * sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    return total / len(s)


def hand_ce(s, y):
    return sum(-math.log(softmax(a)[k]) for a, k in zip(s, y, strict=True)) / len(s)


def hand_lambda(epoch, lo=0.0, hi=1.0, loops=10):
    """The authors' CosineDecay(max=-lo, min=-hi, loops).get_value(n), n = 1-based epoch, negated."""
    n = min(max(epoch + 1, 0), loops)
    value = (math.cos(n * math.pi / loops) + 1.0) * 0.5 * ((-lo) - (-hi)) + (-hi)
    return -value


# ------------------------------------------------------------------------------ loss, gradients
def test_global_loss_matches_hand_computation_at_the_initial_temperature():
    m = create_method({"name": "ctkd"})
    T0 = 1.0 + 20.0 * sigmoid(1.0)  # the authors' Global_T init (1) through t_start + t_end * sigmoid
    assert m.epoch_values()["T"] == pytest.approx(T0, rel=1e-6)
    _, s_out, t_out = outs()
    terms = m(s_out, t_out, torch.tensor(Y), info(0))
    assert set(terms) == {"ce", "kd"}
    assert terms["ce"].item() == pytest.approx(0.1 * hand_ce(S, Y), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.9 * hand_kd(S, T_, T0), rel=1e-5)


def zscore(row):
    """The LS authors' CTKD normalize: (z - mean) / std, unbiased std (their KD adds 1e-7)."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / std for v in row]


def test_logit_standardization_z_scores_the_kd_term_only():
    m = create_method({"name": "ctkd", "logit_stand": True, "kd_weight": 9.0, "T_init": 2.0})
    _, s_out, t_out = outs()
    terms = m(s_out, t_out, torch.tensor(Y), info(0))
    assert terms["ce"].item() == pytest.approx(0.1 * hand_ce(S, Y), rel=1e-5)  # raw logits
    want = 9.0 * hand_kd([zscore(r) for r in S], [zscore(r) for r in T_], 2.0)
    assert terms["kd"].item() == pytest.approx(want, rel=1e-5)
    assert want != pytest.approx(9.0 * hand_kd(S, T_, 2.0), rel=1e-3)  # LS changes the term


def test_student_gradient_is_plain_kd_at_the_current_temperature():
    m = create_method({"name": "ctkd", "T_init": 3.0})
    zs, s_out, t_out = outs(grad=True)
    loss = sum(m(s_out, t_out, torch.tensor(Y), info(4)).values())
    (g,) = torch.autograd.grad(loss, zs)
    T, n = 3.0, len(S)
    want = [[0.1 * (softmax(a)[k] - (k == y)) / n
             + 0.9 * T * (softmax(a, T)[k] - softmax(b, T)[k]) / n for k in range(len(a))]
            for a, b, y in zip(S, T_, Y, strict=True)]
    torch.testing.assert_close(g, torch.tensor(want), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("epoch", [0, 3, 9, 30])
def test_temperature_gradient_is_minus_lambda_times_the_kd_slope(epoch):
    m = create_method({"name": "ctkd", "T_init": 5.0})
    r = m.temperature.raw
    _, s_out, t_out = outs()
    loss = sum(m(s_out, t_out, torch.tensor(Y), info(epoch)).values())
    loss.backward()
    # d(kd term)/dT by a central difference in float64 on the hand formula, and by autograd
    h = 1e-5
    slope_fd = 0.9 * (hand_kd(S, T_, 5.0 + h) - hand_kd(S, T_, 5.0 - h)) / (2 * h)
    Td = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    sd, td = torch.tensor(S, dtype=torch.float64), torch.tensor(T_, dtype=torch.float64)
    pt = torch.softmax(td / Td, 1)
    kd64 = 0.9 * Td ** 2 * (pt * (pt.log() - torch.log_softmax(sd / Td, 1))).sum(1).mean()
    (slope_ad,) = torch.autograd.grad(kd64, Td)
    assert slope_ad.item() == pytest.approx(slope_fd, rel=1e-6)
    u = (5.0 - 1.0) / 20.0  # sigmoid(r) at T = 5
    want = -hand_lambda(epoch) * slope_fd * 20.0 * u * (1 - u)  # dT/dr = t_range sigmoid'(r)
    assert r.grad.item() == pytest.approx(want, rel=1e-4)
    assert (r.grad.item() < 0) == (slope_fd > 0)  # the reversed sign


def test_lambda_curriculum_follows_the_authors_cosine_decay():
    m = create_method({"name": "ctkd"})
    for epoch in [0, 1, 4, 8, 9, 10, 239]:
        assert m.lambda_at(epoch) == pytest.approx(hand_lambda(epoch), abs=1e-12), epoch
    # written out: (1 - cos(pi n / 10)) / 2 with n = epoch + 1, capped at 10
    assert m.lambda_at(0) == pytest.approx((1 - math.cos(math.pi / 10)) / 2)
    assert m.lambda_at(4) == pytest.approx(0.5)
    assert m.lambda_at(9) == m.lambda_at(100) == pytest.approx(1.0)
    m2 = create_method({"name": "ctkd", "lambda_min": 0.2, "lambda_max": 0.8, "decay_loops": 4})
    for epoch, want in [(0, 0.2 + 0.6 * (1 - math.cos(math.pi / 4)) / 2), (1, 0.5), (3, 0.8),
                        (7, 0.8)]:
        assert m2.lambda_at(epoch) == pytest.approx(want), epoch
        assert m2.lambda_at(epoch) == pytest.approx(hand_lambda(epoch, 0.2, 0.8, 4))


@pytest.mark.parametrize("T_init", [3.0, 15.0])
def test_one_sgd_step_moves_T_up_the_kd_loss_and_the_student_down(T_init):
    m = create_method({"name": "ctkd", "T_init": T_init, "ce_weight": 0.0})
    zs, s_out, t_out = outs(grad=True)
    opt = torch.optim.SGD([zs, *m.parameters()], lr=0.5)
    kd0 = m(s_out, t_out, torch.tensor(Y), info(20))["kd"]
    opt.zero_grad()
    kd0.backward()
    T0 = m.epoch_values()["T"]
    opt.step()
    T1 = m.epoch_values()["T"]
    assert T1 != pytest.approx(T0)
    s_before = [row[:] for row in S]
    # at the student's old logits, the new T gives a larger KD loss (gradient ascent for T)
    assert hand_kd(s_before, T_, T1) > hand_kd(s_before, T_, T0)
    # at the old T, the student's new logits give a smaller one
    assert hand_kd(zs.detach().tolist(), T_, T0) < hand_kd(s_before, T_, T0)


def test_no_reversal_strength_leaves_T_where_it_is():
    m = create_method({"name": "ctkd", "lambda_min": 0.0, "lambda_max": 0.0})
    _, s_out, t_out = outs()
    sum(m(s_out, t_out, torch.tensor(Y), info(5)).values()).backward()
    assert m.temperature.raw.grad.item() == 0.0


# ------------------------------------------------------------------------------ instance mode
def test_instance_temperatures_are_per_sample_within_bounds_and_reversed():
    torch.manual_seed(0)
    m = create_method({"name": "ctkd", "mode": "instance", "hidden": 8})
    zs, s_out, t_out = outs()
    with pytest.raises(RuntimeError, match="build"):
        m(s_out, t_out, torch.tensor(Y), info(0))
    assert m.epoch_values() == {}
    m.build(s_out, t_out, CTX)
    m.train()
    first = m.temperatures(zs, t_out.logits, 1.0)
    torch.testing.assert_close(first, torch.full((4,), 11.0))  # zero last layer: 1 + 20 / 2
    with torch.no_grad():
        m.temperature.fc2.weight.normal_(0, 3.0)
    params = list(m.temperature.parameters())
    terms = m(s_out, t_out, torch.tensor(Y), info(2))
    grads = torch.autograd.grad(sum(terms.values()), params)
    T = m.temperatures(zs, t_out.logits, 1.0)
    assert T.shape == (4,) and T.std() > 0
    assert ((T > 1.0) & (T < 21.0)).all()
    assert m.epoch_values()["T"] == pytest.approx(T.mean().item(), rel=1e-6)
    tl = T.detach().tolist()
    assert terms["kd"].item() == pytest.approx(0.9 * hand_kd(S, T_, tl), rel=1e-5)
    # the module's gradient is -lambda times that of the same KD term without the reversal
    Tp = 1.0 + 20.0 * torch.sigmoid(m.temperature(zs, t_out.logits))  # no GRL
    zt = t_out.logits
    kd_plain = 0.9 * torch.stack([
        Tp[i] ** 2 * (torch.softmax(zt[i] / Tp[i], 0) * (torch.log_softmax(zt[i] / Tp[i], 0)
                                                         - torch.log_softmax(zs[i] / Tp[i], 0))
                      ).sum() for i in range(4)]).mean()
    plain = torch.autograd.grad(kd_plain, params)
    lam = hand_lambda(2)
    for g, p in zip(grads, plain, strict=True):
        torch.testing.assert_close(g, -lam * p, rtol=1e-4, atol=1e-7)


def test_instance_T_init_and_a_single_sample_batch():
    m = create_method({"name": "ctkd", "mode": "instance", "T_init": 4.0, "hidden": 4})
    zs, s_out, t_out = outs()
    m.build(s_out, t_out, CTX)
    m.train()
    torch.testing.assert_close(m.temperatures(zs, t_out.logits, 1.0), torch.full((4,), 4.0))
    one = m(ModelOutput(zs[:1]), ModelOutput(t_out.logits[:1]), torch.tensor(Y[:1]), info(0))
    assert all(torch.isfinite(v) for v in one.values())


# ------------------------------------------------------------------------------ state, options
@pytest.mark.parametrize("mode", ["global", "instance"])
def test_state_dict_round_trip_keeps_T(mode):
    torch.manual_seed(1)
    m = create_method({"name": "ctkd", "mode": mode, "hidden": 8})
    zs, s_out, t_out = outs()
    m.build(s_out, t_out, CTX)
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    for epoch in range(3):
        opt.zero_grad()
        sum(m(s_out, t_out, torch.tensor(Y), info(epoch + 10)).values()).backward()
        opt.step()
    m.eval()
    back = create_method({"name": "ctkd", "mode": mode, "hidden": 8})
    back.build(s_out, t_out, CTX)
    back.load_state_dict(m.state_dict())
    back.eval()
    torch.testing.assert_close(back.temperatures(zs, t_out.logits, 1.0),
                               m.temperatures(zs, t_out.logits, 1.0), rtol=0, atol=0)
    if mode == "global":
        assert back.epoch_values() == m.epoch_values()
        assert m.epoch_values()["T"] != pytest.approx(1.0 + 20.0 * sigmoid(1.0))


@pytest.mark.parametrize("cfg,match", [
    ({"mode": "local"}, "method.mode='local' is not valid; valid: global, instance"),
    ({"t_range": 0}, "method.t_range=0 is out of range"),
    ({"t_start": -1}, "method.t_start=-1 is out of range"),
    ({"T_init": 25.0}, r"method.T_init=25 is out of range; the temperature lies in .*\(1, 21\)"),
    ({"T_init": 1.0}, "method.T_init=1 is out of range"),
    ({"decay_loops": 0}, "method.decay_loops=0 is out of range"),
    ({"lambda_max": -1}, "method.lambda_max=-1 is out of range"),
    ({"kd_weight": float("nan")}, "method.kd_weight=nan is out of range"),
    ({"hidden": 2.5}, "method.hidden=2.5 must be an integer"),
    ({"temprature": 4}, "method 'ctkd' has no option method.temprature"),
])
def test_bad_options_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method({"name": "ctkd", **cfg})
    assert "\n" not in str(e.value)


def test_build_refuses_different_class_counts():
    m = create_method({"name": "ctkd"})
    with pytest.raises(ConfigError, match="student has 5 logits, the teacher 7") as e:
        m.build(ModelOutput(torch.zeros(2, 5)), ModelOutput(torch.zeros(2, 7)), CTX)
    assert "\n" not in str(e.value)


def test_float32_under_autocast():
    m = create_method({"name": "ctkd", "mode": "instance", "hidden": 4})
    zs, s_out, t_out = outs()
    m.build(s_out, t_out, CTX)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = m(ModelOutput(zs.bfloat16()), ModelOutput(t_out.logits.bfloat16()),
                  torch.tensor(Y), info(0))
    assert all(v.dtype == torch.float32 for v in terms.values())


# ------------------------------------------------------------------------------ real pairs
@pytest.fixture
def one_thread():
    """Tiny CPU forwards: one OpenMP thread (two spin-wait ~10x slower on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cross_family_pairs_build_and_give_finite_terms(one_thread):
    """CTKD reads logits only: any pair with the same classes works (one no-grad forward each)."""
    pairs = [("resnet32x4", "ShuffleV1"), ("ResNet50", "vgg8"), ("resnet20", "MobileNetV2"),
             ("wrn_40_2", "wrn_16_2")]
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.arange(2)
    for tn, sn in pairs:
        with torch.no_grad():  # the engine's dry run: eval mode
            t_out = ModelOutput(create_model(tn, num_classes=10).eval()(x))
            s_out = ModelOutput(create_model(sn, num_classes=10).eval()(x))
        for mode in CTKD_MODES:
            m = create_method({"name": "ctkd", "mode": mode, "hidden": 16})
            m.build(s_out, t_out, CTX)
            m.train()
            terms = m(s_out, t_out, y, info(0))
            assert set(terms) == {"ce", "kd"}, (tn, sn, mode)
            assert all(torch.isfinite(v) for v in terms.values()), (tn, sn, mode)
            assert m.extra_parameters() == (1 if mode == "global" else 20 * 16 + 16 + 2 * 16 + 17)


@pytest.mark.parametrize("mode", CTKD_MODES)
def test_training_steps_reduce_the_loss(mode, one_thread):
    torch.manual_seed(0)
    t, s = create_model("resnet14", num_classes=10).eval(), create_model("resnet8", num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    with torch.no_grad():
        t_out = ModelOutput(t(x))
        s.eval()
        m = create_method({"name": "ctkd", "mode": mode, "hidden": 16})
        m.build(ModelOutput(s(x[:2])), ModelOutput(t(x[:2])), CTX)
    s.train()
    m.train()
    opt = torch.optim.SGD([*s.parameters(), *m.parameters()], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = sum(m(ModelOutput(s(x)), t_out, y, info(0)).values())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in m.parameters())
        assert all(p.grad is None for p in t.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


# ------------------------------------------------------------------------------ engine
@pytest.mark.slow
def test_engine_logs_method_T_per_epoch(compose, mlflow_uri, tmp_path, one_thread):
    from mlflow.tracking import MlflowClient

    from kdsweep.engine import save_checkpoint
    from kdsweep.run import run

    ckpt = tmp_path / "resnet14.pt"
    save_checkpoint(ckpt, {"arch": "resnet14", "num_classes": 10,
                           "model": create_model("resnet14", num_classes=10).state_dict()})
    cfg = compose(["method=ctkd", "teacher=resnet14", f"teacher.checkpoint={ckpt}",
                   "student=resnet8", "schedule.epochs=2", "train.limit_train_batches=2",
                   "train.limit_val_batches=1", "schedule.eval_batch_size=100",
                   "train.progress=false"])
    res = run(cfg, output_dir=tmp_path / "out")
    hist = MlflowClient().get_metric_history(res.run_id, "method/T")
    assert [h.step for h in hist] == [1, 2]
    assert all(1.0 < h.value < 21.0 for h in hist)
    assert hist[0].value != pytest.approx(1.0 + 20.0 * sigmoid(1.0), abs=1e-9)  # it learned
