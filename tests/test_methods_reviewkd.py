"""ReviewKD: HCL and the ABF fusion against references written out here by hand (loss and
gradients), the parts mdistiller's config creates for resnet32x4 -> resnet8x4, the authors'
channel lists for cross-family pairs, the warm-up, the per-pair weight, training steps and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.models import FeatureTap, ModelOutput, create_model

CTX = BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1)


def info(epoch: int = 0) -> StepInfo:
    return StepInfo(epoch=epoch, step=0, epochs=240, steps_per_epoch=1)


# ------------------------------------------------------------------------------------------------
# hand-written references (Chen et al. 2021, Sec. 3 and the authors' hcl / ABF)
# ------------------------------------------------------------------------------------------------
def hand_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling: cell i covers rows floor(i h / l) .. ceil((i + 1) h / l) - 1."""
    h, w = x.shape[-2:]
    rows = []
    for i in range(size):
        r0, r1 = (i * h) // size, -((-(i + 1) * h) // size)
        cols = []
        for j in range(size):
            c0, c1 = (j * w) // size, -((-(j + 1) * w) // size)
            cols.append(x[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def hand_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum() / a.numel()


def hand_hcl(outs, targets) -> torch.Tensor:
    """sum over levels of (MSE + 1/2 MSE_4 + 1/4 MSE_2 + ...) / (1 + 1/2 + 1/4 + ...), where each
    pool size 4, 2, 1 counts only when smaller than the map and halves the next weight."""
    total = 0.0
    for y, t in zip(outs, targets, strict=True):
        h = y.shape[-2]
        terms, weights = [hand_mse(y, t)], [1.0]
        for size in (4, 2, 1):
            if size < h:
                weights.append(weights[-1] / 2)
                terms.append(hand_mse(hand_pool(y, size), hand_pool(t, size)))
        total = total + sum(w * v for w, v in zip(weights, terms, strict=True)) / sum(weights)
    return total


def hand_bn(x, bn):
    """Eval-mode BatchNorm: (x - running mean) / sqrt(running var + eps) * gamma + beta."""
    def c(v):
        return v.detach().double()[None, :, None, None]
    return (x - c(bn.running_mean)) / torch.sqrt(c(bn.running_var) + bn.eps) * c(bn.weight) + c(bn.bias)


def hand_conv(x, weight, bias=None):
    """Stride-1 convolution with 'same' zero padding, as a sum of shifted channel mixes."""
    w = weight.detach().double()
    k = w.shape[-1]
    p = k // 2
    b, _, h, wd = x.shape
    padded = torch.zeros(b, x.shape[1], h + 2 * p, wd + 2 * p, dtype=x.dtype)
    padded[:, :, p:p + h, p:p + wd] = x
    out = sum(torch.einsum("oi,bihw->bohw", w[:, :, dy, dx], padded[:, :, dy:dy + h, dx:dx + wd])
              for dy in range(k) for dx in range(k))
    if bias is not None:
        out = out + bias.detach().double()[None, :, None, None]
    return out


def hand_nearest(x, size):
    """Nearest resize: output index i reads input index floor(i * in / out)."""
    (h, w), (oh, ow) = x.shape[-2:], size
    rows = [math.floor(i * h / oh) for i in range(oh)]
    cols = [math.floor(j * w / ow) for j in range(ow)]
    return x[:, :, rows][:, :, :, cols]


def hand_review(abfs, s_levels, t_sizes):
    """Deep to shallow: x = BN(conv1x1(s)); fused levels x = a0 x + a1 up(r), a = sigmoid(conv1x1(
    [x, up(r)])); x resized to the teacher's size; y = BN(conv3x3(x)); r = x for the next level."""
    outs = [None] * len(s_levels)
    r = None
    for i in reversed(range(len(s_levels))):
        abf = abfs[i]
        x = hand_bn(hand_conv(s_levels[i], abf.conv1[0].weight), abf.conv1[1])
        if abf.att_conv is not None:
            up = hand_nearest(r, x.shape[-2:])
            z = hand_conv(torch.cat([x, up], 1), abf.att_conv[0].weight, abf.att_conv[0].bias)
            a = 1 / (1 + torch.exp(-z))
            x = x * a[:, 0:1] + up * a[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(t_sizes[i]):
            x = hand_nearest(x, t_sizes[i])
        outs[i] = hand_bn(hand_conv(x, abf.conv2[0].weight), abf.conv2[1])
        r = x
    return outs


# ------------------------------------------------------------------------------------------------
# HCL and ABF against the references
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[8, 4, 2, 1], [6, 5, 3], [16, 1]])
def test_hcl_matches_hand_computation_with_gradients(sizes):
    from kdsweep.methods.reviewkd import hcl_loss

    torch.manual_seed(0)
    ys = [torch.randn(3, 2, s, s, dtype=torch.float64) for s in sizes]
    ts = [torch.randn(3, 2, s, s, dtype=torch.float64) for s in sizes]
    ys32 = [y.float().requires_grad_() for y in ys]
    ys64 = [y.clone().requires_grad_() for y in ys]
    got = hcl_loss(ys32, [t.float() for t in ts])
    ref = hand_hcl(ys64, ts)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-7)
    g_got = torch.autograd.grad(got, ys32)
    g_ref = torch.autograd.grad(ref, ys64)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-8)


def test_hcl_weights_on_an_8x8_map_are_1_half_quarter_eighth():
    from kdsweep.methods.reviewkd import hcl_loss

    # a constant difference d gives MSE d^2 at every pool size: the normalised sum is d^2
    y, t = torch.full((1, 1, 8, 8), 3.0), torch.zeros(1, 1, 8, 8)
    assert hcl_loss([y], [t]).item() == pytest.approx(9.0)
    # a difference with zero mean in every 4x4 cell only counts at full size: d^2 / 1.875
    d = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)[None, None]
    assert hcl_loss([d], [t]).item() == pytest.approx(1 / 1.875)


def fake_levels(student_preact: bool = False):
    """Student f1 4x4, f2 4x4, pooled 6; teacher f1 16x16 (unpaired), f2 8x8, f3 2x2, pooled 9:
    the deepest levels pair up, with an upsampled and a downsampled level."""
    torch.manual_seed(1)
    b = 3
    s_feats = [torch.randn(b, 2, 8, 8), torch.randn(b, 3, 4, 4), torch.randn(b, 5, 4, 4)]
    s_pre = [s_feats[0]] + [torch.randn_like(f) for f in s_feats[1:]]
    s_pooled = torch.randn(b, 6)
    t_feats = [torch.randn(b, 2, 32, 32), torch.randn(b, 2, 16, 16), torch.randn(b, 4, 8, 8),
               torch.randn(b, 7, 2, 2)]
    t_pre = [t_feats[0]] + [torch.randn_like(f) for f in t_feats[1:]]
    t_pooled = torch.randn(b, 9)
    logits = torch.randn(b, 10)
    s_out = ModelOutput(logits, feats=s_feats, preact_feats=s_pre, pooled=s_pooled)
    t_out = ModelOutput(torch.randn(b, 10), feats=t_feats, preact_feats=t_pre, pooled=t_pooled)
    return s_out, t_out


def randomise(method) -> None:
    """Fixed, non-trivial weights and BN statistics (eval mode)."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in method.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for m in method.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    method.eval()


@pytest.mark.parametrize("student_preact", [False, True])
def test_review_and_hcl_match_hand_computation_with_gradients(student_preact):
    s_out, t_out = fake_levels()
    m = create_method({"name": "reviewkd", "feat_weight": 2.0, "warmup": 0, "ce_weight": 0.0,
                       "student_preact": student_preact})
    m.build(s_out, t_out, CTX)
    assert [(a.conv1[0].in_channels, a.conv1[0].out_channels, a.conv2[0].out_channels,
             a.att_conv is not None) for a in m.abfs] == [(3, 6, 4, True), (5, 6, 7, True),
                                                          (6, 6, 9, False)]
    randomise(m)
    maps = s_out.preact_feats if student_preact else s_out.feats
    leaves = [maps[1].requires_grad_(), maps[2].requires_grad_(), s_out.pooled.requires_grad_()]
    terms = m(s_out, t_out, torch.zeros(3, dtype=torch.long), info())
    assert set(terms) == {"reviewkd"}

    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    s_levels = [ref_leaves[0], ref_leaves[1], ref_leaves[2][:, :, None, None]]
    # the teacher's pre-activation maps f2, f3 and its pooled vector
    targets = [t_out.preact_feats[2].double(), t_out.preact_feats[3].double(),
               t_out.pooled.double()[:, :, None, None]]
    outs = hand_review(list(m.abfs), s_levels, [t.shape[-2:] for t in targets])
    ref = 2.0 * hand_hcl(outs, targets)
    torch.testing.assert_close(terms["reviewkd"].double(), ref, rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(terms["reviewkd"], leaves)
    g_ref = torch.autograd.grad(ref, ref_leaves)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)
    other = s_out.feats if student_preact else s_out.preact_feats
    assert other[1].grad is None and not other[1].requires_grad


def test_the_loss_is_float32_under_autocast_and_the_teacher_gets_no_gradient():
    s_out, t_out = fake_levels()
    t_out.preact_feats[2].requires_grad_()
    m = create_method({"name": "reviewkd", "feat_weight": 1.0})
    m.build(s_out, t_out, CTX)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = m(s_out, t_out, torch.zeros(3, dtype=torch.long), info())
    assert terms["reviewkd"].dtype == torch.float32 and torch.isfinite(terms["reviewkd"])
    sum(terms.values()).backward()
    assert t_out.preact_feats[2].grad is None


# ------------------------------------------------------------------------------------------------
# real pairs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def outputs():
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            model = create_model(name, num_classes=10).eval()
            with FeatureTap(model, name) as tap, torch.no_grad():
                cache[name] = tap(torch.randn(2, 3, 32, 32))
        return cache[name]

    return get


def abf_params(c_in: int, mid: int, c_out: int, fuse: bool) -> int:
    """mdistiller's ABF: 1x1 conv (no bias) + BN, 3x3 conv (no bias) + BN, [1x1 conv 2 mid -> 2]."""
    return c_in * mid + 2 * mid + mid * c_out * 9 + 2 * c_out + (2 * mid * 2 + 2 if fuse else 0)


def test_resnet32x4_to_resnet8x4_creates_the_parts_of_mdistillers_config(outputs):
    # mdistiller REVIEWKD: IN_CHANNELS = OUT_CHANNELS = [64, 128, 256, 256], SHAPES = OUT_SHAPES =
    # [1, 8, 16, 32] (deep to shallow), mid = min(512, IN_CHANNELS[-1])
    in_ch = out_ch = [64, 128, 256, 256]
    mid = min(512, in_ch[-1])
    s_out, t_out = outputs("resnet8x4"), outputs("resnet32x4")
    m = create_method({"name": "reviewkd"})
    m.build(s_out, t_out, BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1,
                                       teacher_arch="resnet32x4", student_arch="resnet8x4"))
    n = len(in_ch)
    for i, abf in enumerate(m.abfs):
        assert abf.conv1[0].weight.shape == (mid, in_ch[i], 1, 1)
        assert abf.conv2[0].weight.shape == (out_ch[i], mid, 3, 3)
        assert (abf.att_conv is not None) == (i < n - 1)
        if abf.att_conv is not None:
            assert abf.att_conv[0].weight.shape == (2, 2 * mid, 1, 1)
    expected = sum(abf_params(in_ch[i], mid, out_ch[i], i < n - 1) for i in range(n))
    assert m.extra_parameters() == expected
    s, t = m.levels(s_out, t_out)
    outs = m.review(s, [f.shape[-2:] for f in t])
    assert [o.shape[-1] for o in outs][::-1] == [1, 8, 16, 32]  # OUT_SHAPES
    assert m.feat_weight == 5.0                                  # reviewkd.yaml REVIEWKD_WEIGHT


# (teacher, student): the authors' build_review_kd lists (in, out, student sizes, teacher sizes),
# shallow to deep; resnet20 -> MobileNetV2 has none (deepest levels paired: MobileNetV2's f1 out)
CROSS = {
    ("ResNet50", "vgg8"): ([128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048],
                           [16, 8, 4, 4, 1], [32, 16, 8, 4, 1]),
    ("resnet32x4", "ShuffleV1"): ([240, 480, 960, 960], [64, 128, 256, 256],
                                  [16, 8, 4, 1], [32, 16, 8, 1]),
    ("resnet32x4", "ShuffleV2"): ([116, 232, 464, 1024], [64, 128, 256, 256],
                                  [16, 8, 4, 1], [32, 16, 8, 1]),
    ("wrn_40_2", "ShuffleV1"): ([240, 480, 960, 960], [32, 64, 128, 128],
                                [16, 8, 4, 1], [32, 16, 8, 1]),
    ("resnet20", "MobileNetV2"): ([16, 48, 160, 1280], [16, 32, 64, 64],
                                  [8, 4, 2, 1], [32, 16, 8, 1]),
    ("vgg13", "MobileNetV2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512],
                               [16, 8, 4, 2, 1], [16, 8, 4, 4, 1]),
}


@pytest.mark.parametrize("pair", list(CROSS), ids=[f"{t}->{s}" for t, s in CROSS])
def test_cross_family_pairs_build_the_authors_parts_and_give_a_finite_loss(outputs, pair):
    teacher, student = pair
    in_ch, out_ch, s_sizes, t_sizes = CROSS[pair]
    s_out, t_out = outputs(student), outputs(teacher)
    m = create_method({"name": "reviewkd"})
    m.build(s_out, t_out, CTX)
    s, t = m.levels(s_out, t_out)
    assert [f.shape[1] for f in s] == in_ch and [f.shape[1] for f in t] == out_ch
    assert [f.shape[-1] for f in s] == s_sizes and [f.shape[-1] for f in t] == t_sizes
    assert m.abfs[0].conv1[0].out_channels == min(512, in_ch[-1])
    with torch.no_grad():
        outs = m.review(s, [f.shape[-2:] for f in t])
        terms = m(s_out, t_out, torch.arange(2), info(30))
    assert [o.shape for o in outs] == [f.shape for f in t]
    assert set(terms) == {"ce", "reviewkd"}
    assert all(torch.isfinite(v) for v in terms.values())


# ------------------------------------------------------------------------------------------------
# warm-up, per-pair weight, training, errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch,factor", [(0, 1 / 20), (9, 0.5), (18, 0.95), (19, 1.0), (200, 1.0)])
def test_warmup_follows_mdistillers_one_based_epochs(epoch, factor):
    s_out, t_out = fake_levels()
    m = create_method({"name": "reviewkd", "feat_weight": 1.0})
    m.build(s_out, t_out, CTX)
    m.eval()
    assert m.warmup_factor(epoch) == pytest.approx(factor)
    full = m(s_out, t_out, torch.zeros(3, dtype=torch.long), info(100))["reviewkd"]
    ramp = m(s_out, t_out, torch.zeros(3, dtype=torch.long), info(epoch))["reviewkd"]
    assert ramp.item() == pytest.approx(factor * full.item(), rel=1e-6)
    assert create_method({"name": "reviewkd", "warmup": 0}).warmup_factor(0) == 1.0


@pytest.mark.parametrize("teacher,student,weight", [
    ("resnet56", "resnet20", 0.6), ("resnet110", "resnet32", 1.0), ("resnet32x4", "ShuffleV2", 8.0),
    ("wrn_40_2", "wrn_16_2", 5.0), ("resnet32x4", "resnet8x4", 5.0), ("vgg13", "vgg8", 5.0)])
def test_the_weight_is_the_authors_per_pair_value(teacher, student, weight):
    s_out, t_out = fake_levels()
    m = create_method({"name": "reviewkd"})
    m.build(s_out, t_out, BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1,
                                       teacher_arch=teacher, student_arch=student))
    assert m.feat_weight == weight and m.resolved["feat_weight"] == weight
    fixed = create_method({"name": "reviewkd", "feat_weight": 3.0})
    fixed.build(s_out, t_out, BuildContext(num_train=8, num_classes=10, epochs=1,
                                           steps_per_epoch=1, teacher_arch=teacher,
                                           student_arch=student))
    assert fixed.resolved == {"feat_weight": 3.0, "feat_weight_source": "method.feat_weight"}


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    t = create_model("resnet8", num_classes=10).eval()
    s = create_model("resnet8", num_classes=10)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    m = create_method({"name": "reviewkd", "feat_weight": 1.0, "kd_weight": 1.0})
    with FeatureTap(t, "resnet8") as tt, FeatureTap(s, "resnet8") as ts:
        t_out = tt(x)  # with grad enabled: the method must not backpropagate into it
        s.eval()
        with torch.no_grad():
            m.build(ts(x[:2]), tt(x[:2]), CTX)
        s.train()
        m.train()
        opt = torch.optim.Adam(list(s.parameters()) + list(m.parameters()), lr=1e-3)
        losses = []
        for step in range(4):
            terms = m(ts(x), t_out, y, info(step))
            assert set(terms) == {"ce", "kd", "reviewkd"}
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step == 0:
                for name, p in m.named_parameters():
                    assert p.grad is not None and p.grad.abs().sum() > 0, name
                assert all(p.grad is None for p in t.parameters())
            opt.step()
            losses.append(terms["reviewkd"].item() / m.warmup_factor(step))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("cfg,match", [
    ({"feat_weight": -1}, "method.feat_weight=-1 is out of range"),
    ({"warmup": -5}, "method.warmup=-5 is out of range"),
    ({"max_mid_channels": 0}, "method.max_mid_channels=0 is out of range"),
    ({"max_mid_channels": 2.5}, "method.max_mid_channels=2.5 must be an integer"),
    ({"student_preact": "yes"}, "method.student_preact='yes' must be true or false"),
    ({"T": 0}, "method.T=0 is out of range"),
    ({"mid_channels": 8}, "method 'reviewkd' has no option method.mid_channels"),
])
def test_bad_options_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method({"name": "reviewkd", **cfg})
    assert "\n" not in str(e.value)


def test_outputs_without_the_needed_features_are_refused_in_one_line():
    s_out, t_out = fake_levels()
    m = create_method({"name": "reviewkd"})
    no_pooled = copy.copy(t_out)
    no_pooled.pooled = None
    for student, teacher, match in [
        (ModelOutput(s_out.logits), t_out, "needs at least 1 stage features of the student"),
        (s_out, no_pooled, "needs the teacher's pooled embedding"),
        (s_out, None, "needs a teacher"),
    ]:
        with pytest.raises(ConfigError, match=match) as e:
            m.build(student, teacher, CTX)
        assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match="build"):
        m(s_out, t_out, torch.zeros(3, dtype=torch.long), info())
