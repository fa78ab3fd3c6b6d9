"""The model zoo: published parameter counts, forward/backward, the feature contract, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.errors import ConfigError
from kdsweep.models import (
    FeatureTap,
    bn_margin,
    count_macs,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    resolve_module,
)

# Trainable parameters for 100 classes. Exact integers where kd-benchmarks.md gives them
# (computed from RepDistiller's layer definitions), else (published millions, source).
EXACT_C100 = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "wrn_28_4": 5_872_180,
}
EXACT_C10 = {
    "resnet8": 78_042,
    "resnet20": 272_474,
    "resnet56": 855_770,
    "resnet110": 1_730_714,
    "resnet8x4": 1_210_410,
    "resnet32x4": 7_410_730,
    "wrn_16_2": 691_674,
    "wrn_40_1": 563_930,
    "wrn_40_2": 2_243_546,
    "wrn_28_4": 5_849_050,
}
# Published figures in millions (100 classes unless the name says otherwise), 0.5% tolerance.
PUBLISHED_M = {
    "resnet8": 0.08,
    "resnet14": 0.18,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet44": 0.67,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_1": 0.18,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "wrn_28_4": 5.87,
}

ALL = list_models()
CIFAR = list_models(input_size=32)
BIG = list_models(input_size=224)
# Models too slow for a 2-core CPU test budget when run through backward.
SLOW = {"ResNet152", "resnet152"}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = 32 if get_spec(name).input_size == 32 else 64
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _classifier_in(model: nn.Module, name: str) -> int:
    head = resolve_module(model, get_spec(name).features.pooled)
    if isinstance(head, nn.Sequential):
        head = [m for m in head if isinstance(m, nn.Linear)][0]
    return head.in_features


@pytest.mark.parametrize("name", sorted(EXACT_C100))
def test_exact_parameter_count_c100(name):
    assert count_parameters(create_model(name, 100)) == EXACT_C100[name]


@pytest.mark.parametrize("name", sorted(EXACT_C10))
def test_exact_parameter_count_c10(name):
    assert count_parameters(create_model(name, 10)) == EXACT_C10[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_published_parameter_count(name):
    n = count_parameters(create_model(name, 100))
    published = PUBLISHED_M[name] * 1e6
    # published figures are rounded to 2 decimals of a million
    assert abs(n - published) <= max(0.005 * published, 5_000), (n, published)


@pytest.mark.parametrize("name", _params(ALL))
def test_model(name):
    """One model: plain forward, the feature contract, pre-activation semantics, backward."""
    torch.manual_seed(0)
    model = create_model(name, 10)
    x = _input(name)
    _check_eval_semantics(model, name, x)
    _check_train_contract(model, name, x)


def _check_eval_semantics(model: nn.Module, name: str, x: torch.Tensor) -> None:
    """Hooks change nothing, and pre-activation features are what their family says."""
    model.eval()
    with torch.no_grad():
        plain = model(x)
        with FeatureTap(model, name) as tap:
            out = tap(x)
            bns = tap.bn_before_relu()
        after = model(x)
    assert torch.equal(plain, out.logits) and torch.equal(plain, after)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    family = get_spec(name).family
    assert torch.equal(out.preact_feats[0], out.feats[0])
    pairs = zip(out.feats[1:], out.preact_feats[1:], strict=True)
    for i, (f, p) in enumerate(pairs):
        if family == "wrn":  # pre-activation = the next BN applied to the stage output
            assert torch.allclose(bns[i](f), p, atol=1e-5)
        elif family in LINEAR_STAGE_FAMILIES:  # stage output has no activation after it
            assert p is f
        else:  # post-activation: stage output = activation(pre-activation)
            act = SILU_FAMILIES.get(family, F.relu)
            assert torch.allclose(act(p), f, atol=1e-6), family
            assert (p < 0).any(), "pre-activation should have negative values"


def _check_train_contract(model: nn.Module, name: str, x: torch.Tensor) -> None:
    model.train()
    tap = FeatureTap(model, name)
    out = tap(x)
    assert out.logits.shape == (2, 10)
    feats, pre = out.feats, out.preact_feats
    n_stages = len(get_spec(name).features.stages)
    assert len(feats) == len(pre) == len(tap.stage_channels) == n_stages + 1
    for f, p, c in zip(feats, pre, tap.stage_channels, strict=True):
        assert f.dim() == 4 and f.shape[0] == 2 and f.shape[1] == c
        assert p.shape == f.shape
    assert out.pooled.shape == (2, _classifier_in(model, name)) == (2, tap.pooled_dim)
    bns = tap.bn_before_relu()
    assert len(bns) == len(feats) - 1
    for bn, p in zip(bns, pre[1:], strict=True):
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == p.shape[1]
        assert bn_margin(bn).shape == (p.shape[1],)
    # features keep autograd: a loss on logits + every feature reaches every parameter
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1]))
    loss = loss + sum(f.mean() for f in feats[1:]) + sum(p.mean() for p in pre[1:])
    loss = loss + out.pooled.mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    tap.remove()


LINEAR_STAGE_FAMILIES = {"mobilenetv2", "efficientnet", "tv_mobilenet_v2", "tv_efficientnet"}
SILU_FAMILIES: dict = {}


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
def test_features_get_gradient_without_logits(name):
    model = create_model(name, 10)
    tap = FeatureTap(model, name)
    out = tap(_input(name))
    out.feats[2].pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in ["resnet8x4", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV2", "resnet18"]
        if n in ALL
    ],
)
def test_checkpoint_round_trip(name, tmp_path):
    model = create_model(name, 7)
    model.train()
    x = _input(name)
    model(x)  # move BN running statistics away from their defaults
    model.eval()
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    clone = create_model(name, 7)
    clone.load_state_dict(torch.load(path, weights_only=True))
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def test_unknown_model_is_one_line_config_error():
    with pytest.raises(ConfigError) as err:
        create_model("resnet9000", 10)
    msg = str(err.value)
    assert "\n" not in msg and "unknown model 'resnet9000'" in msg and "resnet20" in msg


def test_bad_num_classes_and_pretrained_cifar():
    with pytest.raises(ConfigError):
        create_model("resnet20", 0)
    with pytest.raises(ConfigError, match="no published pretrained"):
        create_model("resnet20", 10, pretrained=True)


def test_list_models_sorted_and_filtered():
    assert ALL == sorted(ALL)
    assert set(CIFAR) | set(BIG) == set(ALL)
    for name in ["resnet20", "resnet32x4", "wrn_28_4", "wrn_16_4", "wrn_28_2"]:
        assert name in CIFAR
    assert get_spec("wrn_40_2").input_size == 32 and get_spec("wrn_40_2").default_lr is None


def test_count_macs_restores_modes_and_is_known_value():
    model = create_model("resnet56", 100)
    model.train()
    model.layer1.eval()
    macs = count_macs(model, 32)
    assert model.training and not model.layer1.training and model.layer2.training
    assert macs == 125_753_600  # the commonly quoted 125.75M for resnet56
    assert count_macs(create_model("resnet20", 10), 32, device="cpu") == 40_813_184


def test_tap_records_nothing_outside_call():
    model = create_model("resnet8", 10)
    tap = FeatureTap(model, "resnet8")
    model(_input("resnet8"))
    assert tap._store == {}
    assert tap.stage_channels == [16, 16, 32, 64]
    assert model.training  # the dry run restored train mode
    tap.remove()
