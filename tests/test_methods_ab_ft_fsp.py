"""AB, FT and FSP (the methods with a pre-stage): losses and gradients against formulas written out
here by hand, what each pre-stage trains (counted by formula for resnet32x4 -> resnet8x4), finite
terms and gradients on real pairs, refusals, and a few manual pre-stage steps."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.models import FeatureTap, ModelOutput, create_model, get_spec
from kdsweep.models.features import resolve_module

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
CTX = BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1)
EPS = 1e-5  # BatchNorm2d's default


def out(feats, preact=None, logits=None):
    b = feats[0].shape[0]
    return ModelOutput(logits=logits if logits is not None else torch.zeros(b, 10), feats=feats,
                       preact_feats=preact if preact is not None else feats,
                       pooled=torch.zeros(b, 4))


def leaf(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).requires_grad_(True)


def close(a, b, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol)


def bn_train(x, bn):
    """BatchNorm in training mode by hand: batch mean and biased variance per channel."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    w = bn.weight.detach().double().view(1, -1, 1, 1)
    b = bn.bias.detach().double().view(1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + EPS) * w + b


def leaky(x):
    return torch.where(x > 0, x, 0.1 * x)


def block_pool(x, size):
    """Average over non-overlapping blocks down to ``size x size`` (adaptive pooling for exact
    multiples)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


# ------------------------------------------------------------------------------------------------
# AB
# ------------------------------------------------------------------------------------------------
def hand_ab(sources, targets, m):
    """Heo et al.: per element, (s + m)^2 where the teacher is off (t <= 0) and s > -m,
    (s - m)^2 where it is on (t > 0) and s <= m; each stage summed, weight 2^(j-n+1), then
    divided by the batch size and scaled by 3/1000 (RepDistiller's ABLoss)."""
    n, total = len(sources), 0.0
    for j, (s, t) in enumerate(zip(sources, targets, strict=True)):
        off = ((s + m) ** 2) * ((s > -m) & (t <= 0)).double()
        on = ((s - m) ** 2) * ((s <= m) & (t > 0)).double()
        total = total + 2.0 ** (j - n + 1) * (off + on).sum()
    return total / sources[0].shape[0] * 3 / 1000


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_hand_computation_with_identity_connectors(margin):
    torch.manual_seed(0)
    s1, s2 = leaf(4, 3, 4, 4, scale=1.5), leaf(4, 5, 2, 2, scale=1.5)
    t1, t2 = torch.randn(4, 3, 4, 4), torch.randn(4, 5, 2, 2)
    f0 = torch.randn(4, 2, 8, 8)
    s_out, t_out = out([f0, s1.relu(), s2.relu()], [f0, s1, s2]), out([f0, t1.relu(), t2.relu()],
                                                                      [f0, t1, t2])
    m = create_method({"name": "ab", "margin": margin})
    m.build(s_out, t_out, CTX)
    assert all(isinstance(c, nn.Identity) for c in m.connectors) and len(m.connectors) == 2
    assert m.init_parameters([]) == []
    terms = m.init_forward(s_out, t_out, INFO)
    assert set(terms) == {"ab"}
    s1d, s2d = s1.detach().double().requires_grad_(), s2.detach().double().requires_grad_()
    ref = hand_ab([s1d, s2d], [t1.double(), t2.double()], margin)
    close(terms["ab"], ref)
    g = torch.autograd.grad(terms["ab"], [s1, s2])
    g_ref = torch.autograd.grad(ref, [s1d, s2d])
    for a, b in zip(g, g_ref, strict=True):
        close(a, b, atol=1e-9)


def test_ab_with_a_convreg_connector_in_training_mode():
    """Student 2 channels, teacher 3 at equal H x W: connector = 1x1 conv (bias) + BN, batch
    statistics in the pre-stage."""
    torch.manual_seed(1)
    s1, t1 = leaf(4, 2, 4, 4), torch.randn(4, 3, 4, 4)
    f0 = torch.randn(4, 2, 4, 4)
    s_out, t_out = out([f0, s1.relu()], [f0, s1]), out([f0, t1.relu()], [f0, t1])
    m = create_method({"name": "ab", "feat_weight": 2.0, "ce_weight": 0.0})
    m.build(s_out, t_out, CTX)
    conv, bn = m.connectors[0].conv, m.connectors[0].bn
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.7, 1.0]))
        bn.bias.copy_(torch.tensor([0.2, -0.3, 0.1]))
    terms = m.init_forward(s_out, t_out, INFO)
    assert m.connectors.training
    w, b = conv.weight.detach().double().view(3, 2), conv.bias.detach().double()
    s1d = s1.detach().double().requires_grad_()
    y = torch.einsum("oc,bchw->bohw", w, s1d) + b.view(1, 3, 1, 1)
    ref = hand_ab([bn_train(y, bn)], [t1.double()], 1.0)
    close(terms["ab"], ref)
    close(torch.autograd.grad(terms["ab"], s1)[0], torch.autograd.grad(ref, s1d)[0], atol=1e-9)
    # the parameters the pre-stage trains: the connector's, then the body
    body = [nn.Parameter(torch.zeros(3))]
    params = m.init_parameters(body)
    assert [id(p) for p in params] == [id(p) for p in m.connectors.parameters()] + [id(body[0])]
    # main stage with feat_weight > 0: the connector in eval mode (running statistics)
    main = m(s_out, t_out, torch.zeros(4, dtype=torch.long), INFO)
    assert set(main) == {"ab"} and not m.connectors.training
    y_eval = (y - bn.running_mean.double().view(1, 3, 1, 1)) / torch.sqrt(
        bn.running_var.double().view(1, 3, 1, 1) + EPS)
    y_eval = y_eval * bn.weight.detach().double().view(1, 3, 1, 1) + bn.bias.detach().double().view(
        1, 3, 1, 1)
    close(main["ab"], 2.0 * hand_ab([y_eval], [t1.double()], 1.0))


def test_ab_without_a_prestage_trains_its_connectors_in_the_main_stage():
    f_s = [torch.randn(2, 2, 4, 4), leaf(2, 2, 4, 4)]
    f_t = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)]
    m = create_method({"name": "ab", "init_epochs": 0, "feat_weight": 1.0})
    m.build(out(f_s), out(f_t), CTX)
    m.train()
    terms = m(out(f_s), out(f_t), torch.tensor([1, 2]), INFO)
    assert m.connectors.training and set(terms) == {"ce", "ab"}
    terms["ab"].backward()
    assert all(p.grad is not None for p in m.connectors.parameters())


def test_ab_main_stage_adds_no_feature_term_by_default():
    m = create_method({"name": "ab"})
    assert (m.feat_weight, m.margin, m.init_epochs, m.ce_weight, m.kd_weight, m.T) == (
        0.0, 1.0, 30, 1.0, 0.0, 4.0)
    f = [torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)]
    s_out, t_out = out(f, logits=torch.randn(2, 10)), out(f, logits=torch.randn(2, 10))
    m.build(s_out, t_out, CTX)
    assert set(m(s_out, t_out, torch.tensor([1, 2]), INFO)) == {"ce"}
    m2 = create_method({"name": "ab", "kd_weight": 1.0})
    m2.build(s_out, t_out, CTX)
    assert set(m2(s_out, t_out, torch.tensor([1, 2]), INFO)) == {"ce", "kd"}


def test_ab_pairs_the_deepest_stages_and_weights_them_by_the_pairs():
    torch.manual_seed(2)
    s = [torch.randn(2, 2, 8, 8), leaf(2, 2, 8, 8), leaf(2, 3, 4, 4), leaf(2, 4, 2, 2)]
    t = [torch.randn(2, 2, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)]
    m = create_method({"name": "ab"})
    m.build(out(s), out(t), CTX)
    assert len(m.connectors) == 2 and all(isinstance(c, nn.Identity) for c in m.connectors)
    loss = m.init_forward(out(s), out(t), INFO)["ab"]
    close(loss, hand_ab([s[2].double(), s[3].double()], [t[1].double(), t[2].double()], 1.0))


# ------------------------------------------------------------------------------------------------
# FT
# ------------------------------------------------------------------------------------------------
def convs(module, kind):
    return [c for c in module.modules() if type(c) is kind]


def weights(layers):
    """(weight, bias) of each conv as float64 constants."""
    return [(c.weight.detach().double(), c.bias.detach().double()) for c in layers]


def hand_stack(x, wb, transposed=False, bns=None):
    """3x3 stride-1 padding-1 convolutions, (BN,) LeakyReLU(0.1), written out functionally."""
    for i, (w, b) in enumerate(wb):
        x = (F.conv_transpose2d if transposed else F.conv2d)(x, w, b, stride=1, padding=1)
        if bns is not None:
            x = bn_train(x, bns[i])
        x = leaky(x)
    return x


def hand_factor(f):
    """Kim et al. / RepDistiller's FactorTransfer: mean over channels of the squared factor,
    flattened, divided by its L2 norm."""
    a = (f * f).sum(1) / f.shape[1]
    a = a.reshape(f.shape[0], -1)
    return a / torch.sqrt((a * a).sum(1, keepdim=True))


def ft_pair(seed=3):
    torch.manual_seed(seed)
    f_s = leaf(4, 6, 4, 4)
    f_t = torch.randn(4, 8, 2, 2).relu()
    s_out = out([torch.randn(4, 2, 8, 8), f_s], logits=torch.randn(4, 10))
    t_out = out([torch.randn(4, 2, 8, 8), f_t], logits=torch.randn(4, 10))
    return f_s, f_t, s_out, t_out


def test_ft_modules_have_the_reference_layout():
    _, _, s_out, t_out = ft_pair()
    m = create_method({"name": "ft"})
    m.build(s_out, t_out, CTX)
    enc = [(c.in_channels, c.out_channels) for c in convs(m.paraphraser.encoder, nn.Conv2d)]
    dec = [(c.in_channels, c.out_channels) for c in convs(m.paraphraser.decoder,
                                                          nn.ConvTranspose2d)]
    tr = [(c.in_channels, c.out_channels) for c in convs(m.translator, nn.Conv2d)]
    assert enc == [(8, 8), (8, 4), (4, 4)] and dec == [(4, 4), (4, 8), (8, 8)]
    assert tr == [(6, 6), (6, 4), (4, 4)]
    assert not convs(m.paraphraser, nn.BatchNorm2d) and len(convs(m.translator, nn.BatchNorm2d)) == 3
    assert all(c.kernel_size == (3, 3) for c in convs(m, nn.Conv2d) + convs(m, nn.ConvTranspose2d))
    slopes = {a.negative_slope for a in m.modules() if isinstance(a, nn.LeakyReLU)}
    assert slopes == {0.1}
    assert m.extra_parameters() == sum(p.numel() for p in m.parameters()) > 0


def test_ft_paraphraser_reconstruction_matches_hand_computation():
    _, f_t, s_out, t_out = ft_pair()
    m = create_method({"name": "ft"})
    m.build(s_out, t_out, CTX)
    params = m.init_parameters([nn.Parameter(torch.zeros(1))])
    assert [id(p) for p in params] == [id(p) for p in m.paraphraser.parameters()]
    assert all(p.requires_grad for p in params)
    terms = m.init_forward(s_out, t_out, INFO)
    assert set(terms) == {"rec"}
    enc, dec = convs(m.paraphraser, nn.Conv2d), convs(m.paraphraser, nn.ConvTranspose2d)
    # the hand reconstruction with the parameters as float64 leaves (in the order of ``params``)
    ref_params = [p.detach().double().requires_grad_() for p in params]
    leaf_of = dict(zip((id(p) for p in params), ref_params, strict=True))
    x = f_t.double()
    rec = hand_stack(hand_stack(x, [(leaf_of[id(c.weight)], leaf_of[id(c.bias)]) for c in enc]),
                     [(leaf_of[id(c.weight)], leaf_of[id(c.bias)]) for c in dec], transposed=True)
    ref = ((rec - x) ** 2).sum() / x.numel()
    close(terms["rec"], ref)
    for a, b in zip(torch.autograd.grad(terms["rec"], params), torch.autograd.grad(ref, ref_params),
                    strict=True):
        close(a, b, rtol=1e-4, atol=1e-7)


def test_ft_factor_loss_matches_hand_computation_and_freezes_the_paraphraser():
    f_s, f_t, s_out, t_out = ft_pair()
    m = create_method({"name": "ft", "feat_weight": 200.0, "ce_weight": 0.0})
    m.build(s_out, t_out, CTX)
    assert not any(p.requires_grad for p in m.paraphraser.parameters())  # out of a main optimiser
    m.init_parameters([])
    m.train()
    terms = m(s_out, t_out, torch.zeros(4, dtype=torch.long), INFO)
    assert set(terms) == {"ft"}
    assert not any(p.requires_grad for p in m.paraphraser.parameters())
    assert not m.paraphraser.training and m.translator.training
    # by hand: translator (BN on batch statistics) on the student, paraphraser encoder on the
    # teacher; the student's 4x4 factor is average-pooled to the teacher's 2x2
    fs = f_s.detach().double().requires_grad_()
    q = hand_stack(fs, weights(convs(m.translator, nn.Conv2d)),
                   bns=convs(m.translator, nn.BatchNorm2d))
    p = hand_stack(f_t.double(), weights(convs(m.paraphraser.encoder, nn.Conv2d)))
    ref = 200.0 * (hand_factor(block_pool(q, 2)) - hand_factor(p)).abs().mean()
    close(terms["ft"], ref, rtol=1e-4)
    close(torch.autograd.grad(terms["ft"], f_s)[0], torch.autograd.grad(ref, fs)[0], rtol=1e-4,
          atol=1e-6)
    # the paraphraser gets no gradient in the main stage; the translator does
    terms = m(s_out, t_out, torch.zeros(4, dtype=torch.long), INFO)
    terms["ft"].backward()
    assert all(p.grad is None for p in m.paraphraser.parameters())
    assert all(p.grad is not None for p in m.translator.parameters())


def test_ft_factor_pools_the_larger_teacher_map():
    torch.manual_seed(4)
    from kdsweep.methods.ft import ft_loss
    a, b = leaf(2, 3, 2, 2), torch.randn(2, 5, 4, 4)
    ad = a.detach().double().requires_grad_()
    ref = (hand_factor(ad) - hand_factor(block_pool(b.double(), 2))).abs().mean()
    loss = ft_loss(a, b)
    close(loss, ref)
    close(torch.autograd.grad(loss, a)[0], torch.autograd.grad(ref, ad)[0], atol=1e-8)


# ------------------------------------------------------------------------------------------------
# FSP
# ------------------------------------------------------------------------------------------------
def hand_fsp(maps):
    """Yim et al.: G_ij = sum_{h,w} F1_{h,w,i} F2_{h,w,j} / (h w) between consecutive maps, the
    larger map average-pooled to the smaller one's size first."""
    out_ = []
    for bot, top in zip(maps[:-1], maps[1:], strict=True):
        hb, ht = bot.shape[2], top.shape[2]
        if hb > ht:
            bot = block_pool(bot, ht)
        elif ht > hb:
            top = block_pool(top, hb)
        b, c1, h, w = bot.shape
        g = torch.zeros(b, c1, top.shape[1], dtype=bot.dtype)
        for i in range(c1):
            for j in range(top.shape[1]):
                g[:, i, j] = (bot[:, i] * top[:, j]).sum(dim=(1, 2)) / (h * w)
        out_.append(g)
    return out_


def test_fsp_matches_hand_computation():
    torch.manual_seed(5)
    s = [leaf(2, 2, 8, 8), leaf(2, 3, 8, 8), leaf(2, 4, 4, 4)]
    t = [torch.randn(2, 2, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)]
    m = create_method({"name": "fsp", "feat_weight": 50.0, "ce_weight": 0.0})
    assert (create_method({"name": "fsp"}).feat_weight, m.init_epochs) == (0.0, 30)
    m.build(out(s), out(t), CTX)
    body = [nn.Parameter(torch.zeros(2))]
    assert m.init_parameters(body) == body and list(m.parameters()) == []
    terms = m.init_forward(out(s), out(t), INFO)
    assert set(terms) == {"fsp"}
    sd = [f.detach().double().requires_grad_() for f in s]
    ref = sum(((a - b) ** 2).mean() for a, b in zip(hand_fsp(sd), hand_fsp([f.double() for f in t]),
                                                   strict=True))
    close(terms["fsp"], ref)
    for a, b in zip(torch.autograd.grad(terms["fsp"], s), torch.autograd.grad(ref, sd), strict=True):
        close(a, b, atol=1e-9)
    main = m(out(s), out(t), torch.zeros(2, dtype=torch.long), INFO)
    assert set(main) == {"fsp"}
    close(main["fsp"], 50.0 * ref)
    assert set(create_method({"name": "fsp"})(out(s), out(t), torch.zeros(2, dtype=torch.long),
                                              INFO)) == {"ce"}


def test_fsp_refuses_pairs_with_other_channel_counts_in_one_line():
    s = [torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    t = [torch.randn(2, 16, 8, 8), torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4)]
    ctx = BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1,
                       teacher_arch="wrn_40_2", student_arch="wrn_40_1")
    with pytest.raises(ConfigError) as e:
        create_method({"name": "fsp"}).build(out(s), out(t), ctx)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 220
    assert "wrn_40_2 -> wrn_40_1" in msg and "[16, 32, 64]" in msg and "[16, 16, 32]" in msg
    with pytest.raises(ConfigError, match="fsp"):  # different numbers of maps
        create_method({"name": "fsp"}).build(out(s[:2]), out(t), CTX)


# ------------------------------------------------------------------------------------------------
# Options and refusals
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,match", [
    ({"name": "ab", "init_epochs": -1}, "method.init_epochs=-1"),
    ({"name": "ab", "margin": -0.5}, "method.margin=-0.5"),
    ({"name": "ft", "rate": 0}, "method.rate=0"),
    ({"name": "ft", "init_epochs": 1.5}, "method.init_epochs=1.5"),
    ({"name": "fsp", "feat_weight": -1}, "method.feat_weight=-1"),
])
def test_bad_options_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method(cfg)
    assert "\n" not in str(e.value)


def test_init_epochs_is_stored_and_may_be_zero():
    for name in ("ab", "ft", "fsp"):
        assert create_method({"name": name}).init_epochs == 30
        assert create_method({"name": name, "init_epochs": 0}).init_epochs == 0


def test_ft_refuses_a_rate_that_leaves_no_factor_channel():
    _, _, s_out, t_out = ft_pair()
    with pytest.raises(ConfigError, match=r"method.rate=0.1 .*8-channel") as e:
        create_method({"name": "ft", "rate": 0.1}).build(s_out, t_out, CTX)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_outputs_without_features_are_refused(name):
    bare = ModelOutput(logits=torch.zeros(2, 10))
    with pytest.raises(ConfigError, match=name):
        create_method({"name": name}).build(bare, bare, CTX)
    with pytest.raises(ConfigError, match="needs a teacher"):
        create_method({"name": name}).build(out([torch.zeros(2, 2, 4, 4)] * 2), None, CTX)


# ------------------------------------------------------------------------------------------------
# Real models
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs():
    """(teacher, teacher output, student, x) for a pair, models cached. The untrained teacher runs
    on batch statistics: its running statistics are an untrained net's, with which the eval-mode
    features of deep nets grow to ~1e3 (FSP matrices of ~1e6) and SGD steps diverge."""
    cache: dict = {}
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)

    def get(tn: str, sn: str):
        for n in (tn, sn):
            if n not in cache:
                cache[n] = create_model(n, num_classes=10)
        t, s = cache[tn], cache[sn]
        if ("out", tn) not in cache:
            t.train()
            with FeatureTap(t, tn) as tt, torch.no_grad():
                cache["out", tn] = tt(x.clone())
            t.eval()
        return t, cache["out", tn], s, x

    return get


def body_of(student, arch):
    """The student without its classifier (RepDistiller's get_feat_modules())."""
    head = {id(p) for p in resolve_module(student, get_spec(arch).features.pooled).parameters()}
    return [p for p in student.parameters() if id(p) not in head]


def built(name, t_out, s, sn, x, **opts):
    m = create_method({"name": name, **opts})
    s.eval()
    with FeatureTap(s, sn) as ts, torch.no_grad():
        m.build(ts(x[:2]), t_out, CTX)
    return m


def basic_block(c_in, c_out):
    """RepDistiller BasicBlock with a 1x1-conv + BN shortcut (c_in != c_out): conv-BN-conv-BN."""
    return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out + c_in * c_out + 2 * c_out


def test_prestage_parameters_for_resnet32x4_to_resnet8x4(pairs):
    t, t_out, s, x = pairs("resnet32x4", "resnet8x4")
    body = body_of(s, "resnet8x4")
    # resnet8x4: conv1 3->32 + bn1, then one block per stage 32->64->128->256 (fc excluded)
    n_body = 9 * 3 * 32 + 2 * 32 + basic_block(32, 64) + basic_block(64, 128) + basic_block(128, 256)
    assert sum(p.numel() for p in body) == n_body
    ab = built("ab", t_out, s, "resnet8x4", x)
    # every stage has the teacher's channels and size: RepDistiller's Connector is identity
    assert all(isinstance(c, nn.Identity) for c in ab.connectors)
    assert [id(p) for p in ab.init_parameters(body)] == [id(p) for p in body]
    fsp = built("fsp", t_out, s, "resnet8x4", x)
    assert fsp.init_parameters(body) == body
    ft = built("ft", t_out, s, "resnet8x4", x)
    par = ft.init_parameters(body)
    c, k = 256, 128  # resnet32x4's last stage, rate 0.5
    n_par = (9 * c * c + c) + (9 * c * k + k) + (9 * k * k + k) + (9 * k * k + k) + (9 * k * c + c) \
        + (9 * c * c + c)
    assert sum(p.numel() for p in par) == n_par and {id(p) for p in par}.isdisjoint(map(id, body))
    n_tr = (9 * c * c + c + 2 * c) + (9 * c * k + k + 2 * k) + (9 * k * k + k + 2 * k)
    assert sum(p.numel() for p in ft.translator.parameters()) == n_tr
    assert ft.extra_parameters() == n_par + n_tr


def test_ab_connectors_for_wrn_40_2_to_wrn_40_1(pairs):
    t, t_out, s, x = pairs("wrn_40_2", "wrn_40_1")
    ab = built("ab", t_out, s, "wrn_40_1", x)
    # ConvReg(use_relu=False) at equal sizes: 1x1 conv with bias, then BN; 16->32, 32->64, 64->128
    n = sum(cs * ct + ct + 2 * ct for cs, ct in [(16, 32), (32, 64), (64, 128)])
    assert ab.extra_parameters() == n
    body = body_of(s, "wrn_40_1")
    assert len(ab.init_parameters(body)) == len(list(ab.connectors.parameters())) + len(body)
    with pytest.raises(ConfigError, match=r"fsp.*\[16, 32, 64, 128\].*\[16, 16, 32, 64\]"):
        built("fsp", t_out, s, "wrn_40_1", x)


PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "ShuffleV1"), ("ResNet50", "vgg8"),
         ("resnet20", "MobileNetV2")]


@pytest.mark.parametrize("tn,sn", PAIRS, ids=[f"{t}->{s}" for t, s in PAIRS])
def test_terms_and_gradients_are_finite_on_real_pairs(pairs, tn, sn):
    """One training-mode forward of the student; each method builds from its shapes, and its
    pre-stage and main-stage terms and their gradients are finite (FSP: refused but for
    wrn_40_2 -> wrn_16_2)."""
    t, t_out, s, x = pairs(tn, sn)
    body = body_of(s, sn)
    y = torch.arange(2)
    s.train()
    with FeatureTap(s, sn) as ts:
        s_out = ts(x)
    # FT on ResNet50's 2048-channel map: a 130M-parameter paraphraser, too slow for this file
    for name in ("ab", "fsp") if tn == "ResNet50" else ("ab", "ft", "fsp"):
        m = create_method({"name": name})  # main stage: CE (+ FT's term), as RepDistiller
        if name == "fsp" and tn != "wrn_40_2":
            with pytest.raises(ConfigError, match="fsp") as e:
                m.build(s_out, t_out, CTX)
            assert "\n" not in str(e.value)
            continue
        m.build(s_out, t_out, CTX)
        m.train()
        init_params = m.init_parameters(body)
        for stage in ("init", "main"):
            terms = m.init_forward(s_out, t_out, INFO) if stage == "init" else m(s_out, t_out, y,
                                                                                INFO)
            loss = sum(terms.values())
            assert torch.isfinite(loss), (name, stage, terms)
            wrt = init_params if stage == "init" else body + [
                p for p in m.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=True)
            used = [g for g in grads if g is not None]
            assert used and all(torch.isfinite(g).all() for g in used), (name, stage)
            if stage == "init" and name != "ft":  # AB and FSP train the body
                assert any(g is not None and g.abs().sum() > 0 for g in grads[-len(body):])
    assert all(p.grad is None for p in t.parameters())


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_manual_prestage_steps_reduce_the_prestage_loss(pairs, name):
    """The engine's pre-stage by hand: SGD over init_parameters on init_forward's sum, the
    student in train mode when its body is trained, else in eval mode without grad."""
    t, t_out, s_template, x = pairs("wrn_40_2", "wrn_16_2")
    torch.manual_seed(0)
    s = copy.deepcopy(s_template)
    m = built(name, t_out, s, "wrn_16_2", x)
    body = body_of(s, "wrn_16_2")
    params = m.init_parameters(body)
    trains_student = any(id(p) in {id(b) for b in body} for p in params)
    assert trains_student == (name != "ft")
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    s.train(trains_student)
    m.train()
    losses = []
    with FeatureTap(s, "wrn_16_2") as ts:
        for _ in range(5):
            with torch.set_grad_enabled(trains_student):
                s_out = ts(x)
            loss = sum(m.init_forward(s_out, t_out, INFO).values())
            assert torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(p.grad is None for p in t.parameters())
    if name == "ft":  # the student did not move
        assert all(torch.equal(a, b) for a, b in zip(s.state_dict().values(),
                                                       s_template.state_dict().values(), strict=True))


def test_ft_main_steps_reduce_the_loss(pairs):
    t, t_out, s_template, x = pairs("wrn_40_2", "wrn_16_2")
    torch.manual_seed(0)
    s = copy.deepcopy(s_template)
    m = built("ft", t_out, s, "wrn_16_2", x)
    m.init_parameters(body_of(s, "wrn_16_2"))
    y = torch.arange(2)
    s.train()
    m.train()
    with FeatureTap(s, "wrn_16_2") as ts:
        m(ts(x), t_out, y, INFO)  # the first main-stage step freezes the paraphraser
        params = [p for p in [*s.parameters(), *m.parameters()] if p.requires_grad]
        assert {id(p) for p in m.paraphraser.parameters()}.isdisjoint(map(id, params))
        opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        losses = []
        for _ in range(4):
            loss = sum(m(ts(x), t_out, y, INFO).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0] and math.isfinite(losses[-1]), losses
