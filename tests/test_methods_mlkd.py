"""MLKD and the strong view: the loss and its gradients against a hand-written reference, and the
strong view's properties (seeded, independent of the batch stream, sharded and resumed exactly)."""

from __future__ import annotations

import math

import pytest
import torch

from kdsweep.data.loaders import TensorLoader
from kdsweep.data.views import STRONG_OPS, _apply, cutout, draw_strong, strong_augment
from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.models import ModelOutput

INFO = StepInfo(epoch=0, step=0, epochs=240, steps_per_epoch=1)
CTX = BuildContext(num_train=8, num_classes=5, epochs=240, steps_per_epoch=1)


# ------------------------------------------------------------------ reference, from the code
def softmax(row, T=1.0):
    m = max(v / T for v in row)
    e = [math.exp(v / T - m) for v in row]
    return [v / sum(e) for v in e]


def zscore(row):
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))
    return [(v - mean) / (std + 1e-7) for v in row]


def kd(s, t, T, ls):
    """T^2 * mean_i sum_c p_t log(p_t / p_s) (the authors' kd_loss, reduce=True)."""
    tot = 0.0
    for a, b in zip(s, t, strict=True):
        if ls:
            a, b = zscore(a), zscore(b)
        ps, pt = softmax(a, T), softmax(b, T)
        tot += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    return T * T * tot / len(s)


def gram(P, transpose_first):
    n, c = len(P), len(P[0])
    if transpose_first:  # C x C: sum over samples
        return [[sum(P[i][a] * P[i][b] for i in range(n)) for b in range(c)] for a in range(c)]
    return [[sum(P[i][k] * P[j][k] for k in range(c)) for j in range(n)] for i in range(n)]


def corr(s, t, T, classes):
    ps, pt = [softmax(r, T) for r in s], [softmax(r, T) for r in t]
    gs, gt = gram(ps, classes), gram(pt, classes)
    total = sum((x - y) ** 2 for rs, rt in zip(gs, gt, strict=True)
                for x, y in zip(rs, rt, strict=True))
    return total / (len(s[0]) if classes else len(s))


def median(vals):
    v = sorted(vals)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def reference(sw, ss, tw, ts, y, T=4.0, ce_w=0.1, kd_w=0.9, ls=False):
    Ts = [T, 3.0, 5.0, 2.0, 6.0]
    pt = [softmax(r) for r in tw]
    conf = [max(r) for r in pt]
    mask = sum(c <= median(conf) for c in conf) / len(conf)
    cls = [sum(r[k] for r in pt) for k in range(len(pt[0]))]
    cmask = sum(c <= median(cls) for c in cls) / len(cls)
    ce = sum(-math.log(softmax(a)[k]) for a, k in zip(sw, y, strict=True)) / len(y)
    ce += sum(-math.log(softmax(a)[k]) for a, k in zip(ss, y, strict=True)) / len(y)
    kd_weak = sum(kd_w * kd(sw, tw, tau, ls) * mask for tau in Ts)
    kd_strong = kd_w * (kd(ss, ts, T, ls) + kd(ss, ts, 3.0, ls) + kd(ss, ts, 5.0, ls)
                        + kd(sw, tw, 2.0, ls) + kd(sw, tw, 6.0, ls))
    return {"ce": ce_w * ce, "kd": kd_weak + kd_strong,
            "cc": sum(kd_w * corr(sw, tw, tau, True) * cmask for tau in Ts),
            "bc": sum(kd_w * corr(sw, tw, tau, False) * mask for tau in Ts)}


def logits(seed, n=6, c=5, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * scale


def outputs(sw, ss, tw, ts):
    s = ModelOutput(sw, views={"strong": ModelOutput(ss)})
    t = ModelOutput(tw, views={"strong": ModelOutput(ts)})
    return s, t


@pytest.mark.parametrize("ls,T,kd_w", [(False, 4.0, 0.9), (True, 2.0, 9.0)], ids=["mlkd", "mlkd+ls"])
def test_mlkd_terms_and_gradients_equal_the_reference(ls, T, kd_w):
    sw, ss, tw, ts = (logits(i) for i in range(4))
    y = [0, 3, 1, 4, 2, 2]
    m = create_method({"name": "mlkd", "T": T, "kd_weight": kd_w, "logit_stand": ls})
    # float32 logits as the engine gives them; the reference in float64 from the same values
    sw32, ss32 = sw.float().requires_grad_(), ss.float().requires_grad_()
    s, t = outputs(sw32, ss32, tw.float(), ts.float())
    ref = reference(sw32.tolist(), ss32.tolist(), tw.float().tolist(), ts.float().tolist(), y,
                    T=T, kd_w=kd_w, ls=ls)
    terms = m(s, t, torch.tensor(y), INFO)
    g = torch.autograd.grad(sum(terms.values()), [sw32, ss32])
    terms = {k: v.detach() for k, v in terms.items()}
    assert set(terms) == {"ce", "kd", "cc", "bc"}
    for k, v in terms.items():
        assert v.dtype == torch.float32
        assert float(v) == pytest.approx(ref[k], rel=2e-5, abs=1e-6), k
    # gradients: central differences of the float64 reference at the same (float32) point
    base = [sw32.detach().double().tolist(), ss32.detach().double().tolist()]
    eps = 1e-4
    for which in (0, 1):
        for i, j in [(0, 0), (2, 3), (5, 1), (3, 4)]:
            f = []
            for sign in (1, -1):
                pt = [[r[:] for r in b] for b in base]
                pt[which][i][j] += sign * eps
                f.append(sum(reference(pt[0], pt[1], tw.float().tolist(), ts.float().tolist(), y,
                                       T=T, kd_w=kd_w, ls=ls).values()))
            assert float(g[which][i, j]) == pytest.approx((f[0] - f[1]) / (2 * eps), rel=1e-3,
                                                          abs=2e-5)


def test_the_mask_fractions_follow_the_median():
    from kdsweep.methods.mlkd import below_median
    assert float(below_median(torch.tensor([0.1, 0.4, 0.2, 0.9]))) == 0.5  # median 0.3
    assert float(below_median(torch.tensor([0.1, 0.4, 0.2]))) == pytest.approx(2 / 3)
    assert float(below_median(torch.tensor([0.5, 0.5, 0.5, 0.5]))) == 1.0


def test_mlkd_declares_the_strong_view_and_refuses_class_mismatch():
    m = create_method({"name": "mlkd"})
    assert m.views == ("strong",) and (m.T, m.ce_weight, m.kd_weight) == (4.0, 0.1, 0.9)
    with pytest.raises(ConfigError, match="student has 5 logits, the teacher 7"):
        m.build(ModelOutput(torch.zeros(2, 5)), ModelOutput(torch.zeros(2, 7)), CTX)
    with pytest.raises(RuntimeError, match="strong view"):
        m(ModelOutput(torch.zeros(2, 5)), ModelOutput(torch.zeros(2, 5)), torch.tensor([0, 1]),
          INFO)
    multi = create_method({"name": "multi", "methods": {"a": {"name": "mlkd"},
                                                          "b": {"name": "at", "ce_weight": 0}}})
    assert multi.views == ("strong",)


# ---------------------------------------------------------------------------- the strong view
def loader(seed=3, world=1, rank=0, n=40, bs=16):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g)
    ld = TensorLoader(imgs, torch.arange(n) % 4, batch_size=bs, train=True, mean=[0.5] * 3,
                      std=[0.25] * 3, augment="crop_flip", seed=seed, padding=2)
    ld.shard(rank, world)
    return ld


def batches(ld, epoch, with_views):
    ld.set_epoch(epoch)
    out = []
    for x, y, idx in ld:
        out.append((x, y, idx, ld.view("strong") if with_views else None))
    return out


def test_the_strong_view_is_seeded_and_leaves_the_batch_stream_unchanged():
    a, b = batches(loader(), 2, True), batches(loader(), 2, False)
    for (xa, ya, ia, va), (xb, yb, ib, _) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
        assert va.shape == xa.shape and not torch.equal(va, xa)
    again = batches(loader(), 2, True)
    assert all(torch.equal(p[3], q[3]) for p, q in zip(a, again, strict=True))
    other_epoch, other_seed = batches(loader(), 3, True), batches(loader(seed=4), 2, True)
    assert not torch.equal(a[0][3], other_epoch[0][3])
    assert not torch.equal(a[0][3], other_seed[0][3])


def test_a_resumed_epoch_and_a_late_first_request_give_the_same_views():
    full = batches(loader(), 1, True)
    ld = loader()
    ld.set_epoch(0)
    for _ in ld:  # an epoch with no views, then resume at epoch 1
        pass
    ld.set_epoch(1)
    late = []
    for i, _ in enumerate(ld):
        if i >= 1:  # the first view asked for at the second batch
            late.append(ld.view("strong"))
    assert all(torch.equal(v, f[3]) for v, f in zip(late, full[1:], strict=True))


def test_each_process_gets_its_part_of_the_single_process_view():
    whole = batches(loader(), 0, True)
    parts = [batches(loader(world=2, rank=r), 0, True) for r in range(2)]
    for i, (x, _, _, v) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), x)
        assert torch.equal(torch.cat([parts[0][i][3], parts[1][i][3]]), v)


@pytest.mark.parametrize("name,lo,hi", STRONG_OPS, ids=[op[0] for op in STRONG_OPS])
def test_every_operation_keeps_shape_and_dtype(name, lo, hi):
    g = torch.Generator().manual_seed(1)
    img = torch.randint(60, 120, (3, 32, 32), dtype=torch.uint8, generator=g)  # low contrast
    for v in (lo, (lo + hi) / 2, hi):
        out = _apply(img, name, v)
        assert out.shape == img.shape and out.dtype == torch.uint8
    if name != "identity":
        assert any(not torch.equal(_apply(img, name, v), img) for v in (lo, hi))


def test_cutout_fills_a_square_moved_into_the_image_with_grey():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    out = cutout(img, 4.0, 1.0, 1.0)  # corner (-1, -1) moved to (0, 0); corners inclusive
    assert out[:, :5, :5].tolist() == [[[125] * 5] * 5, [[123] * 5] * 5, [[114] * 5] * 5]
    assert int(out[:, 5:, :].sum()) == 0 and int(out[:, :, 5:].sum()) == 0
    assert torch.equal(cutout(img, 0.0, 4.0, 4.0), img)


def test_draws_cover_the_operations_and_ranges():
    p = draw_strong(torch.Generator().manual_seed(0), 4000)
    assert set(p["ops"].unique().tolist()) == set(range(len(STRONG_OPS)))
    for k, (_, lo, hi) in enumerate(STRONG_OPS):
        mags = p["mags"][p["ops"] == k]
        assert float(mags.min()) >= lo and float(mags.max()) <= hi
    assert float(p["cut"][:, 0].max()) < 0.5
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert strong_augment(x, {k: v[:5] for k, v in p.items()}).shape == x.shape
