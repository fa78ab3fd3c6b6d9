"""DKD, FitNet, AT, SP, RKD, PKT, OFD and multi: losses against the papers' formulas written out
here by hand, training steps on CPU for cross-family pairs, gradients, configs and errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method, get_method
from kdsweep.methods.connectors import ConvReg
from kdsweep.models import FeatureTap, ModelOutput, create_model, list_models

ROOT = Path(__file__).resolve().parents[1]
MY_METHODS = ["dkd", "fitnet", "at", "sp", "rkd", "pkt", "ofd", "margin_relu", "multi"]
INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
CTX = BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1)


def softmax(row: list[float], T: float = 1.0) -> list[float]:
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q)."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def huber(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def feats_out(feats: list[torch.Tensor], logits: torch.Tensor | None = None,
              preact: list[torch.Tensor] | None = None, pooled: torch.Tensor | None = None):
    b = feats[0].shape[0]
    return ModelOutput(logits=logits if logits is not None else torch.zeros(b, 10), feats=feats,
                       preact_feats=preact if preact is not None else feats, pooled=pooled)


# ------------------------------------------------------------------------------------------------
# DKD
# ------------------------------------------------------------------------------------------------
S_LOGITS = [[1.0, 2.0, 3.0, -1.0], [0.5, -0.5, 2.5, 1.0], [2.0, 0.0, -1.0, 0.3]]
T_LOGITS = [[3.0, 1.0, 0.0, 2.0], [-1.0, 4.0, 0.0, 0.5], [1.5, 0.5, 0.2, -2.0]]
LABELS = [2, 1, 0]


def hand_dkd(s, t, y, T):
    """TCKD = KL(b_t || b_s), b = [p_gt, 1 - p_gt]; NCKD = KL(q_t || q_s), q = softmax over the
    non-target classes (= p / (1 - p_gt)); both times T^2, batch mean (Zhao et al. 2022, Eq. 1-4)."""
    tckd = nckd = 0.0
    for srow, trow, g in zip(s, t, y, strict=True):
        ps, pt = softmax(srow, T), softmax(trow, T)
        tckd += kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        qs = [p / (1 - ps[g]) for i, p in enumerate(ps) if i != g]
        qt = [p / (1 - pt[g]) for i, p in enumerate(pt) if i != g]
        nckd += kl(qt, qs)
    n = len(s)
    return T * T * tckd / n, T * T * nckd / n


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 6.0, 2.0)])
def test_dkd_matches_hand_computation(alpha, beta, T):
    m = create_method({"name": "dkd", "alpha": alpha, "beta": beta, "T": T, "warmup": 0})
    terms = m(ModelOutput(torch.tensor(S_LOGITS)), ModelOutput(torch.tensor(T_LOGITS)),
              torch.tensor(LABELS), INFO)
    tckd, nckd = hand_dkd(S_LOGITS, T_LOGITS, LABELS, T)
    ce = sum(-math.log(softmax(r)[g]) for r, g in zip(S_LOGITS, LABELS, strict=True)) / 3
    assert set(terms) == {"ce", "tckd", "nckd"}
    assert terms["tckd"].item() == pytest.approx(alpha * tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(beta * nckd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)


def test_dkd_decomposes_classical_kd():
    """Per sample, KD = TCKD + (1 - p_gt^t) * NCKD (the paper's Eq. 7)."""
    s, t, y = [S_LOGITS[1]], [T_LOGITS[1]], [LABELS[1]]
    m = create_method({"name": "dkd", "alpha": 1.0, "beta": 1.0, "T": 3.0, "warmup": 0})
    terms = m(ModelOutput(torch.tensor(s)), ModelOutput(torch.tensor(t)), torch.tensor(y), INFO)
    kd = 9.0 * kl(softmax(t[0], 3.0), softmax(s[0], 3.0))
    p_gt = softmax(t[0], 3.0)[y[0]]
    assert terms["tckd"].item() + (1 - p_gt) * terms["nckd"].item() == pytest.approx(kd, rel=1e-5)


@pytest.mark.parametrize("epoch,factor", [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)])
def test_dkd_warmup_ramps_the_kd_term_linearly(epoch, factor):
    m = create_method({"name": "dkd", "ce_weight": 0.0})
    info = StepInfo(epoch=epoch, step=0, epochs=240, steps_per_epoch=1)
    terms = m(ModelOutput(torch.tensor(S_LOGITS)), ModelOutput(torch.tensor(T_LOGITS)),
              torch.tensor(LABELS), info)
    tckd, nckd = hand_dkd(S_LOGITS, T_LOGITS, LABELS, 4.0)
    assert "ce" not in terms
    assert terms["tckd"].item() == pytest.approx(factor * 1.0 * tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(factor * 8.0 * nckd, rel=1e-5)


def test_dkd_is_finite_for_very_confident_logits():
    s = torch.tensor([[80.0, -80.0, 0.0], [-90.0, 90.0, 1.0]])
    t = torch.tensor([[-70.0, 70.0, 0.0], [95.0, -95.0, 2.0]])
    terms = create_method({"name": "dkd", "warmup": 0})(ModelOutput(s), ModelOutput(t),
                                                       torch.tensor([0, 1]), INFO)
    assert all(torch.isfinite(v) for v in terms.values())


# ------------------------------------------------------------------------------------------------
# FitNet
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hs,ht,kind", [(8, 4, torch.nn.Conv2d), (4, 8, torch.nn.ConvTranspose2d),
                                        (6, 4, torch.nn.Conv2d), (4, 4, torch.nn.Conv2d),
                                        (2, 8, torch.nn.Conv2d)])
def test_convreg_maps_student_shape_to_teacher_shape(hs, ht, kind):
    reg = ConvReg((2, 3, hs, hs), (2, 5, ht, ht))
    assert isinstance(reg.conv, kind)
    assert reg(torch.randn(2, 3, hs, hs)).shape == (2, 5, ht, ht)


def test_fitnet_matches_hand_computation():
    torch.manual_seed(0)
    f_s = torch.randn(2, 2, 4, 4)
    f_t = torch.randn(2, 3, 4, 4)
    s_out = feats_out([torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), f_s])
    t_out = feats_out([torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), f_t])
    m = create_method({"name": "fitnet", "feat_weight": 100.0, "ce_weight": 0.0})
    m.build(s_out, t_out, CTX)
    m.eval()  # BN with its initial running stats: x / sqrt(1 + eps)
    w, b = torch.randn(3, 2), torch.randn(3)
    with torch.no_grad():
        m.regressor.conv.weight.copy_(w.view(3, 2, 1, 1))
        m.regressor.conv.bias.copy_(b)
    reg = torch.einsum("oc,bchw->bohw", w, f_s) + b.view(1, 3, 1, 1)
    reg = torch.clamp(reg / math.sqrt(1 + 1e-5), min=0)
    expected = 100.0 * ((reg - f_t) ** 2).sum() / f_t.numel()
    terms = m(s_out, t_out, torch.zeros(2, dtype=torch.long), INFO)
    assert set(terms) == {"hint"}
    assert terms["hint"].item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# AT
# ------------------------------------------------------------------------------------------------
def hand_attention(f: torch.Tensor) -> torch.Tensor:
    a = (f * f).sum(1) / f.shape[1]
    a = a.reshape(f.shape[0], -1)
    return a / a.pow(2).sum(1, keepdim=True).sqrt()


def pool2(f: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling by reshaping."""
    b, c, h, w = f.shape
    return f.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def test_at_matches_hand_computation():
    """Zagoruyko & Komodakis: sum_j mean((Q_s - Q_t)^2), Q = normalize(mean_c f^2); the larger map
    is pooled (stage 1: the teacher's, stage 2: the student's); f0 is not used."""
    torch.manual_seed(1)
    s = [torch.randn(2, 2, 8, 8), torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)]
    t = [torch.randn(2, 5, 8, 8), torch.randn(2, 5, 8, 8), torch.randn(2, 4, 2, 2)]
    expected = ((hand_attention(s[1]) - hand_attention(pool2(t[1]))) ** 2).mean()
    expected = expected + ((hand_attention(pool2(s[2])) - hand_attention(t[2])) ** 2).mean()
    m = create_method({"name": "at", "ce_weight": 0.0})
    terms = m(feats_out(s), feats_out(t), torch.zeros(2, dtype=torch.long), INFO)
    assert set(terms) == {"at"}
    assert terms["at"].item() == pytest.approx(1000.0 * expected.item(), rel=1e-5)


def test_at_pairs_the_deepest_stages_when_counts_differ():
    torch.manual_seed(2)
    s = [torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)]  # one stage
    t = [torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)]  # two stages
    expected = ((hand_attention(s[1]) - hand_attention(t[2])) ** 2).mean()
    terms = create_method({"name": "at", "feat_weight": 1.0, "ce_weight": 0.0})(
        feats_out(s), feats_out(t), torch.zeros(2, dtype=torch.long), INFO)
    assert terms["at"].item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# SP
# ------------------------------------------------------------------------------------------------
def test_sp_matches_hand_computation():
    """Tung & Mori: ||row_norm(A_s A_s^T) - row_norm(A_t A_t^T)||_F^2 / b^2 on the last stage."""
    torch.manual_seed(3)
    s_last, t_last = torch.randn(3, 2, 2, 2), torch.randn(3, 4, 1, 3)
    a_s = s_last.reshape(3, -1).tolist()
    a_t = t_last.reshape(3, -1).tolist()

    def gram(a):
        g = [[sum(x * y for x, y in zip(ai, aj, strict=True)) for aj in a] for ai in a]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in g]

    gs, gt = gram(a_s), gram(a_t)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    s = [torch.randn(3, 1, 2, 2), s_last]
    t = [torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2), t_last]
    terms = create_method({"name": "sp", "ce_weight": 0.0})(
        feats_out(s), feats_out(t), torch.zeros(3, dtype=torch.long), INFO)
    assert terms["sp"].item() == pytest.approx(3000.0 * expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# RKD and PKT (pooled embeddings)
# ------------------------------------------------------------------------------------------------
E_S = [[1.0, 0.0, 2.0], [0.5, 1.5, -1.0], [-1.0, 0.2, 0.3], [2.0, 2.0, 0.0]]
E_T = [[0.3, 1.0, 0.0, -1.0, 2.0], [1.0, 1.0, 1.0, 0.0, 0.0], [-2.0, 0.5, 0.0, 1.0, 1.0],
       [0.0, -1.0, 2.0, 0.5, 0.1]]


def hand_rkd(es, et):
    """Park et al.: Huber between distance matrices / their mean off-diagonal distance, and between
    the cosines of the angles at e_j of all triplets (zero vectors give cosine 0)."""
    b = len(es)

    def dist(e):
        d = [[math.dist(e[i], e[j]) for j in range(b)] for i in range(b)]
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * b - b)
        return [[v / mu for v in row] for row in d]

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v] if n > 0 else [0.0] * len(v)

    def angles(e):
        out = []
        for j in range(b):
            for i in range(b):
                for k in range(b):
                    u = unit([a - c for a, c in zip(e[i], e[j], strict=True)])
                    v = unit([a - c for a, c in zip(e[k], e[j], strict=True)])
                    out.append(sum(x * y for x, y in zip(u, v, strict=True)))
        return out

    ds, dt = dist(es), dist(et)
    l_d = sum(huber(ds[i][j], dt[i][j]) for i in range(b) for j in range(b)) / (b * b)
    a_s, a_t = angles(es), angles(et)
    l_a = sum(huber(x, y) for x, y in zip(a_s, a_t, strict=True)) / len(a_s)
    return l_d, l_a


def test_rkd_matches_hand_computation():
    m = create_method({"name": "rkd", "ce_weight": 0.0})
    e_s = torch.tensor(E_S)
    terms = m(feats_out([e_s.view(4, 3, 1, 1)], pooled=e_s),
              feats_out([torch.zeros(4, 1, 1, 1)], pooled=torch.tensor(E_T)),
              torch.zeros(4, dtype=torch.long), INFO)
    l_d, l_a = hand_rkd(E_S, E_T)
    assert set(terms) == {"distance", "angle"}
    assert terms["distance"].item() == pytest.approx(25.0 * l_d, rel=1e-5)
    assert terms["angle"].item() == pytest.approx(50.0 * l_a, rel=1e-5)


def test_pkt_matches_hand_computation():
    """Passalis & Tefas: P(j|i) = K_ij / sum_k K_ik with K = (1 + cos) / 2; mean_ij P_t log(P_t/P_s)."""
    b, eps = len(E_S), 1e-7

    def cond(e):
        unit = [[x / (math.sqrt(sum(y * y for y in v)) + eps) for x in v] for v in e]
        k = [[(1 + sum(x * y for x, y in zip(u, w, strict=True))) / 2 for w in unit] for u in unit]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = cond(E_S), cond(E_T)
    expected = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
                   for i in range(b) for j in range(b)) / (b * b)
    m = create_method({"name": "pkt", "ce_weight": 0.0})
    terms = m(feats_out([torch.zeros(4, 1, 1, 1)], pooled=torch.tensor(E_S)),
              feats_out([torch.zeros(4, 1, 1, 1)], pooled=torch.tensor(E_T)),
              torch.zeros(4, dtype=torch.long), INFO)
    assert terms["pkt"].item() == pytest.approx(30000.0 * expected, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# OFD
# ------------------------------------------------------------------------------------------------
def test_ofd_margin_is_the_expected_negative_response():
    """m = E[x | x < 0] for x ~ N(beta, |gamma|): beta - |gamma| phi(beta/|gamma|) / Phi(-beta/|gamma|),
    -3|gamma| when P(x < 0) <= 0.001."""
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 5.0]))
    m = create_method({"name": "ofd"})
    m.set_teacher([bn])
    expected = []
    for s, mu in [(1.0, 0.0), (2.0, 1.0), (0.5, 5.0)]:
        cdf = 0.5 * (1 + math.erf(-mu / s / math.sqrt(2)))
        pdf = math.exp(-((mu / s) ** 2) / 2) / math.sqrt(2 * math.pi)
        expected.append(mu - s * pdf / cdf if cdf > 0.001 else -3 * s)
    assert m.margins()[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)


def test_ofd_matches_hand_computation():
    """mdistiller's partial L2 (three cases written out), connectors 1x1 conv + BN, teacher pooled
    to the student's size, stage weights 1/2 (f1) and 1 (f2), mean over the batch."""
    torch.manual_seed(4)
    s1, s2 = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2)
    t1, t2 = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    margins = [-torch.rand(3), -torch.rand(4)]
    f0 = torch.randn(2, 1, 4, 4)
    s_out = ModelOutput(torch.zeros(2, 10), feats=[f0, s1.relu(), s2.relu()],
                        preact_feats=[f0, s1, s2])
    t_out = ModelOutput(torch.zeros(2, 10), feats=[f0, t1.relu(), t2.relu()],
                        preact_feats=[f0, t1, t2])
    m = create_method({"name": "ofd", "ce_weight": 0.0})
    m.set_teacher(margins)
    m.build(s_out, t_out, CTX)
    m.eval()
    ws = [torch.randn(3, 2), torch.randn(4, 3)]
    with torch.no_grad():
        for conn, w in zip(m.connectors, ws, strict=True):
            conn[0].weight.copy_(w.view(*w.shape, 1, 1))

    def piecewise(s, t, mg):
        mg = mg.view(1, -1, 1, 1)
        loss = ((s - mg) ** 2 * ((s > mg) & (t <= mg)).float()
                + (s - t) ** 2 * ((s > t) & (t > mg) & (t <= 0)).float()
                + (s - t) ** 2 * (t > 0).float())
        return loss.sum() / s.shape[0]

    expected = 0.0
    for j, (s, t, w) in enumerate(zip([s1, s2], [t1, pool2(t2)], ws, strict=True)):
        r = torch.einsum("oc,bchw->bohw", w, s) / math.sqrt(1 + 1e-5)
        expected += piecewise(r, t, margins[j]).item() / 2 ** (1 - j)
    terms = m(s_out, t_out, torch.zeros(2, dtype=torch.long), INFO)
    assert set(terms) == {"ofd"}
    assert terms["ofd"].item() == pytest.approx(1e-3 * expected, rel=1e-5)


def test_ofd_without_teacher_statistics_says_what_the_engine_must_pass():
    f = [torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)]
    with pytest.raises(ConfigError, match="BN-before-ReLU"):
        create_method({"name": "ofd"}).build(feats_out(f), feats_out(f), CTX)


def test_ofd_takes_the_teacher_tap_from_the_build_context():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Ctx(BuildContext):
        teacher_tap: object = None

    t = create_model("resnet8", num_classes=10).eval()
    s = create_model("resnet8", num_classes=10).eval()
    with FeatureTap(t, "resnet8") as tt, FeatureTap(s, "resnet8") as ts, torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        m = create_method({"name": "margin_relu"})
        m.build(ts(x), tt(x), Ctx(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1,
                                  teacher_tap=tt))
    assert [g.numel() for g in m.margins()] == [16, 32, 64]
    assert len(m.connectors) == 3 and m.name == "margin_relu"


# ------------------------------------------------------------------------------------------------
# multi
# ------------------------------------------------------------------------------------------------
def test_multi_sums_namespaced_terms_of_its_parts():
    torch.manual_seed(5)
    s = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)]
    t = [torch.randn(2, 2, 4, 4), torch.randn(2, 5, 2, 2)]
    s_out = feats_out(s, logits=torch.tensor(S_LOGITS[:2]))
    t_out = feats_out(t, logits=torch.tensor(T_LOGITS[:2]))
    y = torch.tensor(LABELS[:2])
    m = create_method({"name": "multi", "methods": {"kd": {"alpha": 0.9, "T": 4},
                                                    "at": {"feat_weight": 1000, "ce_weight": 0}}})
    assert m.needs_features and m.needs_teacher
    terms = m(s_out, t_out, y, INFO)
    assert set(terms) == {"kd.ce", "kd.kd", "at.at"}
    ce = sum(-math.log(softmax(r)[g]) for r, g in zip(S_LOGITS[:2], LABELS[:2], strict=True)) / 2
    soft = 16 * sum(kl(softmax(b, 4), softmax(a, 4))
                    for a, b in zip(S_LOGITS[:2], T_LOGITS[:2], strict=True)) / 2
    att = ((hand_attention(pool2(s[1])) - hand_attention(t[1])) ** 2).mean().item()
    assert terms["kd.ce"].item() == pytest.approx(0.1 * ce, rel=1e-5)
    assert terms["kd.kd"].item() == pytest.approx(0.9 * soft, rel=1e-5)
    assert terms["at.at"].item() == pytest.approx(1000 * att, rel=1e-5)


def test_multi_list_form_and_repeated_methods():
    m = create_method({"name": "multi", "methods": [
        {"name": "at", "ce_weight": 0}, {"name": "at", "p": 4, "ce_weight": 0},
        {"name": "ce"}]})
    assert list(m.parts) == ["at", "at2", "ce"]
    assert m.parts["at2"].p == 4
    m = create_method({"name": "multi", "methods": {"a1": {"name": "sp", "ce_weight": 0},
                                                    "a2": {"name": "sp"}}})
    assert [p.name for p in m.parts.values()] == ["sp", "sp"]


def test_multi_of_logit_methods_needs_no_features():
    m = create_method({"name": "multi", "methods": {"kd": None, "dkd": {"ce_weight": 0}}})
    assert m.needs_teacher and not m.needs_features


@pytest.mark.parametrize("methods,match", [
    ({"kd": {}, "at": {}}, "cross-entropy in kd and at"),
    ({"dkd": {}, "fitnet": {"ce_weight": 0.5}}, "cross-entropy in dkd and fitnet"),
    ({"at": {"bogus": 1}}, r"method.methods.at: method 'at' has no option method.bogus"),
    ({"at": {"feat_weight": -1}}, r"method.methods.at: method.feat_weight=-1 is out of range"),
    ({"nope": {}}, "is not a known method"),
    ({}, "needs at least one method"),
    ({"a.b": {"name": "at"}}, "not a valid term namespace"),
    ({"kd": {}, "ft": {"ce_weight": 0}}, r"method.methods.ft: ft's pre-stage does not run inside "
                                         r"multi; set method.methods.ft.init_epochs=0"),
])
def test_multi_refuses_bad_configs(methods, match):
    with pytest.raises(ConfigError, match=match):
        create_method({"name": "multi", "methods": methods})


def test_multi_yaml_default_and_command_line_override(compose):
    cfg = compose(["method=multi"])
    m = create_method(cfg.method)
    assert list(m.parts) == ["kd", "at"] and m.parts["at"].ce_weight == 0.0
    cfg = compose(["method=multi", "method.methods={dkd: {beta: 6}, fitnet: {ce_weight: 0}}"])
    m = create_method(cfg.method)
    assert list(m.parts) == ["dkd", "fitnet"] and m.parts["dkd"].beta == 6.0
    cfg = compose(["method=multi", "method.methods=[{name: kd, alpha: 1.0}, {name: rkd}]"])
    assert list(create_method(cfg.method).parts) == ["kd", "rkd"]


# ------------------------------------------------------------------------------------------------
# configs and errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MY_METHODS)
def test_every_feature_method_can_add_the_logit_terms(name):
    from kdsweep.methods import hparams

    declared = {hp.name for hp in hparams(get_method(name))}
    if "kd_weight" in declared:  # every method can add the optional CE and KD terms
        assert {"ce_weight", "kd_weight", "T"} <= declared


@pytest.mark.parametrize("cfg,match", [
    ({"name": "dkd", "beta": -1}, "method.beta=-1 is out of range"),
    ({"name": "dkd", "T": 0}, "method.T=0 is out of range"),
    ({"name": "fitnet", "hint_layer": 1.5}, "method.hint_layer=1.5 must be an integer"),
    ({"name": "at", "p": 0}, "method.p=0 is out of range"),
    ({"name": "sp", "ce_weight": -0.1}, "method.ce_weight=-0.1 is out of range"),
    ({"name": "rkd", "angle_weight": float("nan")}, "method.angle_weight=nan is out of range"),
    ({"name": "pkt", "kd_weight": -2}, "method.kd_weight=-2 is out of range"),
    ({"name": "ofd", "kernel_size": 2}, "method.kernel_size=2 must be an odd integer"),
])
def test_bad_hyper_parameters_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method(cfg)
    assert "\n" not in str(e.value)


def test_fitnet_hint_layer_out_of_range_is_refused_at_build():
    f = [torch.randn(2, 2, 4, 4)] * 3
    with pytest.raises(ConfigError, match="method.hint_layer=5 is out of range for the student"):
        create_method({"name": "fitnet", "hint_layer": 5}).build(feats_out(f), feats_out(f), CTX)


def test_feature_methods_refuse_outputs_without_features():
    logits_only = ModelOutput(torch.zeros(2, 10))
    for name in ["at", "sp", "rkd", "pkt"]:
        with pytest.raises(ConfigError, match=f"method '{name}' needs"):
            create_method({"name": name})(logits_only, logits_only, torch.zeros(2).long(), INFO)


def test_kd_weight_adds_a_hinton_term():
    torch.manual_seed(6)
    f = [torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)]
    s_out = feats_out(f, logits=torch.tensor(S_LOGITS), pooled=torch.randn(3, 4))
    t_out = feats_out(f, logits=torch.tensor(T_LOGITS), pooled=torch.randn(3, 4))
    soft = 4 * sum(kl(softmax(b, 2), softmax(a, 2)) for a, b in zip(S_LOGITS, T_LOGITS, strict=True)) / 3
    for name in ["dkd", "at", "sp", "rkd", "pkt"]:
        terms = create_method({"name": name, "kd_weight": 0.7, "T": 2.0})(
            s_out, t_out, torch.tensor(LABELS), INFO)
        assert terms["kd"].item() == pytest.approx(0.7 * soft, rel=1e-5), name


# ------------------------------------------------------------------------------------------------
# training steps on real pairs
# ------------------------------------------------------------------------------------------------
PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "ShuffleV2"), ("vgg13", "MobileNetV2")]
TRAIN_CFGS = {
    "dkd": {"name": "dkd"},
    "fitnet": {"name": "fitnet"},
    "at": {"name": "at"},
    "sp": {"name": "sp"},
    "rkd": {"name": "rkd"},
    "pkt": {"name": "pkt"},
    "ofd": {"name": "ofd"},
    "multi": {"name": "multi", "methods": {"kd": {}, "fitnet": {"ce_weight": 0},
                                           "rkd": {"ce_weight": 0}}},
}


@pytest.fixture(scope="module")
def pair_cache():
    cache: dict = {}

    def get(teacher: str, student: str):
        if (teacher, student) not in cache:
            missing = [n for n in (teacher, student) if n not in list_models()]
            if missing:
                pytest.skip(f"{', '.join(missing)} not registered in kdsweep.models yet")
            torch.manual_seed(0)
            t = create_model(teacher, num_classes=10).to(memory_format=torch.channels_last).eval()
            s = create_model(student, num_classes=10).to(memory_format=torch.channels_last)
            x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            y = torch.arange(8) % 10
            tt = FeatureTap(t, teacher)
            t_out = tt(x)  # with grad enabled: the methods must not backpropagate into it
            cache[teacher, student] = (t, tt, t_out, s, x, y)
        return cache[teacher, student]

    return get


@pytest.mark.parametrize("method", list(TRAIN_CFGS))
@pytest.mark.parametrize("teacher,student", PAIRS, ids=[f"{t}->{s}" for t, s in PAIRS])
def test_training_steps_reduce_the_loss(pair_cache, teacher, student, method):
    t, tt, t_out, s_template, x, y = pair_cache(teacher, student)
    torch.manual_seed(0)
    s = copy.deepcopy(s_template)
    m = create_method(TRAIN_CFGS[method])
    if hasattr(m, "set_teacher"):
        m.set_teacher(tt)
    with FeatureTap(s, student) as ts:
        s.eval()
        with torch.no_grad():  # the engine's dry run: two images, eval mode
            m.build(ts(x[:2]), tt(x[:2]), CTX)
        s.train()
        m.train()
        opt = torch.optim.Adam(list(s.parameters()) + list(m.parameters()), lr=1e-3)
        losses = []
        for step in range(4):
            terms = m(ts(x), t_out, y, StepInfo(epoch=0, step=step, epochs=1, steps_per_epoch=4))
            loss = sum(terms.values())
            assert torch.isfinite(loss), terms
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:
                own = [(n, p) for n, p in m.named_parameters()]
                if method in ("fitnet", "ofd", "multi"):
                    assert own, f"{method} should own connector parameters"
                for n, p in own:
                    assert p.grad is not None and p.grad.abs().sum() > 0, n
                assert all(p.grad is None for p in t.parameters()), "gradient reached the teacher"
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_methods_build_for_more_cross_family_pairs():
    """One forward for ResNet50->vgg8, resnet32x4->ShuffleV1, wrn_40_2->ShuffleV1 and a pair with
    different stage counts (resnet20 -> MobileNetV2): every method builds and returns finite terms."""
    pairs = [("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"), ("wrn_40_2", "ShuffleV1"),
             ("resnet20", "MobileNetV2")]
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for tn, sn in pairs:
        t = create_model(tn, num_classes=10).eval()
        s = create_model(sn, num_classes=10).eval()
        with FeatureTap(t, tn) as tt, FeatureTap(s, sn) as ts, torch.no_grad():
            t_out, s_out = tt(x), ts(x)
            for name in MY_METHODS:
                m = create_method({"name": name})
                if hasattr(m, "set_teacher"):
                    m.set_teacher(tt)
                m.build(s_out, t_out, CTX)
                terms = m(s_out, t_out, y, INFO)
                assert terms and all(torch.isfinite(v) for v in terms.values()), (tn, sn, name)
