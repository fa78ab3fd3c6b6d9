"""DIST and WTTM (logit methods): losses and their gradients w.r.t. the student's logits against
the papers' formulas written out by hand (loops over samples and classes, float64), defaults,
refused options, confident logits, autocast, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.errors import ConfigError
from kdsweep.methods import StepInfo, create_method, get_method, hparams
from kdsweep.models import ModelOutput

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def logits(seed: int, b: int = 4, c: int = 5, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g, dtype=torch.float64) * scale


def softmax_row(row: list[torch.Tensor], T: float = 1.0) -> list[torch.Tensor]:
    m = max(float(v.detach()) for v in row)
    e = [torch.exp((v - m) / T) for v in row]
    total = sum(e)
    return [v / total for v in e]


def run(name: str, s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, **cfg) -> dict:
    return create_method({"name": name, **cfg})(ModelOutput(s), ModelOutput(t), y, INFO)


def grad(loss: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(loss, s)[0]


# ------------------------------------------------------------------------------------------------
# DIST
# ------------------------------------------------------------------------------------------------
def pearson(u: list[torch.Tensor], v: list[torch.Tensor]) -> torch.Tensor:
    """sum (u - mean u)(v - mean v) / (||u - mean u|| ||v - mean v|| + 1e-8), element by element."""
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    du, dv = [a - mu for a in u], [b - mv for b in v]
    num = sum(a * b for a, b in zip(du, dv, strict=True))
    nu = torch.sqrt(sum(a * a for a in du))
    nv = torch.sqrt(sum(b * b for b in dv))
    return num / (nu * nv + 1e-8)


def hand_dist(s: torch.Tensor, t: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra): T^2 (1 - mean over samples of the row correlations) and T^2 (1 - mean over
    classes of the column correlations) of Y = softmax(z / T) (Huang et al. 2022, Eq. 5-8)."""
    b, c = s.shape
    ys = [softmax_row(list(s[i]), T) for i in range(b)]
    yt = [softmax_row(list(t[i]), T) for i in range(b)]
    inter = 1 - sum(pearson(ys[i], yt[i]) for i in range(b)) / b
    intra = 1 - sum(pearson([ys[i][j] for i in range(b)], [yt[i][j] for i in range(b)])
                    for j in range(c)) / c
    return T * T * inter, T * T * intra


@pytest.mark.parametrize("beta,gamma,T", [(2.0, 2.0, 4.0), (1.0, 0.5, 1.0), (0.0, 3.0, 2.0)])
def test_dist_loss_and_gradient_match_hand_computation(beta, gamma, T):
    s, t, y = logits(0).requires_grad_(True), logits(1), torch.tensor([0, 2, 4, 1])
    terms = run("dist", s, t, y, beta=beta, gamma=gamma, T=T)
    assert set(terms) == {"ce", "inter", "intra"}
    s_ref = s.detach().clone().requires_grad_(True)
    inter, intra = hand_dist(s_ref, t, T)
    torch.testing.assert_close(terms["inter"], beta * inter, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms["intra"], gamma * intra, rtol=1e-12, atol=1e-12)
    ce = sum(-torch.log(softmax_row(list(s_ref[i]))[int(y[i])]) for i in range(4)) / 4
    torch.testing.assert_close(terms["ce"], ce, rtol=1e-12, atol=1e-12)
    total = terms["ce"] + terms["inter"] + terms["intra"]
    torch.testing.assert_close(grad(total, s), grad(ce + beta * inter + gamma * intra, s_ref),
                               rtol=1e-10, atol=1e-12)


def test_dist_float32_matches_the_float64_reference():
    s64, t64 = logits(2, b=6, c=7), logits(3, b=6, c=7)
    s = s64.float().requires_grad_(True)
    terms = run("dist", s, t64.float(), torch.zeros(6, dtype=torch.long), ce_weight=0.0)
    s_ref = s64.float().double().requires_grad_(True)
    inter, intra = hand_dist(s_ref, t64.float().double(), 4.0)
    ref = 2.0 * inter + 2.0 * intra
    assert terms["inter"].dtype == torch.float32
    torch.testing.assert_close((terms["inter"] + terms["intra"]).double(), ref,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(terms["inter"] + terms["intra"], s).double(),
                               grad(ref, s_ref), rtol=1e-4, atol=1e-6)


def test_dist_is_zero_for_a_student_equal_to_the_teacher():
    t = logits(4)
    same = run("dist", t.clone(), t, torch.zeros(4, dtype=torch.long), ce_weight=0.0)
    assert set(same) == {"inter", "intra"}
    # rho = n / (n + 1e-8) with n the squared norm of the centred row (column): not exactly 1
    y = torch.softmax(t / 4.0, dim=1)
    for term, rows in (("inter", y), ("intra", y.t())):
        n = ((rows - rows.mean(1, keepdim=True)) ** 2).sum(1)
        expected = 2.0 * 16.0 * (1 - n / (n + 1e-8)).mean()
        assert 0 < same[term].item() == pytest.approx(expected.item(), rel=1e-6)


def test_dist_kd_weight_adds_hintons_kd_at_the_same_temperature():
    s, t = logits(5), logits(6)
    terms = run("dist", s, t, torch.zeros(4, dtype=torch.long), kd_weight=0.5, T=3.0)
    kl = sum(sum(float(q) * (math.log(float(q)) - math.log(float(p)))
                 for p, q in zip(softmax_row(list(s[i]), 3.0), softmax_row(list(t[i]), 3.0),
                                 strict=True)) for i in range(4)) / 4
    assert set(terms) == {"ce", "kd", "inter", "intra"}
    assert terms["kd"].item() == pytest.approx(0.5 * 9.0 * kl, rel=1e-6)


def test_dist_batch_of_one_has_a_constant_intra_term_and_finite_gradient():
    s = logits(7, b=1).requires_grad_(True)
    terms = run("dist", s, logits(8, b=1), torch.zeros(1, dtype=torch.long), ce_weight=0.0)
    assert terms["intra"].item() == pytest.approx(2.0 * 16.0)
    g = grad(terms["inter"] + terms["intra"], s)
    assert torch.isfinite(g).all()


# ------------------------------------------------------------------------------------------------
# WTTM
# ------------------------------------------------------------------------------------------------
def hand_wttm(s: torch.Tensor, t: torch.Tensor, T: float) -> tuple[torch.Tensor, list, list]:
    """mean_i U_i * KL(q_i || p_s,i) with q_i = p_t,i^gamma / U_i, U_i = sum_j p_t,ij^gamma,
    gamma = 1 / T, p = softmax at temperature 1 (Zheng & Yang 2024, Eq. 12 and the WTTM loss).
    Also returns U_i and q_i for the analytic gradient."""
    gamma = 1.0 / T
    b = s.shape[0]
    total, us, qs = 0.0, [], []
    for i in range(b):
        ps, pt = softmax_row(list(s[i])), softmax_row(list(t[i]))
        powered = [p ** gamma for p in pt]
        u = sum(powered)
        q = [v / u for v in powered]
        kl = sum(qj * (torch.log(qj) - torch.log(pj)) for qj, pj in zip(q, ps, strict=True))
        total = total + u * kl
        us.append(u)
        qs.append(q)
    return total / b, us, qs


@pytest.mark.parametrize("beta,T", [(4.0, 5.0), (1.0, 1.0), (45.0, 10.0), (2.0, 0.5)])
def test_wttm_loss_and_gradient_match_hand_computation(beta, T):
    s, t, y = logits(10).requires_grad_(True), logits(11, scale=3.0), torch.tensor([1, 0, 3, 4])
    terms = run("wttm", s, t, y, beta=beta, T=T)
    assert set(terms) == {"ce", "wttm"}
    s_ref = s.detach().clone().requires_grad_(True)
    ref, us, qs = hand_wttm(s_ref, t, T)
    torch.testing.assert_close(terms["wttm"], beta * ref, rtol=1e-12, atol=1e-12)
    g = grad(terms["wttm"], s)
    torch.testing.assert_close(g, grad(beta * ref, s_ref), rtol=1e-10, atol=1e-12)
    # analytic: d/dz_s [U KL(q || softmax(z_s))] = U (softmax(z_s) - q), batch mean
    for i in range(4):
        ps = softmax_row(list(s.detach()[i]))
        for j in range(5):
            expected = beta * float(us[i]) * (float(ps[j]) - float(qs[i][j])) / 4
            assert g[i, j].item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    ce = sum(-torch.log(softmax_row(list(s.detach()[i]))[int(y[i])]) for i in range(4)) / 4
    torch.testing.assert_close(terms["ce"].detach(), ce, rtol=1e-12, atol=1e-12)


def test_wttm_at_temperature_one_is_the_plain_kl():
    s, t = logits(12), logits(13)
    terms = run("wttm", s, t, torch.zeros(4, dtype=torch.long), beta=1.0, T=1.0, ce_weight=0.0)
    assert set(terms) == {"wttm"}
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(terms["wttm"], kl, rtol=1e-12, atol=1e-12)


def test_wttm_weight_is_the_power_sum_of_the_teacher():
    """One-hot-like teacher: U = 1; uniform teacher over C classes: U = C^(1 - gamma)."""
    s = torch.zeros(2, 4, dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0], [200.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    ref, us, _ = hand_wttm(s, t, 4.0)
    assert float(us[0]) == pytest.approx(4 ** 0.75) and float(us[1]) == pytest.approx(1.0)
    terms = run("wttm", s, t, torch.zeros(2, dtype=torch.long), beta=1.0, T=4.0, ce_weight=0.0)
    torch.testing.assert_close(terms["wttm"], ref, rtol=1e-12, atol=1e-12)


def test_wttm_float32_matches_the_float64_reference():
    s64, t64 = logits(14, b=6, c=9), logits(15, b=6, c=9, scale=4.0)
    s = s64.float().requires_grad_(True)
    terms = run("wttm", s, t64.float(), torch.zeros(6, dtype=torch.long), ce_weight=0.0)
    s_ref = s64.float().double().requires_grad_(True)
    ref = 4.0 * hand_wttm(s_ref, t64.float().double(), 5.0)[0]
    assert terms["wttm"].dtype == torch.float32
    torch.testing.assert_close(terms["wttm"].double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(terms["wttm"], s).double(), grad(ref, s_ref),
                               rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# both
# ------------------------------------------------------------------------------------------------
def test_defaults_are_the_published_cifar100_settings():
    declared = {name: {hp.name: hp.default for hp in hparams(get_method(name))}
                for name in ("dist", "wttm")}
    assert declared["dist"] == {"ce_weight": 1.0, "beta": 2.0, "gamma": 2.0, "T": 4.0,
                                "kd_weight": 0.0}
    assert declared["wttm"] == {"ce_weight": 1.0, "beta": 4.0, "T": 5.0}
    assert not get_method("dist").needs_features and not get_method("wttm").needs_features


@pytest.mark.parametrize("cfg,match", [
    ({"name": "dist", "beta": -1}, "method.beta=-1 is out of range"),
    ({"name": "dist", "gamma": float("nan")}, "method.gamma=nan is out of range"),
    ({"name": "dist", "T": 0}, "method.T=0 is out of range"),
    ({"name": "dist", "tau": 4}, "did you mean method.T"),
    ({"name": "wttm", "T": -1}, "method.T=-1 is out of range"),
    ({"name": "wttm", "beta": float("inf")}, "method.beta=inf is out of range"),
    ({"name": "wttm", "ce_weight": -0.5}, "method.ce_weight=-0.5 is out of range"),
    ({"name": "wttm", "alpha": 1}, "has no option method.alpha"),
])
def test_bad_options_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["dist", "wttm"])
def test_finite_loss_and_gradient_for_very_confident_logits(name):
    s = torch.tensor([[80.0, -80.0, 0.0], [-90.0, 90.0, 1.0], [0.0, 0.0, 100.0]],
                     requires_grad=True)
    t = torch.tensor([[-70.0, 70.0, 0.0], [95.0, -95.0, 2.0], [0.0, 0.0, 120.0]])
    terms = run(name, s, t, torch.tensor([0, 1, 2]))
    assert all(torch.isfinite(v) for v in terms.values())
    assert torch.isfinite(grad(sum(terms.values()), s)).all()


@pytest.mark.parametrize("name", ["dist", "wttm"])
def test_terms_are_float32_under_bf16_autocast(name):
    s = logits(20).float().bfloat16().requires_grad_(True)
    t = logits(21).float().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = run(name, s, t, torch.tensor([0, 1, 2, 3]))
    assert all(v.dtype == torch.float32 for v in terms.values()), terms
    ref = run(name, s.detach().float(), t.float(), torch.tensor([0, 1, 2, 3]))
    for k, v in terms.items():
        assert v.item() == pytest.approx(ref[k].item(), rel=1e-5)


@pytest.mark.parametrize("name", ["dist", "wttm"])
def test_training_reduces_the_loss_and_only_the_student_gets_gradients(name):
    torch.manual_seed(0)  # linear classifiers on random features: the methods see logits only
    student, teacher = torch.nn.Linear(16, 10), torch.nn.Linear(16, 10)
    teacher.requires_grad_(False)
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    with torch.no_grad():
        t_out = ModelOutput(teacher(x) * 3.0)
    method = create_method({"name": name, "ce_weight": 0.0})
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    losses = []
    for _ in range(10):
        loss = sum(method(ModelOutput(student(x)), t_out, y, INFO).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in teacher.parameters())
    assert losses[-1] < losses[0], losses
