"""Logit Standardization (Sun, Ren, Li, Wang & Cao, CVPR 2024, arXiv:2403.01427) as the
``logit_stand`` option of ``kd`` and ``dkd``: losses and gradients against formulas written out
by hand in float64 loops, the unchanged defaults (bit for bit), the invariances the paper is about,
the refused options, and the option inside ``multi`` and with the DOT optimiser."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.engine.dot import DOT
from kdsweep.errors import KDSweepError
from kdsweep.methods import StepInfo, create_method
from kdsweep.methods.dkd import dkd_parts
from kdsweep.methods.logits import kd_loss, logit_terms, standardize
from kdsweep.models import ModelOutput

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
N, C = 4, 10


def logits(seed: int, scale: float = 3.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(N, C, generator=g, dtype=torch.float64) * scale + 0.7).to(dtype)


def labels(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ hand formulas
def z_score(row: list) -> list:
    """The authors' ``normalize``: (z - mean) / (std + 1e-7), std with Bessel's C - 1."""
    c = len(row)
    mean = sum(row) / c
    std = (sum((v - mean) ** 2 for v in row) / (c - 1)).sqrt()
    return [(v - mean) / (std + 1e-7) for v in row]


def log_softmax(row: list, T: float) -> list:
    scaled = [v / T for v in row]
    top = max(float(v.detach()) for v in scaled)
    lse = top + sum((v - top).exp() for v in scaled).log()
    return [v - lse for v in scaled]


def kl(p_log: list, q_log: list) -> torch.Tensor:
    """KL(p || q) from log-probabilities."""
    return sum(a.exp() * (a - b) for a, b in zip(p_log, q_log, strict=True))


def rows(x: torch.Tensor) -> list[list]:
    return [[x[i, j] for j in range(x.shape[1])] for i in range(x.shape[0])]


def hand_kd(s, t, y, *, alpha, kd_weight, T, stand):
    """(ce, kd) of Hinton KD, with each row Z-scored before the softmax when ``stand``."""
    soft = hard = 0.0
    for srow, trow, g in zip(rows(s), rows(t), y.tolist(), strict=True):
        zs, zt = (z_score(srow), z_score(trow)) if stand else (srow, trow)
        soft = soft + kl(log_softmax(zt, T), log_softmax(zs, T))
        hard = hard - log_softmax(srow, 1.0)[g]
    return (1 - alpha) * hard / len(s), kd_weight * T * T * soft / len(s)


def hand_dkd(s, t, y, *, T, stand):
    """(TCKD, NCKD), each T^2 KL(teacher || student), batch mean, from probabilities."""
    tckd = nckd = 0.0
    for srow, trow, g in zip(rows(s), rows(t), y.tolist(), strict=True):
        zs, zt = (z_score(srow), z_score(trow)) if stand else (srow, trow)
        ps = [v.exp() for v in log_softmax(zs, T)]
        pt = [v.exp() for v in log_softmax(zt, T)]
        rest_s = sum(p for j, p in enumerate(ps) if j != g)  # 1 - p_gt
        rest_t = sum(p for j, p in enumerate(pt) if j != g)
        tckd = tckd + pt[g] * (pt[g] / ps[g]).log() + rest_t * (rest_t / rest_s).log()
        for j in range(len(ps)):
            if j != g:
                qs, qt = ps[j] / rest_s, pt[j] / rest_t
                nckd = nckd + qt * (qt / qs).log()
    return T * T * tckd / len(s), T * T * nckd / len(s)


def impl_and_grad(method, s64, t64, y, info=INFO):
    """The method's terms on fp32 logits, their sum and its gradient (as float64)."""
    s = s64.float().requires_grad_()
    terms = method(ModelOutput(s), ModelOutput(t64.float()), y, info)
    total = sum(terms.values())
    (g,) = torch.autograd.grad(total, s)
    return terms, total.double(), g.double()


def ref_grad(fn, s64):
    s = s64.clone().requires_grad_()
    total = fn(s)
    (g,) = torch.autograd.grad(total, s)
    return total.detach(), g


TIGHT = {"rtol": 2e-5, "atol": 2e-6}


# --------------------------------------------------------------------------- the Z-score itself
def test_standardize_uses_the_unbiased_std_and_adds_eps_to_it():
    out = standardize(torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64))
    # row 1: mean 1, unbiased std sqrt(2) (the biased one would be 1 and give +-1)
    expected = torch.tensor([[-1 / (math.sqrt(2) + 1e-7), 1 / (math.sqrt(2) + 1e-7)], [0.0, 0.0]],
                            dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)  # row 2: std 0 -> 0, finite
    z = standardize(logits(1))
    torch.testing.assert_close(z.mean(1), torch.zeros(N, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(z.std(1), torch.ones(N, dtype=torch.float64), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------- KD + LS by hand
@pytest.mark.parametrize("alpha,kd_weight,T", [(0.9, 9.0, 2.0), (0.9, None, 4.0), (0.5, 1.0, 3.0),
                                               (1.0, 15.0, 1.0)])
def test_kd_ls_loss_and_gradient_match_the_hand_formula(alpha, kd_weight, T):
    s64, t64, y = logits(2), logits(3, 5.0), labels(4)
    opts = {"name": "kd", "alpha": alpha, "T": T, "logit_stand": True}
    if kd_weight is not None:
        opts["kd_weight"] = kd_weight
    m = create_method(opts)
    terms, total, g = impl_and_grad(m, s64, t64, y)
    w = alpha if kd_weight is None else kd_weight
    ce, soft = hand_kd(s64, t64, y, alpha=alpha, kd_weight=w, T=T, stand=True)
    assert set(terms) == {"ce", "kd"}
    assert terms["kd"].dtype == torch.float32
    torch.testing.assert_close(terms["kd"].double(), soft, **TIGHT)
    torch.testing.assert_close(terms["ce"].double(), ce, **TIGHT)
    ref_total, ref_g = ref_grad(lambda s: sum(hand_kd(s, t64, y, alpha=alpha, kd_weight=w, T=T,
                                                      stand=True)), s64)
    torch.testing.assert_close(total, ref_total, **TIGHT)
    torch.testing.assert_close(g, ref_g, **TIGHT)


def test_kd_ls_with_the_papers_cifar_settings():
    """KD+LS as the authors run it on CIFAR-100: CE 0.1, KD weight 9, base temperature 2."""
    m = create_method({"name": "kd", "logit_stand": True, "T": 2.0, "kd_weight": 9.0})
    assert (m.alpha, m.kd_weight, m.T, m.logit_stand) == (0.9, 9.0, 2.0, True)
    s64, t64, y = logits(5), logits(6, 4.0), labels(7)
    terms, _, _ = impl_and_grad(m, s64, t64, y)
    ce, soft = hand_kd(s64, t64, y, alpha=0.9, kd_weight=9.0, T=2.0, stand=True)
    torch.testing.assert_close(terms["ce"].double(), ce, **TIGHT)  # 0.1 * CE on the raw logits
    torch.testing.assert_close(terms["kd"].double(), soft, **TIGHT)


# ---------------------------------------------------------------------- DKD + LS by hand
@pytest.mark.parametrize("alpha,beta,T,dkd_weight,epoch,warmup", [
    (1.0, 8.0, 2.0, 9.0, 0, 20.0), (1.0, 2.0, 4.0, 1.0, 30, 20.0), (0.5, 6.0, 3.0, 12.0, 4, 0.0)])
def test_dkd_ls_loss_and_gradient_match_the_hand_formula(alpha, beta, T, dkd_weight, epoch, warmup):
    s64, t64, y = logits(8), logits(9, 5.0), labels(10)
    m = create_method({"name": "dkd", "alpha": alpha, "beta": beta, "T": T, "warmup": warmup,
                       "dkd_weight": dkd_weight, "logit_stand": True})
    info = StepInfo(epoch=epoch, step=0, epochs=240, steps_per_epoch=1)
    terms, total, g = impl_and_grad(m, s64, t64, y, info)
    w = 1.0 if warmup == 0 else min((epoch + 1) / warmup, 1.0)

    def ref(s):
        tckd, nckd = hand_dkd(s, t64, y, T=T, stand=True)
        ce, _ = hand_kd(s, t64, y, alpha=0.0, kd_weight=0.0, T=T, stand=False)
        return ce, w * dkd_weight * alpha * tckd, w * dkd_weight * beta * nckd

    ce, tckd, nckd = ref(s64)
    assert set(terms) == {"ce", "tckd", "nckd"}
    torch.testing.assert_close(terms["ce"].double(), ce, **TIGHT)
    torch.testing.assert_close(terms["tckd"].double(), tckd, **TIGHT)
    torch.testing.assert_close(terms["nckd"].double(), nckd, **TIGHT)
    ref_total, ref_g = ref_grad(lambda s: sum(ref(s)), s64)
    torch.testing.assert_close(total, ref_total, **TIGHT)
    torch.testing.assert_close(g, ref_g, **TIGHT)


def test_dkd_ls_standardizes_its_optional_kd_term_too():
    s64, t64, y = logits(11), logits(12, 4.0), labels(13)
    m = create_method({"name": "dkd", "kd_weight": 0.5, "T": 2.0, "logit_stand": True})
    terms, _, _ = impl_and_grad(m, s64, t64, y)
    _, soft = hand_kd(s64, t64, y, alpha=0.0, kd_weight=0.5, T=2.0, stand=True)
    torch.testing.assert_close(terms["kd"].double(), soft, **TIGHT)


def test_dkd_weight_keeps_the_per_pair_beta():
    from kdsweep.methods import BuildContext

    m = create_method({"name": "dkd", "logit_stand": True, "T": 2.0, "dkd_weight": 9.0})
    ctx = BuildContext(num_train=8, num_classes=C, epochs=1, steps_per_epoch=1,
                       teacher_arch="wrn_40_2", student_arch="wrn_16_2")
    z = ModelOutput(torch.zeros(1, C))
    m.build(z, z, ctx)
    assert m.beta == 6.0 and m.dkd_weight == 9.0  # mdistiller's beta; the effective one is 54
    s64, t64, y = logits(14), logits(15, 4.0), labels(16)
    info = StepInfo(epoch=19, step=0, epochs=240, steps_per_epoch=1)
    terms, _, _ = impl_and_grad(m, s64, t64, y, info)
    _, nckd = hand_dkd(s64, t64, y, T=2.0, stand=True)
    torch.testing.assert_close(terms["nckd"].double(), 54.0 * nckd, **TIGHT)


# ------------------------------------------------------- logit_stand=false: bit for bit as before
def old_kd_loss(s, t, T):
    """kdsweep's kd_loss before the option (frozen copy of the formula)."""
    log_p_s = F.log_softmax(s.float() / T, dim=1)
    log_p_t = F.log_softmax(t.float() / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)


def old_dkd_parts(s, t, y, T):
    """kdsweep's dkd_parts before the option (frozen copy of the formula)."""
    zs, zt = s.float() / T, t.float() / T
    n, c = zs.shape
    gt = torch.zeros_like(zs, dtype=torch.bool)
    gt[torch.arange(n), y] = True

    def split(z):
        lse_all = torch.logsumexp(z, dim=1)
        z_other = z[~gt].view(n, c - 1)
        log_b = torch.stack([z[gt] - lse_all, torch.logsumexp(z_other, dim=1) - lse_all], dim=1)
        return log_b, torch.log_softmax(z_other, dim=1)

    log_b_s, log_q_s = split(zs)
    log_b_t, log_q_t = split(zt)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1).mean() * (T * T)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(1).mean() * (T * T)
    return tckd, nckd


def old_kd_terms(s, t, y, alpha, T):
    return {"ce": (1.0 - alpha) * F.cross_entropy(s, y), "kd": alpha * old_kd_loss(s, t, T)}


def old_dkd_terms(s, t, y, *, ce_weight, alpha, beta, T, warmup, kd_weight, epoch):
    terms = {}
    if ce_weight > 0:
        terms["ce"] = ce_weight * F.cross_entropy(s, y)
    if kd_weight > 0:
        terms["kd"] = kd_weight * old_kd_loss(s, t, T)
    tckd, nckd = old_dkd_parts(s, t, y, T)
    w = 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)
    terms["tckd"] = (w * alpha) * tckd
    terms["nckd"] = (w * beta) * nckd
    return terms


def assert_same_terms_and_grads(new_fn, old_fn, s):
    a = s.clone().requires_grad_()
    b = s.clone().requires_grad_()
    new, old = new_fn(a), old_fn(b)
    assert list(new) == list(old)
    for k in new:
        assert torch.equal(new[k], old[k]), k
    (ga,) = torch.autograd.grad(sum(new.values()), a)
    (gb,) = torch.autograd.grad(sum(old.values()), b)
    assert torch.equal(ga, gb)


@pytest.mark.parametrize("alpha,T,seed", [(0.9, 4.0, 0), (0.3, 1.0, 1), (1.0, 7.5, 2),
                                          (0.0, 2.0, 3)])
@pytest.mark.parametrize("explicit", [False, True])
def test_kd_without_ls_is_bit_identical_to_before(alpha, T, seed, explicit):
    s, t, y = logits(seed, dtype=torch.float32), logits(seed + 50, 5.0, torch.float32), labels(seed)
    opts = {"name": "kd", "alpha": alpha, "T": T}
    if explicit:
        opts |= {"logit_stand": False, "kd_weight": None}
    m = create_method(opts)
    assert_same_terms_and_grads(lambda a: m(ModelOutput(a), ModelOutput(t), y, INFO),
                                lambda b: old_kd_terms(b, t, y, alpha, T), s)


@pytest.mark.parametrize("opts,epoch", [
    ({}, 0), ({"alpha": 0.5, "beta": 2.0, "T": 1.0, "warmup": 0.0}, 0),
    ({"ce_weight": 0.0, "kd_weight": 0.7, "beta": 6.0}, 7), ({"T": 3.0, "warmup": 5.0}, 30)])
@pytest.mark.parametrize("explicit", [False, True])
def test_dkd_without_ls_is_bit_identical_to_before(opts, epoch, explicit):
    s, t, y = logits(20, dtype=torch.float32), logits(21, 5.0, torch.float32), labels(22)
    full = {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0,
            "kd_weight": 0.0} | opts
    m = create_method({"name": "dkd", **opts,
                       **({"logit_stand": False, "dkd_weight": 1.0} if explicit else {})})
    info = StepInfo(epoch=epoch, step=0, epochs=240, steps_per_epoch=1)
    assert_same_terms_and_grads(lambda a: m(ModelOutput(a), ModelOutput(t), y, info),
                                lambda b: old_dkd_terms(b, t, y, epoch=epoch, **full), s)


def test_shared_logit_helpers_without_ls_are_bit_identical_to_before():
    """kd_loss / logit_terms / dkd_parts are used by every feature method's ``kd`` term."""
    s, t, y = logits(30, dtype=torch.float32), logits(31, 5.0, torch.float32), labels(32)
    assert torch.equal(kd_loss(s, t, 4.0), old_kd_loss(s, t, 4.0))
    assert torch.equal(kd_loss(s.bfloat16(), t.bfloat16(), 2.0),
                       old_kd_loss(s.bfloat16(), t.bfloat16(), 2.0))
    new = logit_terms(s, t, y, ce_weight=0.1, kd_weight=0.9, T=4.0)
    assert torch.equal(new["kd"], 0.9 * old_kd_loss(s, t, 4.0))
    assert all(torch.equal(a, b) for a, b in zip(dkd_parts(s, t, y, 4.0),
                                                 old_dkd_parts(s, t, y, 4.0), strict=True))


# --------------------------------------------------------------------------------- invariance
def _kd_ls(s, t):
    m = create_method({"name": "kd", "logit_stand": True, "T": 2.0, "kd_weight": 9.0})
    return m(ModelOutput(s), ModelOutput(t), labels(0), INFO)["kd"]


def _dkd_ls(s, t):
    m = create_method({"name": "dkd", "logit_stand": True, "T": 2.0, "warmup": 0.0, "beta": 8.0})
    terms = m(ModelOutput(s), ModelOutput(t), labels(0), INFO)
    return torch.stack([terms["tckd"], terms["nckd"]])


@pytest.mark.parametrize("term", [_kd_ls, _dkd_ls], ids=["kd", "dkd"])
def test_ls_distillation_ignores_the_students_logit_shift_and_scale(term):
    """The paper's point: with LS the student need not match the teacher's logit range."""
    s, t = logits(40, dtype=torch.float32), logits(41, 5.0, torch.float32)
    shift = torch.randn(N, 1, generator=torch.Generator().manual_seed(42)) * 10
    ref = term(s, t)
    for a in (0.1, 0.5, 3.0, 25.0):
        torch.testing.assert_close(term(a * s + shift, t), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(term(s, a * t - shift), ref, rtol=1e-5, atol=1e-6)
    plain = create_method({"name": "kd", "T": 2.0})
    before = plain(ModelOutput(s), ModelOutput(t), labels(0), INFO)["kd"]
    after = plain(ModelOutput(3.0 * s), ModelOutput(t), labels(0), INFO)["kd"]
    assert not torch.allclose(before, after, rtol=1e-2)  # without LS the scale matters


def test_ls_gradient_is_orthogonal_to_shift_and_scale_directions():
    s, t = logits(43, dtype=torch.float32).requires_grad_(), logits(44, 5.0, torch.float32)
    (g,) = torch.autograd.grad(_kd_ls(s, t), s)
    centred = s.detach() - s.detach().mean(1, keepdim=True)
    torch.testing.assert_close(g.sum(1), torch.zeros(N), rtol=0, atol=1e-6)
    torch.testing.assert_close((g * centred).sum(1), torch.zeros(N), rtol=0, atol=1e-5)
    assert g.abs().max() > 1e-3  # not trivially zero


def test_ls_leaves_the_cross_entropy_on_the_raw_logits():
    s, t, y = logits(45, dtype=torch.float32), logits(46, 5.0, torch.float32), labels(47)
    for name in ("kd", "dkd"):
        on = create_method({"name": name, "logit_stand": True})(ModelOutput(s), ModelOutput(t),
                                                                 y, INFO)
        off = create_method({"name": name})(ModelOutput(s), ModelOutput(t), y, INFO)
        assert torch.equal(on["ce"], off["ce"])


# ------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("opts,match", [
    ({"name": "kd", "kd_weight": -1}, r"method\.kd_weight=-1 is out of range"),
    ({"name": "kd", "kd_weight": math.nan}, r"method\.kd_weight=nan"),
    ({"name": "kd", "logit_stand": "yes"}, r"method\.logit_stand='yes' must be true or false"),
    ({"name": "dkd", "logit_stand": 1}, r"method\.logit_stand=1 must be true or false"),
    ({"name": "dkd", "dkd_weight": -0.5}, r"method\.dkd_weight=-0.5 is out of range"),
    ({"name": "dkd", "dkd_weight": None}, r"method\.dkd_weight=null is not allowed"),
    ({"name": "kd", "logit_standardization": True}, r"method 'kd' has no option method.logit_standardization"),
])
def test_bad_options_are_refused_in_one_line(opts, match):
    with pytest.raises(KDSweepError, match=match) as err:
        create_method(opts)
    assert "\n" not in str(err.value)


def test_options_compose_from_the_command_line(compose):
    cfg = compose(["method=kd"])
    assert cfg.method.logit_stand is False and cfg.method.kd_weight is None
    cfg = compose(["method=kd", "method.logit_stand=true", "method.T=2", "method.kd_weight=9"])
    m = create_method(cfg.method)
    assert (m.logit_stand, m.T, m.kd_weight, m.alpha) == (True, 2.0, 9.0, 0.9)
    cfg = compose(["method=dkd", "method.logit_stand=true", "method.T=2", "method.dkd_weight=9"])
    m = create_method(cfg.method)
    assert (m.logit_stand, m.T, m.dkd_weight, m.beta) == (True, 2.0, 9.0, 8.0)


# ------------------------------------------------------------------------------ multi and DOT
def test_multi_builds_ls_parts_from_their_configs():
    s, t, y = logits(50, dtype=torch.float32), logits(51, 5.0, torch.float32), labels(52)
    m = create_method({"name": "multi", "methods": {"kd": {"logit_stand": True}}})
    assert m.parts["kd"].logit_stand is True
    terms = m(ModelOutput(s), ModelOutput(t), y, INFO)
    alone = create_method({"name": "kd", "logit_stand": True})(ModelOutput(s), ModelOutput(t),
                                                                 y, INFO)
    assert set(terms) == {"kd.ce", "kd.kd"}
    assert torch.equal(terms["kd.kd"], alone["kd"]) and torch.equal(terms["kd.ce"], alone["ce"])
    both = create_method({"name": "multi", "methods": {
        "kd": {"logit_stand": True, "T": 2, "kd_weight": 9},
        "dkd": {"logit_stand": True, "T": 2, "dkd_weight": 9, "ce_weight": 0, "warmup": 0}}})
    terms = both(ModelOutput(s), ModelOutput(t), y, INFO)
    assert set(terms) == {"kd.ce", "kd.kd", "dkd.tckd", "dkd.nckd"}
    tckd, _ = dkd_parts(s, t, y, 2.0, logit_stand=True)
    torch.testing.assert_close(terms["dkd.tckd"], 9.0 * tckd)


def test_multi_with_ls_composes(compose):
    cfg = compose(["method=multi", "method.methods={kd: {logit_stand: true, kd_weight: 9}}"])
    m = create_method(cfg.method)
    assert m.parts["kd"].logit_stand is True and m.parts["kd"].kd_weight == 9.0


@pytest.mark.parametrize("optimizer", ["sgd", "dot"])
def test_a_few_kd_ls_steps_reduce_the_loss(optimizer):
    """KD+LS trains a tiny student with plain SGD and with DOT (ce = task, kd = distillation)."""
    torch.manual_seed(60)
    x = torch.randn(16, 8)
    teacher = torch.nn.Linear(8, C)
    with torch.no_grad():
        t_out = ModelOutput(teacher(x) * 4.0)
    y = t_out.logits.argmax(1)
    student = torch.nn.Linear(8, C)
    m = create_method({"name": "kd", "logit_stand": True, "T": 2.0, "kd_weight": 9.0})
    opt = (DOT(student.parameters(), lr=0.05, momentum=0.9) if optimizer == "dot"
           else torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9))
    losses = []
    for _ in range(15):
        terms = m(ModelOutput(student(x)), t_out, y, INFO)
        assert set(terms) == {"ce", "kd"}
        losses.append(sum(terms.values()).item())
        opt.zero_grad()
        if optimizer == "dot":
            terms["kd"].backward(retain_graph=True)
            opt.stash_distillation_grads()
            terms["ce"].backward()
        else:
            sum(terms.values()).backward()
        opt.step()
    assert losses[-1] < 0.7 * losses[0]


def test_ls_under_autocast_is_computed_in_float32():
    student = torch.nn.Linear(8, C)
    x = torch.randn(N, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = student(x)
        assert z.dtype == torch.bfloat16
        terms = create_method({"name": "dkd", "logit_stand": True, "kd_weight": 1.0})(
            ModelOutput(z), ModelOutput(z.detach().float() * 2 + 1), labels(0), INFO)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    # the teacher is the student up to scale and shift: with LS every distillation term is ~0
    for k in ("kd", "tckd", "nckd"):
        assert abs(terms[k].item()) < 1e-4, (k, terms[k].item())
