"""CRD, SemCKD and ModReduce: losses against the papers' formulas written here with plain torch ops,
training steps on the benchmark's cross-family pairs, gradients, memory bank and online schedules."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.errors import ConfigError
from kdsweep.methods import BuildContext, StepInfo, create_method
from kdsweep.methods.modreduce import online_weight, sigmoid_rampup
from kdsweep.models import FeatureTap, ModelOutput, create_model, list_models

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def ctx(num_train: int, labels: torch.Tensor | None, *, epochs: int = 1) -> BuildContext:
    return BuildContext(num_train=num_train, num_classes=10, epochs=epochs, steps_per_epoch=1,
                        train_labels=labels)


def built(cfg: dict, s: ModelOutput, t: ModelOutput, context: BuildContext):
    method = create_method(cfg)
    method.build(s, t, context)
    return method


def kl_t(z_s: torch.Tensor, z_t: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean_b sum_c p_t (log p_t - log p_s), written out."""
    p_t = torch.softmax(z_t / T, 1)
    return (p_t * (torch.log(p_t) - torch.log_softmax(z_s / T, 1))).sum(1).mean() * T * T


# ------------------------------------------------------------------------------------------------
# CRD
# ------------------------------------------------------------------------------------------------

def crd_setup(mode: str = "exact", nce_k: int = 5, n: int = 20, n_cls: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_cls
    idx = torch.tensor([3, 7, 12, 18])
    s = ModelOutput(torch.randn(4, 10, generator=g), pooled=torch.randn(4, 6, generator=g))
    t = ModelOutput(torch.randn(4, 10, generator=g), pooled=torch.randn(4, 5, generator=g))
    torch.manual_seed(seed)
    method = built({"name": "crd", "feat_dim": 3, "nce_k": nce_k, "mode": mode}, s, t,
                   ctx(n, labels))
    return method, s, t, labels, idx


def embed(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    y = x @ linear.weight.detach().t() + linear.bias.detach()
    return y / y.pow(2).sum(1, keepdim=True).sqrt()


def nce_by_hand(anchor: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor, T: float,
                n: int, z: float | None) -> tuple[torch.Tensor, float]:
    """CRD Eq. 18 with P_n = 1/N, K negatives, Z = N * mean(exp(.)) of the first batch."""
    b, k1 = contrast.shape
    k = k1 - 1
    e = torch.empty(b, k1)
    for i in range(b):
        for j in range(k1):
            e[i, j] = torch.exp(torch.dot(memory[contrast[i, j]], anchor[i]) / T)
    if z is None:
        z = float(e.mean()) * n
    p = e / z
    mpn = k / n
    total = 0.0
    for i in range(b):
        total = total + torch.log(p[i, 0] / (p[i, 0] + mpn + 1e-7))
        for j in range(1, k1):
            total = total + torch.log(mpn / (p[i, j] + mpn + 1e-7))
    return -total / b, z


def test_crd_memory_nce_matches_eq18_on_seeded_negatives():
    method, s, t, labels, idx = crd_setup()
    obj = method.objective
    y = labels[idx]
    mem_s, mem_t = obj.memory_s.clone(), obj.memory_t.clone()
    torch.manual_seed(11)
    contrast = obj.sample_contrast(idx)
    torch.manual_seed(11)  # forward draws the same negatives
    terms = method(s, t, y, StepInfo(0, 0, 1, 1, indices=idx))
    e_s, e_t = embed(s.pooled, obj.embed_s.linear), embed(t.pooled, obj.embed_t.linear)
    loss_s, z_s = nce_by_hand(e_s, mem_t, contrast, 0.07, 20, None)  # student vs teacher memory
    loss_t, z_t = nce_by_hand(e_t, mem_s, contrast, 0.07, 20, None)  # teacher vs student memory
    assert set(terms) == {"ce", "crd"}
    assert terms["crd"].item() == pytest.approx(0.8 * float(loss_s + loss_t), rel=1e-4)
    assert terms["ce"].item() == pytest.approx(float(F.cross_entropy(s.logits, y)), rel=1e-5)
    assert float(obj.z_s) == pytest.approx(z_s, rel=1e-5)
    assert float(obj.z_t) == pytest.approx(z_t, rel=1e-5)
    # exact mode: positive = the sample itself; K distinct negatives, all of other classes
    assert torch.equal(contrast[:, 0], idx)
    for row, lab in zip(contrast, y, strict=True):
        neg = row[1:]
        assert len(set(neg.tolist())) == 5
        assert (labels[neg] != lab).all()
    # Z stays fixed from the first batch on; the second step uses the updated memory
    mem_s, mem_t = obj.memory_s.clone(), obj.memory_t.clone()
    torch.manual_seed(12)
    contrast = obj.sample_contrast(idx)
    torch.manual_seed(12)
    terms = method(s, t, y, StepInfo(0, 1, 1, 1, indices=idx))
    loss_s, _ = nce_by_hand(e_s, mem_t, contrast, 0.07, 20, z_s)
    loss_t, _ = nce_by_hand(e_t, mem_s, contrast, 0.07, 20, z_t)
    assert terms["crd"].item() == pytest.approx(0.8 * float(loss_s + loss_t), rel=1e-4)


def test_crd_memory_bank_updates_with_momentum_at_batch_indices():
    method, s, t, labels, idx = crd_setup()
    obj = method.objective
    before_s, before_t = obj.memory_s.clone(), obj.memory_t.clone()
    method(s, t, labels[idx], StepInfo(0, 0, 1, 1, indices=idx))
    e_s, e_t = embed(s.pooled, obj.embed_s.linear), embed(t.pooled, obj.embed_t.linear)
    for before, after, e in ((before_s, obj.memory_s, e_s), (before_t, obj.memory_t, e_t)):
        expected = 0.5 * before[idx] + 0.5 * e
        expected = expected / expected.norm(dim=1, keepdim=True)
        assert torch.allclose(after[idx], expected, atol=1e-6)
        others = torch.ones(20, dtype=torch.bool)
        others[idx] = False
        assert torch.equal(after[others], before[others])
    state = method.state_dict()  # the banks and Z travel with the checkpoint
    assert {"objective.memory_s", "objective.memory_t", "objective.z_s", "objective.z_t"} <= set(state)


def test_crd_relax_mode_draws_a_same_class_positive():
    method, s, t, labels, idx = crd_setup(mode="relax")
    torch.manual_seed(3)
    contrast = method.objective.sample_contrast(idx)
    assert (labels[contrast[:, 0]] == labels[idx]).all()
    assert (labels[contrast[:, 1:]] != labels[idx][:, None]).all()


def test_crd_sampling_is_reproducible_from_the_torch_seed():
    method, *_ , idx = crd_setup()
    torch.manual_seed(5)
    a = method.objective.sample_contrast(idx)
    torch.manual_seed(5)
    b = method.objective.sample_contrast(idx)
    assert torch.equal(a, b)


def test_crd_clamps_nce_k_to_the_other_classes_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="kdsweep.methods.crd"):
        method, s, t, labels, idx = crd_setup(nce_k=16384, n=23, n_cls=4)
    # classes 0..2 hold 6 samples, class 3 holds 5: every class has at least 23 - 6 = 17 negatives
    assert method.objective.nce_k == 17
    assert "nce_k=16384" in caplog.text and "17" in caplog.text
    torch.manual_seed(0)
    contrast = method.objective.sample_contrast(idx)
    assert contrast.shape == (4, 18)
    for row, lab in zip(contrast, labels[idx], strict=True):
        assert len(set(row[1:].tolist())) == 17 and (labels[row[1:]] != lab).all()


def test_crd_without_labels_draws_negatives_from_all_other_samples():
    g = torch.Generator().manual_seed(0)
    s = ModelOutput(torch.randn(2, 10, generator=g), pooled=torch.randn(2, 6, generator=g))
    t = ModelOutput(torch.randn(2, 10, generator=g), pooled=torch.randn(2, 5, generator=g))
    method = built({"name": "crd", "feat_dim": 3}, s, t, ctx(9, None))
    assert method.objective.nce_k == 8
    idx = torch.tensor([0, 4])
    contrast = method.objective.sample_contrast(idx)
    for row in contrast:
        assert sorted(row[1:].tolist()) == [i for i in range(9) if i != row[0]]
    with pytest.raises(ConfigError, match="relax"):
        built({"name": "crd", "mode": "relax"}, s, t, ctx(9, None))


def test_crd_in_batch_is_symmetric_infonce_by_hand():
    g = torch.Generator().manual_seed(1)
    s = ModelOutput(torch.randn(5, 10, generator=g), pooled=torch.randn(5, 6, generator=g))
    t = ModelOutput(torch.randn(5, 10, generator=g), pooled=torch.randn(5, 4, generator=g))
    y = torch.tensor([0, 1, 0, 2, 3])  # samples 0 and 2 share a class: not each other's negative
    method = built({"name": "crd", "mode": "in_batch", "feat_dim": 3, "kd_weight": 1.0}, s, t,
                   ctx(1_000_000, None))
    assert not any("memory" in k for k in method.state_dict())
    terms = method(s, t, y, INFO)  # no indices needed
    obj = method.objective
    e_s, e_t = embed(s.pooled, obj.embed_s.linear), embed(t.pooled, obj.embed_t.linear)
    total = 0.0
    for anchor, other in ((e_s, e_t), (e_t, e_s)):
        for i in range(5):
            cand = [j for j in range(5) if j == i or y[j] != y[i]]
            logits = torch.stack([torch.dot(anchor[i], other[j]) / 0.07 for j in cand])
            total += float(-(logits[cand.index(i)] - torch.logsumexp(logits, 0))) / 5
    assert terms["crd"].item() == pytest.approx(0.8 * total, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(float(kl_t(s.logits, t.logits, 4.0)), rel=1e-5)


def test_crd_refuses_bad_options_and_missing_indices():
    with pytest.raises(ConfigError, match="method.mode"):
        create_method({"name": "crd", "mode": "approx"})
    with pytest.raises(ConfigError, match="method.nce_k"):
        create_method({"name": "crd", "nce_k": 0})
    with pytest.raises(ConfigError, match="method.nce_m"):
        create_method({"name": "crd", "nce_m": 1.5})
    method, s, t, labels, idx = crd_setup()
    with pytest.raises(RuntimeError, match="in_batch"):
        method(s, t, labels[idx], INFO)


# ------------------------------------------------------------------------------------------------
# SemCKD
# ------------------------------------------------------------------------------------------------

def regress_by_hand(x: torch.Tensor, seq: torch.nn.Sequential) -> torch.Tensor:
    """1x1 conv - BN(batch stats) - ReLU - 3x3 conv - BN - ReLU - 1x1 conv with the given weights."""
    c1, bn1, _, c2, bn2, _, c3 = seq
    x = F.conv2d(x, c1.weight)
    x = F.relu(F.batch_norm(x, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps))
    x = F.conv2d(x, c2.weight, padding=1)
    x = F.relu(F.batch_norm(x, None, None, bn2.weight, bn2.bias, training=True, eps=bn2.eps))
    return F.conv2d(x, c3.weight)


def semckd_by_hand(fs: list[torch.Tensor], ft: list[torch.Tensor], obj, width: int) -> torch.Tensor:
    """SemCKD: alpha_bij = softmax_j(q_i . k_j) from Gram rows; sum alpha * MSE / (B * S)."""
    b = fs[0].shape[0]

    def proj(f, mlp):
        flat = f.reshape(b, -1)
        gram = torch.zeros(b, width)
        gram[:, :b] = flat @ flat.t()
        h = torch.relu(gram @ mlp.linear1.weight.t() + mlp.linear1.bias)
        out = h @ mlp.linear2.weight.t() + mlp.linear2.bias
        return out / out.norm(dim=1, keepdim=True)

    q = [proj(f, m) for f, m in zip(fs, obj.query, strict=True)]
    k = [proj(f, m) for f, m in zip(ft, obj.key, strict=True)]
    total = torch.zeros(())
    for i, f_s in enumerate(fs):
        energy = torch.stack([(q[i] * k[j]).sum(1) for j in range(len(ft))], 1)  # B x T
        alpha = torch.exp(energy) / torch.exp(energy).sum(1, keepdim=True)
        for j, f_t in enumerate(ft):
            if f_s.shape[2] > f_t.shape[2]:
                value = regress_by_hand(F.adaptive_avg_pool2d(f_s, f_t.shape[2:]), obj.regressors[i][j])
                target = f_t
            else:
                value = regress_by_hand(f_s, obj.regressors[i][j])
                target = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
            mse = ((value - target) ** 2).reshape(b, -1).mean(1)
            total = total + (alpha[:, j] * mse).sum()
    return total / (b * len(fs))


@pytest.mark.parametrize("width", [4, 6])  # 6: a last batch smaller than the training batch
def test_semckd_matches_the_formula(width):
    g = torch.Generator().manual_seed(0)
    b = 4
    shapes_s = [(3, 8, 8), (5, 4, 4)]
    shapes_t = [(4, 4, 4), (6, 8, 8), (2, 2, 2)]
    s = ModelOutput(torch.randn(b, 10, generator=g),
                    feats=[torch.randn(b, 2, 8, 8, generator=g)]
                    + [torch.randn(b, *sh, generator=g) for sh in shapes_s])
    t = ModelOutput(torch.randn(b, 10, generator=g),
                    feats=[torch.randn(b, 2, 8, 8, generator=g)]
                    + [torch.randn(b, *sh, generator=g) for sh in shapes_t])
    y = torch.tensor([1, 2, 3, 4])
    torch.manual_seed(0)
    method = built({"name": "semckd", "batch_size": width}, s, t, ctx(100, None))
    terms = method(s, t, y, INFO)
    obj = method.objective
    assert len(obj.query) == 2 and len(obj.key) == 3  # f0 (the stem) is not distilled
    with torch.no_grad():
        expected = semckd_by_hand(s.feats[1:], t.feats[1:], obj, width)
    assert terms["semckd"].item() == pytest.approx(400 * float(expected), rel=1e-4)
    assert terms["ce"].item() == pytest.approx(float(F.cross_entropy(s.logits, y)), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(float(kl_t(s.logits, t.logits, 4.0)), rel=1e-5)


def test_semckd_refuses_a_batch_wider_than_its_attention():
    s = ModelOutput(torch.randn(4, 10), feats=[torch.randn(4, 2, 4, 4)] * 2)
    t = ModelOutput(torch.randn(4, 10), feats=[torch.randn(4, 2, 4, 4)] * 2)
    method = built({"name": "semckd", "batch_size": 2}, s, t, ctx(100, None))
    with pytest.raises(ConfigError, match="method.batch_size"):
        method(s, t, torch.zeros(4, dtype=torch.long), INFO)


def test_semckd_needs_the_training_batch_size():
    s = ModelOutput(torch.randn(4, 10), feats=[torch.randn(4, 2, 4, 4)] * 2)
    t = ModelOutput(torch.randn(4, 10), feats=[torch.randn(4, 2, 4, 4)] * 2)
    for name in ("semckd",):
        with pytest.raises(ConfigError, match="method.batch_size is not set"):
            built({"name": name}, ModelOutput(s.logits, s.feats, pooled=torch.randn(4, 3)),
                  ModelOutput(t.logits, t.feats, pooled=torch.randn(4, 3)), ctx(100, None))


def test_yaml_defaults_compose(compose):
    from kdsweep.methods import create_method as make

    crd = make(compose(["method=crd"]).method)
    assert (crd.feat_weight, crd.feat_dim, crd.nce_k, crd.nce_t, crd.nce_m, crd.mode) == (
        0.8, 128, 16384, 0.07, 0.5, "exact")
    assert (crd.ce_weight, crd.kd_weight) == (1.0, 0.0)
    sem = make(compose(["method=semckd", "schedule.batch_size=32"]).method)
    # null: the attention width is the training batch size, given to build() by the engine
    assert (sem.feat_weight, sem.ce_weight, sem.kd_weight, sem.T, sem.batch_size) == (400, 1, 1, 4, None)
    mr = make(compose(["method=modreduce"]).method)
    assert (mr.online, mr.crd_weight, mr.semckd_weight, mr.peer_scale) == ("WAvg", 0.8, 400, [10, 1, 100])
    for online in ("PCL", "ONE", "FC", "WAvg"):
        assert make(compose(["method=modreduce", f"method.online={online}"]).method).online == online


# ------------------------------------------------------------------------------------------------
# ModReduce
# ------------------------------------------------------------------------------------------------

def test_online_weight_follows_the_seed_schedule():
    # the seed: w_ol = 0.01, multiplied by (0.7/0.01)^(1/24) at every epoch divisible by 10
    growth = (0.7 / 0.01) ** (1 / int(240 / 10))
    w = 0.01
    for epoch in range(240):
        if epoch % 10 == 0:
            w *= growth
        assert online_weight(epoch, 240, init=0.01, final=0.7, steps=24, start=0.0) == pytest.approx(w)
    # --cutoff_epoch 220: offline only before, w_ol 0.7 from epoch 220 on
    assert online_weight(219, 240, init=0.01, final=0.7, steps=24, start=220 / 240) == 0.0
    assert online_weight(220, 240, init=0.01, final=0.7, steps=24, start=220 / 240) == 0.7
    # PCL's consistency ramp (exp(-5 (1 - e/80)^2), 1 after 80 epochs)
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 80) == 1.0


def test_modreduce_refuses_unknown_online_method():
    with pytest.raises(ConfigError, match="PCL, ONE, FC, WAvg"):
        create_method({"name": "modreduce", "online": "mutual"})
    with pytest.raises(ConfigError, match="peer_scale"):
        create_method({"name": "modreduce", "peer_scale": [1.0, 2.0]})


# ------------------------------------------------------------------------------------------------
# Training steps on the benchmark's pairs
# ------------------------------------------------------------------------------------------------

PAIRS = [("wrn_40_2", "wrn_16_2"), ("resnet32x4", "ShuffleV2"), ("vgg13", "MobileNetV2")]
METHODS = {
    "crd": {"name": "crd"},
    "crd_in_batch": {"name": "crd", "mode": "in_batch"},
    "semckd": {"name": "semckd", "batch_size": 8},
}
_TEACHERS: dict[str, tuple] = {}


def teacher_output(arch: str, x: torch.Tensor):
    """The teacher's output on the fixed batch, with its graph (its weights require grad)."""
    if arch not in _TEACHERS:
        torch.manual_seed(123)
        model = create_model(arch, num_classes=10).eval()
        _TEACHERS[arch] = (model, FeatureTap(model, arch)(x))
    return _TEACHERS[arch]


@pytest.mark.parametrize("method_name", list(METHODS))
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_training_steps_reduce_the_loss(pair, method_name):
    t_arch, s_arch = pair
    missing = [a for a in pair if a not in list_models()]
    if missing:
        pytest.skip(f"model(s) {missing} not registered yet")
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    teacher, t_out = teacher_output(t_arch, x)
    # a bank of 64 samples (the batch is samples 0..7), so most negatives are never-updated rows
    student = create_model(s_arch, num_classes=10)
    tap = FeatureTap(student, s_arch)
    method = create_method(METHODS[method_name])
    method.build(tap.dry_run(), t_out, ctx(64, torch.arange(64) % 10, epochs=4))
    own = [p for p in method.parameters() if p.requires_grad]
    assert own and method.extra_parameters() == sum(p.numel() for p in own)
    opt = torch.optim.Adam(list(student.parameters()) + own, lr=1e-3)
    losses = []
    for step in range(4):
        info = StepInfo(epoch=0, step=step, epochs=4, steps_per_epoch=1, indices=torch.arange(8))
        terms = method(tap(x), t_out, y, info)
        loss = sum(terms.values())
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None for p in own), "a method parameter got no gradient"
            assert sum(float(p.grad.abs().sum()) for p in own) > 0
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in teacher.parameters()), "gradient reached the teacher"
    assert losses[-1] < losses[0], losses
