"""CC (correlation congruence) and VID (variational information distillation): losses and
gradients against reference computations written out here from the papers and RepDistiller's code,
the extra parameters RepDistiller would create, cross-family builds, training steps, bad options."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.models import FeatureTap, ModelOutput, create_model

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
CTX = BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1)


def out(feats=None, pooled=None, logits=None, b=4):
    feats = feats or []
    b = feats[0].shape[0] if feats else (pooled.shape[0] if pooled is not None else b)
    return ModelOutput(logits=logits if logits is not None else torch.zeros(b, 10), feats=feats,
                       preact_feats=feats, pooled=pooled)


def grad(y, x):
    return torch.autograd.grad(y, x, retain_graph=True)[0]


# ------------------------------------------------------------------------------------------------
# CC
# ------------------------------------------------------------------------------------------------
def cc_setup(kernel="repdistiller", b=5, d_s=6, d_t=7, dim=3, **kw):
    """A built ``cc`` with fixed embedding weights and the float64 copies of its inputs/weights."""
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x_s, x_t = r(b, d_s), r(b, d_t)
    w_s, b_s, w_t, b_t = r(dim, d_s), r(dim), r(dim, d_t), r(dim)
    m = create_method({"name": "cc", "feat_dim": dim, "kernel": kernel, "ce_weight": 0.0,
                       "feat_weight": 1.0, **kw})
    m.build(out(pooled=x_s.float()), out(pooled=x_t.float()), CTX)
    with torch.no_grad():
        m.embed_s.weight.copy_(w_s)
        m.embed_s.bias.copy_(b_s)
        m.embed_t.weight.copy_(w_t)
        m.embed_t.bias.copy_(b_t)
    return m, x_s, x_t, (w_s, b_s, w_t, b_t)


def embed(x, w, bias):
    """``e[i][k] = sum_j w[k][j] x[i][j] + bias[k]`` as loops."""
    return torch.stack([torch.stack([sum(w[k, j] * x[i, j] for j in range(x.shape[1])) + bias[k]
                                     for k in range(w.shape[0])]) for i in range(x.shape[0])])


def test_cc_repdistiller_loss_and_gradients_match_hand_computation():
    """RepDistiller's Correlation: d = |e_s - e_t|, L = 1/(b-1) sum_{i<b-1} sum_k d_ik d_{i+1,k};
    gradients written out: dL/dDelta_ik = sign(Delta_ik) (d_{i-1,k} + d_{i+1,k}) / (b-1),
    dL/dx_s = dL/de_s W_s, dL/dW_t = -(dL/dDelta)^T x_t."""
    m, x_s, x_t, (w_s, b_s, w_t, b_t) = cc_setup()
    b = x_s.shape[0]
    delta = (embed(x_s, w_s, b_s) - embed(x_t, w_t, b_t))
    d = delta.abs()
    ref = sum(d[i, k] * d[i + 1, k] for i in range(b - 1) for k in range(d.shape[1])) / (b - 1)
    g_delta = torch.zeros_like(delta)
    for i in range(b):
        for k in range(d.shape[1]):
            nb = (d[i - 1, k] if i > 0 else 0.0) + (d[i + 1, k] if i < b - 1 else 0.0)
            g_delta[i, k] = torch.sign(delta[i, k]) * nb / (b - 1)

    xs = x_s.float().requires_grad_()
    xt = x_t.float().requires_grad_()
    terms = m(out(pooled=xs), out(pooled=xt), torch.zeros(b, dtype=torch.long), INFO)
    assert set(terms) == {"cc"}
    torch.testing.assert_close(terms["cc"].double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(terms["cc"], xs).double(), g_delta @ w_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad(terms["cc"], m.embed_t.weight).double(), -g_delta.t() @ x_t,
                               rtol=1e-5, atol=1e-6)
    assert grad(terms["cc"], m.embed_s.bias) is not None
    assert xt.grad is None and torch.autograd.grad(terms["cc"], xt, allow_unused=True)[0] is None


def taylor_kernel_loops(e, gamma, order):
    """K_ij = sum_{p<=P} exp(-2 gamma) (2 gamma)^p / p! (x_i . x_j)^p, x_i = e_i / ||e_i||."""
    b = e.shape[0]
    x = [e[i] / torch.sqrt(sum(v * v for v in e[i])) for i in range(b)]
    rows = []
    for i in range(b):
        row = []
        for j in range(b):
            c = sum(x[i] * x[j])
            row.append(sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c ** p
                           for p in range(order + 1)))
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("gamma,order", [(0.4, 2), (1.3, 3), (0.2, 1)])
def test_cc_gaussian_loss_and_gradients_match_hand_computation(gamma, order):
    """The paper's Eq. 5 with the Taylor-expanded Gaussian RBF (Eq. 9):
    1/b^2 sum_ij (K_s - K_t)^2."""
    m, x_s, x_t, (w_s, b_s, w_t, b_t) = cc_setup("gaussian", gamma=gamma, order=order)
    xs64 = x_s.clone().requires_grad_()
    k_s = taylor_kernel_loops(embed(xs64, w_s, b_s), gamma, order)
    k_t = taylor_kernel_loops(embed(x_t, w_t, b_t), gamma, order)
    b = x_s.shape[0]
    ref = sum((k_s[i, j] - k_t[i, j]) ** 2 for i in range(b) for j in range(b)) / b ** 2
    xs = x_s.float().requires_grad_()
    terms = m(out(pooled=xs), out(pooled=x_t.float()), torch.zeros(b, dtype=torch.long), INFO)
    torch.testing.assert_close(terms["cc"].double(), ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad(terms["cc"], xs).double(), grad(ref, xs64),
                               rtol=1e-4, atol=1e-7)


def test_cc_taylor_kernel_approaches_the_gaussian_rbf():
    """With many terms the expansion is exp(-gamma ||x_i - x_j||^2) of the unit vectors."""
    from kdsweep.methods.cc import taylor_rbf

    e = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = e / e.norm(dim=1, keepdim=True)
    exact = torch.exp(-0.4 * torch.cdist(x, x) ** 2)
    torch.testing.assert_close(taylor_rbf(e, 0.4, 20), exact, rtol=1e-10, atol=1e-12)
    # the default second order: off by at most the dropped terms at |cos| = 1 (the diagonal)
    bound = 1 - math.exp(-0.8) * (1 + 0.8 + 0.32)
    err = (exact - taylor_rbf(e, 0.4, 2)).abs()
    assert err.max() <= bound + 1e-12 and err.diagonal().min() >= bound - 1e-12


def test_cc_defaults_weights_and_logit_terms():
    m = create_method({"name": "cc"})
    assert (m.feat_weight, m.feat_dim, m.kernel, m.gamma, m.order) == (0.02, 128, "repdistiller",
                                                                       0.4, 2)
    assert (m.ce_weight, m.kd_weight, m.T) == (1.0, 0.0, 4.0)
    m, x_s, x_t, _ = cc_setup(kd_weight=0.5, ce_weight=1.0, feat_weight=0.02)
    logits = torch.randn(5, 10)
    terms = m(out(pooled=x_s.float(), logits=logits), out(pooled=x_t.float(), logits=-logits),
              torch.arange(5), INFO)
    assert set(terms) == {"ce", "kd", "cc"}
    plain, *_ = cc_setup()
    unweighted = plain(out(pooled=x_s.float()), out(pooled=x_t.float()), torch.arange(5), INFO)
    torch.testing.assert_close(terms["cc"], 0.02 * unweighted["cc"])


def test_cc_one_sample_batch_is_zero_not_nan():
    m, x_s, x_t, _ = cc_setup()
    terms = m(out(pooled=x_s[:1].float()), out(pooled=x_t[:1].float()), torch.zeros(1).long(), INFO)
    assert terms["cc"].item() == 0.0


# ------------------------------------------------------------------------------------------------
# VID
# ------------------------------------------------------------------------------------------------
def vid_pair_ref(f_s, f_t, w1, w2, w3, alpha, eps=1e-5):
    """RepDistiller's VIDLoss: pool the larger map (2x2 mean here), mu = W3 relu(W2 relu(W1 f_s))
    (1x1 convs), var = log(1 + exp(alpha)) + eps per channel, mean of
    0.5 ((mu - t)^2 / var + log var)."""
    def pool2(f):
        b, c, h, w = f.shape
        return f.reshape(b, c, h // 2, 2, w // 2, 2).mean((3, 5))

    if f_s.shape[-1] > f_t.shape[-1]:
        f_s = pool2(f_s)
    elif f_s.shape[-1] < f_t.shape[-1]:
        f_t = pool2(f_t)
    h = torch.einsum("mc,bchw->bmhw", w1, f_s).clamp(min=0)
    h = torch.einsum("nm,bmhw->bnhw", w2, h).clamp(min=0)
    mu = torch.einsum("tn,bnhw->bthw", w3, h)
    var = (torch.log(1 + torch.exp(alpha)) + eps).view(1, -1, 1, 1)
    nll = 0.5 * ((mu - f_t) ** 2 / var + torch.log(var))
    return nll.sum() / nll.numel()


def test_vid_loss_and_gradients_match_hand_computation():
    """Two pairs: the student map larger (8x8 -> 4x4), then the teacher's (4x4 -> 2x2)."""
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    fs = [r(2, 1, 8, 8), r(2, 3, 8, 8), r(2, 5, 2, 2)]
    ft = [r(2, 1, 4, 4), r(2, 4, 4, 4), r(2, 6, 4, 4)]
    m = create_method({"name": "vid", "ce_weight": 0.0, "feat_weight": 0.7})
    m.build(out([f.float() for f in fs]), out([f.float() for f in ft]), CTX)
    weights = [(r(4, 3), r(4, 4), r(4, 4), r(4)), (r(6, 5), r(6, 6), r(6, 6), r(6))]
    with torch.no_grad():
        for pair, (w1, w2, w3, a) in zip(m.pairs, weights, strict=True):
            for conv, w in zip(pair.regressor[::2], (w1, w2, w3), strict=True):
                conv.weight.copy_(w[:, :, None, None])
            pair.log_scale.copy_(a)
    s64 = [f.clone().requires_grad_() for f in fs]
    a64 = [w[3].clone().requires_grad_() for w in weights]
    ref = 0.7 * sum(vid_pair_ref(s64[i + 1], ft[i + 1], *weights[i][:3], a64[i]) for i in range(2))

    s32 = [f.float().requires_grad_() for f in fs]
    t32 = [f.float().requires_grad_() for f in ft]
    terms = m(out(s32), out(t32), torch.zeros(2, dtype=torch.long), INFO)
    assert set(terms) == {"vid"}
    torch.testing.assert_close(terms["vid"].double(), ref, rtol=1e-5, atol=1e-6)
    for i in (1, 2):
        torch.testing.assert_close(grad(terms["vid"], s32[i]).double(), grad(ref, s64[i]),
                                   rtol=1e-4, atol=1e-7)
    for pair, a in zip(m.pairs, a64, strict=True):
        torch.testing.assert_close(grad(terms["vid"], pair.log_scale).double(), grad(ref, a),
                                   rtol=1e-4, atol=1e-7)
    assert all(g_ is None for g_ in torch.autograd.grad(terms["vid"], t32, allow_unused=True))


def test_vid_variance_starts_at_init_pred_var():
    """log_scale = log(exp(init_pred_var - eps) - 1) (RepDistiller), so softplus + eps = init."""
    for v in (5.0, 0.5, 60.0):
        m = create_method({"name": "vid", "init_pred_var": v})
        f = [torch.randn(2, 3, 4, 4)] * 2
        m.build(out(f), out(f), CTX)
        alpha = m.pairs[0].log_scale
        torch.testing.assert_close(alpha, torch.full((3,), math.log(math.exp(v - 1e-5) - 1)))
        torch.testing.assert_close(m.pairs[0].variance(), torch.full((3,), v), rtol=1e-6, atol=0)


def test_vid_pairs_the_deepest_stages_when_counts_differ():
    s = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 5, 4, 4)]
    t = [torch.randn(2, 3, 8, 8), torch.randn(2, 6, 8, 8), torch.randn(2, 7, 4, 4),
         torch.randn(2, 8, 2, 2)]
    m = create_method({"name": "vid"})
    m.build(out(s), out(t), CTX)
    assert [p.regressor[0].in_channels for p in m.pairs] == [4, 5]
    assert [p.regressor[-1].out_channels for p in m.pairs] == [7, 8]
    assert torch.isfinite(m(out(s), out(t), torch.zeros(2).long(), INFO)["vid"])


# ------------------------------------------------------------------------------------------------
# extra parameters, cross-family pairs, autocast, training
# ------------------------------------------------------------------------------------------------
def taps(tn, sn, b=2):
    torch.manual_seed(0)
    t = create_model(tn, num_classes=10).eval()
    s = create_model(sn, num_classes=10).eval()
    x = torch.randn(b, 3, 32, 32)
    with FeatureTap(t, tn) as tt, FeatureTap(s, sn) as ts, torch.no_grad():
        return ts(x), tt(x)


@pytest.fixture(scope="module")
def pairs():
    names = [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "ShuffleV1"), ("ResNet50", "vgg8"),
             ("resnet20", "MobileNetV2")]
    return {p: taps(*p) for p in names}


def test_extra_parameters_are_what_repdistiller_creates(pairs):
    """CC: LinearEmbed(D_s, 128) + LinearEmbed(D_t, 128) = (D_s + 1) 128 + (D_t + 1) 128.
    VID: per pair VIDLoss(C_s, C_t, C_t) = C_s C_t + C_t C_t + C_t C_t (bias-free 1x1 convs)
    + C_t (log_scale), over the deepest min(n_s, n_t) stage pairs."""
    expected_cc = {("wrn_40_2", "wrn_16_2"): 2 * 129 * 128,          # 33,024
                   ("resnet32x4", "ShuffleV1"): 961 * 128 + 257 * 128,  # 155,904
                   ("resnet20", "MobileNetV2"): 1281 * 128 + 65 * 128}  # 172,288
    expected_vid = {("wrn_40_2", "wrn_16_2"): sum(3 * c * c + c for c in (32, 64, 128)),  # 64,736
                    # MobileNetV2's last three (16, 48, 160) -> resnet20's (16, 32, 64): 22,896
                    ("resnet20", "MobileNetV2"): sum(cs * ct + 2 * ct * ct + ct for cs, ct in
                                                     ((16, 16), (48, 32), (160, 64)))}
    for pair, (s_out, t_out) in pairs.items():
        cc = create_method({"name": "cc"})
        cc.build(s_out, t_out, CTX)
        d_s, d_t = s_out.pooled.shape[1], t_out.pooled.shape[1]
        assert cc.extra_parameters() == (d_s + 1) * 128 + (d_t + 1) * 128
        assert cc.extra_parameters() == expected_cc.get(pair, cc.extra_parameters())
        vid = create_method({"name": "vid"})
        vid.build(s_out, t_out, CTX)
        n = min(len(s_out.feats), len(t_out.feats)) - 1
        cs = [f.shape[1] for f in s_out.feats[-n:]]
        ct = [f.shape[1] for f in t_out.feats[-n:]]
        assert len(vid.pairs) == n
        assert vid.extra_parameters() == sum(a * c + 2 * c * c + c
                                             for a, c in zip(cs, ct, strict=True))
        assert vid.extra_parameters() == expected_vid.get(pair, vid.extra_parameters())
        for p, a, c in zip(vid.pairs, cs, ct, strict=True):
            assert [tuple(k.weight.shape) for k in p.regressor[::2]] == [(c, a, 1, 1), (c, c, 1, 1),
                                                                          (c, c, 1, 1)]
            assert all(k.bias is None for k in p.regressor[::2]) and p.log_scale.shape == (c,)


@pytest.mark.parametrize("cfg", [{"name": "cc"}, {"name": "cc", "kernel": "gaussian"},
                                 {"name": "vid"}, {"name": "vid", "kd_weight": 1.0}])
def test_build_and_finite_terms_for_cross_family_pairs(pairs, cfg):
    for (tn, sn), (s_out, t_out) in pairs.items():
        m = create_method(cfg)
        m.build(s_out, t_out, CTX)
        terms = m(s_out, t_out, torch.arange(2), INFO)
        assert terms and all(torch.isfinite(v) for v in terms.values()), (tn, sn, cfg, terms)


def test_losses_are_float32_under_autocast(pairs):
    s_out, t_out = pairs["wrn_40_2", "wrn_16_2"]
    for name in ("cc", "vid"):
        m = create_method({"name": name})
        m.build(s_out, t_out, CTX)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = m(s_out, t_out, torch.arange(2), INFO)
        assert all(v.dtype == torch.float32 for v in terms.values()), (name, terms)


CC, CC_GAUSS, VID = ({"name": "cc"}, {"name": "cc", "kernel": "gaussian", "feat_weight": 10.0},
                     {"name": "vid"})


@pytest.mark.parametrize("teacher,student,cfg", [
    ("resnet14", "resnet8", CC), ("resnet14", "resnet8", CC_GAUSS), ("resnet14", "resnet8", VID),
    ("resnet20", "vgg8", VID)])  # VID pairs stages: 3 vs 4 of another family (CC reads pooled)
def test_training_steps_reduce_the_loss(teacher, student, cfg):
    torch.manual_seed(0)
    t = create_model(teacher, num_classes=10).eval()
    s = create_model(student, num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    m = create_method(cfg)
    with FeatureTap(t, teacher) as tt, FeatureTap(s, student) as ts:
        t_out = tt(x)  # with grad enabled: the method must not backpropagate into it
        s.eval()
        with torch.no_grad():
            m.build(ts(x[:2]), tt(x[:2]), CTX)
        s.train()
        opt = torch.optim.Adam(list(s.parameters()) + list(m.parameters()), lr=1e-3)
        losses = []
        for step in range(3):
            terms = m(ts(x), t_out, y, StepInfo(0, step, 1, 3))
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:
                for n, p in m.named_parameters():
                    assert p.grad is not None and p.grad.abs().sum() > 0, n
                assert all(p.grad is None for p in t.parameters()), "gradient reached the teacher"
            opt.step()
            losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,match", [
    ({"name": "cc", "feat_dim": 0}, "method.feat_dim=0 is out of range"),
    ({"name": "cc", "feat_dim": 2.5}, "method.feat_dim=2.5 must be an integer"),
    ({"name": "cc", "kernel": "rbf"}, "method.kernel='rbf' is not valid; valid: repdistiller, "
                                      "gaussian"),
    ({"name": "cc", "gamma": 0}, "method.gamma=0 is out of range"),
    ({"name": "cc", "order": 0}, "method.order=0 is out of range"),
    ({"name": "cc", "order": 21}, "method.order=21 is out of range"),
    ({"name": "cc", "feat_weight": -1}, "method.feat_weight=-1 is out of range"),
    ({"name": "vid", "init_pred_var": 0}, "method.init_pred_var=0 is out of range"),
    ({"name": "vid", "feat_weight": float("nan")}, "method.feat_weight=nan is out of range"),
    ({"name": "vid", "T": 0}, "method.T=0 is out of range"),
    ({"name": "vid", "mid_channels": 3}, "method 'vid' has no option method.mid_channels"),
])
def test_bad_options_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method(cfg)
    assert "\n" not in str(e.value)


def test_pairs_without_the_needed_features_are_refused_at_build_in_one_line():
    logits_only = ModelOutput(torch.zeros(2, 10))
    f = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    cases = [("cc", logits_only, "method 'cc' needs the student's pooled embedding"),
             ("vid", logits_only, "method 'vid' needs at least 1 stage features of the student"),
             ("vid", out([f[0], torch.randn(2, 3, 16)]),
              r"method 'vid' needs 4-d \(B, C, H, W\) stage maps .* student \(2, 3, 16\)")]
    for name, s_out, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            create_method({"name": name}).build(s_out, out(f, pooled=torch.randn(2, 3)), CTX)
        assert "\n" not in str(e.value)


def test_forward_before_build_says_so():
    f = [torch.randn(2, 3, 4, 4)] * 2
    for name in ("cc", "vid"):
        with pytest.raises(RuntimeError, match=f"{name}: build"):
            create_method({"name": name})(out(f, pooled=torch.randn(2, 3)),
                                          out(f, pooled=torch.randn(2, 3)),
                                          torch.zeros(2).long(), INFO)


def test_a_deep_copy_keeps_the_built_parts():
    """The engine may copy a built method (fused trials): the parts travel with it."""
    m = create_method({"name": "vid"})
    f = [torch.randn(2, 3, 4, 4)] * 2
    m.build(out(f), out(f), CTX)
    assert copy.deepcopy(m).extra_parameters() == m.extra_parameters() == 3 * 9 + 3
