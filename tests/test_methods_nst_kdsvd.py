"""NST and KD-SVD: losses and gradients against reference computations written out here (explicit
kernel sums; per-sample float64 SVDs), real cross-family pairs, training steps, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.methods.kdsvd import top_right_singular
from kdsweep.models import FeatureTap, ModelOutput, create_model

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
CTX = BuildContext(num_train=8, num_classes=10, epochs=1, steps_per_epoch=1)
Y = torch.zeros(2, dtype=torch.long)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small batched SVDs and convolutions: intra-op threads only contend (seconds per call on a
    loaded 2-core machine instead of milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def out(feats: list[torch.Tensor]) -> ModelOutput:
    b = feats[0].shape[0]
    return ModelOutput(logits=torch.zeros(b, 10, dtype=feats[0].dtype), feats=feats,
                       preact_feats=feats)


def rand(*shape: int, relu: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64)
    return x.clamp(min=0) if relu else x


def pool2(f: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling by reshaping."""
    b, c, h, w = f.shape
    return f.reshape(b, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5))


def student_grads(loss: torch.Tensor, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, feats, allow_unused=True)
    return [torch.zeros_like(f) if g is None else g for f, g in zip(feats, grads, strict=True)]


# ------------------------------------------------------------------------------------------------
# NST: MMD^2 with k(x, y) = (x . y)^2 between the channels' L2-normalised H*W maps
# ------------------------------------------------------------------------------------------------
def hand_mmd2(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Huang & Wang, Eq. 5-6 with the polynomial kernel (d=2, c=0), averaged over the batch:
    every kernel value written as an explicit sum over channel pairs."""

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / torch.sqrt(sum(x * x for x in v))

    total = 0.0
    for b in range(f_s.shape[0]):
        s = [unit(f_s[b, c].reshape(-1)) for c in range(f_s.shape[1])]
        t = [unit(f_t[b, c].reshape(-1)) for c in range(f_t.shape[1])]
        k_ss = sum(torch.dot(a, c) ** 2 for a in s for c in s) / len(s) ** 2
        k_tt = sum(torch.dot(a, c) ** 2 for a in t for c in t) / len(t) ** 2
        k_st = sum(torch.dot(a, c) ** 2 for a in s for c in t) / (len(s) * len(t))
        total = total + k_ss + k_tt - 2 * k_st
    return total / f_s.shape[0]


def test_nst_loss_and_gradients_match_hand_computation():
    """Stage 1: the teacher's 8x8 is pooled to the student's 4x4; stage 2: the student's 4x4 to
    the teacher's 2x2; channel counts differ; f0 is not read."""
    torch.manual_seed(0)
    s = [rand(2, 2, 8, 8), rand(2, 3, 4, 4, relu=True), rand(2, 4, 4, 4)]
    t = [rand(2, 5, 8, 8), rand(2, 5, 8, 8, relu=True), rand(2, 2, 2, 2)]
    for f in s:
        f.requires_grad_(True)
    expected = hand_mmd2(s[1], pool2(t[1])) + hand_mmd2(pool2(s[2]), t[2])
    m = create_method({"name": "nst", "ce_weight": 0.0})
    m.build(out(s), out(t), CTX)
    terms = m(out(s), out(t), Y, INFO)
    assert set(terms) == {"nst"} and terms["nst"].dtype == torch.float64
    torch.testing.assert_close(terms["nst"], 50.0 * expected, rtol=1e-12, atol=1e-12)
    got, want = student_grads(terms["nst"], s), student_grads(50.0 * expected, s)
    assert got[0].abs().sum() == 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_nst_pairs_the_deepest_stages_and_never_reaches_the_teacher():
    torch.manual_seed(1)
    s = [rand(2, 2, 4, 4), rand(2, 3, 4, 4)]  # one stage
    t = [rand(2, 2, 4, 4), rand(2, 4, 4, 4), rand(2, 6, 4, 4)]  # two stages
    for f in s + t:
        f.requires_grad_(True)
    terms = create_method({"name": "nst", "feat_weight": 1.0, "ce_weight": 0.0})(
        out(s), out(t), Y, INFO)
    torch.testing.assert_close(terms["nst"], hand_mmd2(s[1], t[2]), rtol=1e-12, atol=1e-12)
    terms["nst"].backward()
    assert all(f.grad is None for f in t)
    # identical selectivity patterns (the same maps, channels permuted): MMD^2 = 0
    same = create_method({"name": "nst", "ce_weight": 0.0})(out(s), out([s[0], s[1][:, [2, 0, 1]]]),
                                                            Y, INFO)
    assert abs(same["nst"].item()) < 1e-12


def test_nst_is_float32_under_autocast():
    torch.manual_seed(2)
    s = [torch.randn(2, 3, 4, 4).bfloat16() for _ in range(2)]
    t = [torch.randn(2, 5, 4, 4).bfloat16() for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = create_method({"name": "nst", "ce_weight": 0.0})(out(s), out(t), Y, INFO)
    assert terms["nst"].dtype == torch.float32
    ref = hand_mmd2(s[1].double(), t[1].double()) * 50.0
    assert terms["nst"].item() == pytest.approx(ref.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# KD-SVD: RBF correlation of consecutive stages' leading right singular vectors
# ------------------------------------------------------------------------------------------------
def np_vectors(f_s: np.ndarray, f_t: np.ndarray, k: int) -> tuple[list, list]:
    """Per sample: the teacher's k leading right singular vectors of the (H*W, C) matrix, each
    signed to a non-negative entry sum; for each, the student's best |cos| match among its k+3
    leading ones, signed to a positive cosine; both times the teacher's normalised singular
    values. numpy float64 SVD."""
    vs_b, vt_b = [], []
    for b in range(f_s.shape[0]):
        _, s_t, vh_t = np.linalg.svd(f_t[b].reshape(f_t.shape[1], -1).T, full_matrices=False)
        _, _, vh_s = np.linalg.svd(f_s[b].reshape(f_s.shape[1], -1).T, full_matrices=False)
        weight = s_t[:k] / math.sqrt(sum(x * x for x in s_t[:k]))
        vt = np.zeros((f_t.shape[1], k))
        vs = np.zeros((f_s.shape[1], k))
        for q in range(k):
            v = vh_t[q] if vh_t[q].sum() >= 0 else -vh_t[q]
            cands = vh_s[: k + 3]
            cos = [float(c @ v) for c in cands]
            j = max(range(len(cos)), key=lambda i: abs(cos[i]))
            vt[:, q] = v * weight[q]
            vs[:, q] = math.copysign(1.0, cos[j]) * cands[j] * weight[q]
        vs_b.append(vs)
        vt_b.append(vt)
    return vs_b, vt_b


def np_kdsvd(g_s: list[torch.Tensor], g_t: list[torch.Tensor], k: int) -> float:
    """Lee, Kim & Song (RepDistiller's reading): sum over consecutive stages and over every
    (sample, channel a of stage l, channel c of stage l-1, vector q) of
    (exp(-(v_s^l[a]-v_s^{l-1}[c])^2/8) - the same for the teacher)^2, divided by the batch."""
    total, prev = 0.0, None
    for f_s, f_t in zip(g_s, g_t, strict=True):
        cur = np_vectors(f_s.detach().double().numpy(), f_t.detach().double().numpy(), k)
        if prev is not None:
            for b in range(len(cur[0])):
                vs, vt, ps, pt = cur[0][b], cur[1][b], prev[0][b], prev[1][b]
                for a in range(vs.shape[0]):
                    for c in range(ps.shape[0]):
                        for q in range(k):
                            rs = math.exp(-((vs[a, q] - ps[c, q]) ** 2) / 8)
                            rt = math.exp(-((vt[a, q] - pt[c, q]) ** 2) / 8)
                            total += (rs - rt) ** 2
        prev = cur
    return total / g_s[0].shape[0]


def torch_kdsvd(g_s: list[torch.Tensor], g_t: list[torch.Tensor], k: int) -> torch.Tensor:
    """The same loss in float64 torch, one sample at a time, differentiated by PyTorch's own
    ``torch.linalg.svd`` backward (exact where the singular values are distinct)."""
    total, prev = 0.0, None
    for f_s, f_t in zip(g_s, g_t, strict=True):
        cur = []
        for b in range(f_s.shape[0]):
            _, s_t, vh_t = torch.linalg.svd(f_t[b].detach().reshape(f_t.shape[1], -1).T,
                                            full_matrices=False)
            _, _, vh_s = torch.linalg.svd(f_s[b].reshape(f_s.shape[1], -1).T,
                                          full_matrices=False)
            weight = s_t[:k] / s_t[:k].norm()
            cols_s, cols_t = [], []
            for q in range(k):
                v = vh_t[q] * (1.0 if vh_t[q].sum() >= 0 else -1.0)
                cos = vh_s[: k + 3] @ v
                j = int(cos.abs().argmax())
                cols_t.append(v * weight[q])
                cols_s.append(vh_s[j] * float(torch.sign(cos[j]).item()) * weight[q])
            cur.append((torch.stack(cols_s, 1), torch.stack(cols_t, 1)))
        if prev is not None:
            for (vs, vt), (ps, pt) in zip(cur, prev, strict=True):
                rs = torch.exp(-(vs[:, None, :] - ps[None, :, :]) ** 2 / 8)
                rt = torch.exp(-(vt[:, None, :] - pt[None, :, :]) ** 2 / 8)
                total = total + ((rs - rt) ** 2).sum()
        prev = cur
    return total / g_s[0].shape[0]


def kdsvd_terms(s, t, **cfg):
    m = create_method({"name": "kdsvd", "ce_weight": 0.0, **cfg})
    m.build(out(s), out(t), CTX)
    return m(out(s), out(t), Y, INFO)


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_loss_and_gradients_match_reference(k):
    """Three stages (two RBF terms), the student's maps larger than the teacher's (no pooling is
    needed: the vectors live in channel space), channels equal per stage."""
    torch.manual_seed(3)
    s = [rand(2, 3, 8, 8), rand(2, 5, 8, 8, relu=True), rand(2, 6, 4, 4, relu=True),
         rand(2, 4, 4, 4)]
    t = [rand(2, 3, 8, 8), rand(2, 5, 4, 4, relu=True), rand(2, 6, 4, 4, relu=True),
         rand(2, 4, 2, 2)]
    for f in s:
        f.requires_grad_(True)
    terms = kdsvd_terms(s, t, feat_weight=2.5, k=k)
    assert set(terms) == {"kdsvd"} and terms["kdsvd"].dtype == torch.float64
    assert terms["kdsvd"].item() == pytest.approx(2.5 * np_kdsvd(s[1:], t[1:], k), rel=1e-10)
    got = student_grads(terms["kdsvd"], s)
    want = student_grads(2.5 * torch_kdsvd(s[1:], t[1:], k), s)
    assert got[0].abs().sum() == 0 and all(g.abs().sum() > 0 for g in got[1:])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)


def test_kdsvd_float32_matches_the_float64_reference():
    torch.manual_seed(4)
    s = [torch.randn(2, 2, 4, 4)] + [torch.randn(2, c, 4, 4).relu() for c in (4, 8)]
    t = [torch.randn(2, 2, 4, 4)] + [torch.randn(2, c, 4, 4).relu() for c in (4, 8)]
    terms = kdsvd_terms(s, t)
    assert terms["kdsvd"].dtype == torch.float32
    assert terms["kdsvd"].item() == pytest.approx(np_kdsvd(s[1:], t[1:], 1), rel=1e-4)


def test_kdsvd_gradient_is_finite_and_exact_for_rank_deficient_maps():
    """Dead channels and more channels than positions make many singular values equal (zero):
    PyTorch's SVD backward divides by their differences; the method's backward only uses the
    gaps of the vectors it returns, so its gradient is finite and equals central finite
    differences of the float64 numpy reference along random directions."""
    torch.manual_seed(5)
    s = [rand(2, 2, 4, 4), rand(2, 6, 4, 4, relu=True), rand(2, 12, 2, 2, relu=True)]
    s[1][:, 4:] = 0  # two dead channels: rank 4 of min(16, 6)
    s[2][:, 9:] = 0  # 4 positions x 12 channels, three of them dead
    t = [rand(2, 2, 4, 4), rand(2, 6, 4, 4, relu=True), rand(2, 12, 2, 2, relu=True)]
    for f in s:
        f.requires_grad_(True)
    g = student_grads(kdsvd_terms(s, t)["kdsvd"], s)
    assert all(torch.isfinite(x).all() for x in g)
    h = 1e-6
    for _ in range(3):
        d = [torch.randn_like(f) for f in s[1:]]
        plus = np_kdsvd([f.detach() + h * e for f, e in zip(s[1:], d, strict=True)], t[1:], 1)
        minus = np_kdsvd([f.detach() - h * e for f, e in zip(s[1:], d, strict=True)], t[1:], 1)
        analytic = sum((x * e).sum().item() for x, e in zip(g[1:], d, strict=True))
        assert analytic == pytest.approx((plus - minus) / (2 * h), rel=1e-5, abs=1e-9)


def test_top_right_singular_matches_pytorch_backward_where_that_is_defined():
    torch.manual_seed(6)
    for m, n in [(16, 6), (4, 9), (7, 7)]:
        x = rand(3, m, n).requires_grad_(True)
        gv, gs = rand(3, n, min(4, m, n)), rand(3, min(4, m, n))
        v, s = top_right_singular(x, 4)
        _, s_ref, vh = torch.linalg.svd(x, full_matrices=False)
        torch.testing.assert_close(v, vh.transpose(-2, -1)[..., :4])
        got = torch.autograd.grad((v * gv).sum() + (s * gs).sum(), x)[0]
        want = torch.autograd.grad((vh.transpose(-2, -1)[..., :4] * gv).sum()
                                   + (s_ref[..., :4] * gs).sum(), x)[0]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    zero = torch.zeros(2, 5, 3, requires_grad=True)  # no direction is determined: no gradient
    v, _ = top_right_singular(zero, 2)
    assert torch.autograd.grad(v.sum(), zero)[0].abs().sum() == 0


def test_kdsvd_pairs_the_deepest_stages():
    torch.manual_seed(7)
    s = [rand(2, 2, 4, 4), rand(2, 5, 4, 4), rand(2, 6, 4, 4)]
    t = [rand(2, 2, 4, 4), rand(2, 9, 4, 4), rand(2, 5, 4, 4), rand(2, 6, 2, 2)]
    assert kdsvd_terms(s, t)["kdsvd"].item() == pytest.approx(np_kdsvd(s[1:], t[2:], 1), rel=1e-10)


@pytest.mark.parametrize("s_shapes,t_shapes,cfg,match", [
    ([(4, 4, 4), (6, 4, 4)], [(4, 4, 4), (8, 4, 4)], {},
     r"cannot serve the pair: it needs equal channel counts at the paired stages; teacher "
     r"\[4, 8\], student \[4, 6\]"),
    ([(4, 4, 4)], [(4, 4, 4), (4, 4, 4)], {}, "needs at least 2 stage features of the student"),
    ([(4, 4, 4), (6, 2, 2)], [(4, 4, 4), (6, 1, 2)], {"k": 3},
     r"method.k=3 exceeds min\(C, H\*W\)=2 of the teacher's stage 6x1x2"),
])
def test_kdsvd_refuses_pairs_it_cannot_serve_at_build(s_shapes, t_shapes, cfg, match):
    s = [torch.randn(2, 2, 4, 4)] + [torch.randn(2, *sh) for sh in s_shapes]
    t = [torch.randn(2, 2, 4, 4)] + [torch.randn(2, *sh) for sh in t_shapes]
    with pytest.raises(ConfigError, match=match) as e:
        create_method({"name": "kdsvd", **cfg}).build(out(s), out(t), CTX)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------
# options, real pairs, training steps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg,match", [
    ({"name": "nst", "feat_weight": -1}, "method.feat_weight=-1 is out of range"),
    ({"name": "nst", "T": 0}, "method.T=0 is out of range"),
    ({"name": "nst", "kernel": "poly"}, "method 'nst' has no option method.kernel"),
    ({"name": "kdsvd", "k": 0}, "method.k=0 is out of range"),
    ({"name": "kdsvd", "k": 1.5}, "method.k=1.5 must be an integer"),
    ({"name": "kdsvd", "kd_weight": float("nan")}, "method.kd_weight=nan is out of range"),
])
def test_bad_options_are_refused_in_one_line(cfg, match):
    with pytest.raises(ConfigError, match=match) as e:
        create_method(cfg)
    assert "\n" not in str(e.value)


def test_defaults_and_kd_term():
    from kdsweep.methods import get_method, hparams

    for name, weight in [("nst", 50.0), ("kdsvd", 1.0)]:
        d = {hp.name: hp.default for hp in hparams(get_method(name))}
        assert (d["feat_weight"], d["ce_weight"], d["kd_weight"], d["T"]) == (weight, 1, 0, 4)
    assert {hp.name: hp.default for hp in hparams(get_method("kdsvd"))}["k"] == 1
    torch.manual_seed(8)
    f = [torch.randn(2, 2, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 5, 4, 4)]
    zs, zt = torch.randn(2, 10), torch.randn(2, 10)
    s_out = ModelOutput(logits=zs, feats=f, preact_feats=f)
    t_out = ModelOutput(logits=zt, feats=f, preact_feats=f)
    kd = 4 * torch.nn.functional.kl_div(torch.log_softmax(zs / 2, 1), torch.softmax(zt / 2, 1),
                                        reduction="batchmean")
    for name in ["nst", "kdsvd"]:
        terms = create_method({"name": name, "kd_weight": 0.5, "T": 2.0})(s_out, t_out, Y, INFO)
        assert set(terms) == {"ce", "kd", name}
        assert terms["kd"].item() == pytest.approx(0.5 * kd.item(), rel=1e-5)


CROSS = [("resnet32x4", "ShuffleV1"), ("ResNet50", "vgg8"), ("resnet20", "MobileNetV2"),
         ("wrn_40_2", "wrn_16_2"), ("wrn_40_1", "resnet20"), ("vgg13", "vgg8")]
KDSVD_SERVES = {("wrn_40_2", "wrn_16_2"), ("wrn_40_1", "resnet20"), ("vgg13", "vgg8")}


def test_real_pairs_build_with_finite_losses_and_gradients():
    """NST serves every pair (pooling, any channel counts, deepest stages for resnet20's three vs
    MobileNetV2's four); KD-SVD serves the pairs with equal channels per stage (wrn_40_1 ->
    resnet20 is cross-family) and refuses the others at build, in one line naming the shapes."""
    torch.manual_seed(9)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for tn, sn in CROSS:
        t, s = create_model(tn, num_classes=10).eval(), create_model(sn, num_classes=10).eval()
        with FeatureTap(t, tn) as tt, FeatureTap(s, sn) as ts:
            with torch.no_grad():
                t_out = tt(x)
            s_out = ts(x)
            for name in ["nst", "kdsvd"]:
                m = create_method({"name": name})
                if name == "kdsvd" and (tn, sn) not in KDSVD_SERVES:
                    with pytest.raises(ConfigError, match="needs equal channel counts") as e:
                        m.build(s_out, t_out, CTX)
                    assert "\n" not in str(e.value)
                    continue
                m.build(s_out, t_out, CTX)
                terms = m(s_out, t_out, y, INFO)
                assert torch.isfinite(terms[name]) and terms[name] > 0, (tn, sn, name)
                grads = torch.autograd.grad(terms[name], list(s.parameters()), allow_unused=True,
                                            retain_graph=True)
                got = [g for g in grads if g is not None]
                assert got and all(torch.isfinite(g).all() for g in got), (tn, sn, name)


@pytest.mark.parametrize("name,teacher,student", [("nst", "resnet20", "MobileNetV2"),
                                                  ("kdsvd", "wrn_40_1", "resnet20")])
def test_training_steps_reduce_the_distillation_loss(name, teacher, student):
    torch.manual_seed(10)
    t = create_model(teacher, num_classes=10).eval()
    s = create_model(student, num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    with FeatureTap(t, teacher) as tt, FeatureTap(s, student) as ts:
        with torch.no_grad():
            t_out = tt(x)
        m = create_method({"name": name, "ce_weight": 0.0})
        s.eval()
        with torch.no_grad():
            m.build(ts(x[:2]), tt(x[:2]), CTX)
        s.train()
        opt = torch.optim.Adam(s.parameters(), lr=1e-3)
        losses = []
        for _ in range(5):
            loss = m(ts(x), t_out, y, INFO)[name]
            assert torch.isfinite(loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < losses[0], losses
