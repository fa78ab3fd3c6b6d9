"""The model zoo: published parameter counts, forward/backward, the feature contract, checkpoints.

Model names (uniqueness, renamed names, discovery of model files): tests/test_model_names.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.engine import load_checkpoint, load_model_weights, save_checkpoint
from kdsweep.errors import CheckpointError, ConfigError
from kdsweep.models import (
    FeatureTap,
    bn_margin,
    count_macs,
    count_parameters,
    create_model,
    get_spec,
    list_models,
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
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet50": 23_705_252,
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
    "vgg8": 3_918_858,
    "vgg13": 9_416_010,
    "MobileNetV2": 697_546,
    "ShuffleV1": 862_768,
    "ShuffleV2": 1_263_278,
}
# torchvision's documented parameter counts (1000 classes).
EXACT_IMAGENET = {
    "tv_resnet18": 11_689_512,
    "tv_resnet34": 21_797_672,
    "tv_resnet50": 25_557_032,
    "tv_resnet152": 60_192_808,
    "tv_shufflenet_v2_x0_5": 1_366_792,
    "tv_shufflenet_v2_x1_0": 2_278_604,
    "tv_shufflenet_v2_x1_5": 3_503_624,
    "tv_shufflenet_v2_x2_0": 7_393_996,
    "tv_mobilenet_v2": 3_504_872,
    "tv_efficientnet_b0": 5_288_548,
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
    "vgg8": 3.97,
    "vgg13": 9.46,
    "MobileNetV2": 0.81,
    "ShuffleV1": 0.95,
    "ShuffleV2": 1.36,
    "ResNet50": 23.71,
}
# Commonly published CIFAR-10 figures (kuangliu/pytorch-cifar-style ResNets; DenseNet paper).
PUBLISHED_C10_M = {
    "ResNet18": 11.17,
    "ResNet34": 21.28,
    "ResNet50": 23.52,
    "ResNet152": 58.16,
    "densenet40": 1.0,
}
# No published figure exists for these layouts: the counts measured when they were written
# (100 classes), kept as regression values. See docs/models.md.
MEASURED_C100 = {
    "vgg11": 9_277_284,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "wrn_16_4": 2_772_020,
    "wrn_28_2": 1_479_220,
    "ResNet18": 11_220_132,
    "ResNet34": 21_328_292,
    "ResNet152": 58_341_028,
    "ResNeXt29_2x64d": 9_221_028,
    "ResNeXt29_32x4d": 4_866_468,
    "ResNeXt29_32x8d": 19_160_484,
    "densenet40": 1_060_132,
    "EfficientNetB0": 3_627_488,
    "ShuffleV2_0_5": 443_716,
    "ShuffleV2_1_5": 2_580_548,
    "ShuffleV2_2_0": 5_521_860,
}

ALL = list_models()
CIFAR = list_models(input_size=32)
BIG = list_models(input_size=224)


@pytest.fixture(autouse=True, scope="module")
def _flush_denormals():
    """Untrained deep nets in eval mode produce denormal floats, which are very slow on CPU."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


# The per-model tests run at small (legal) inputs to stay fast on a 2-core CPU: 16 px for
# CIFAR models, 32 px for 224-px models (every last stage is still >= 1x1). The shapes at the
# native 32 px are checked against the published table in test_reference_feature_shapes.


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = 16 if get_spec(name).input_size == 32 else 32
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _classifier_in(model: nn.Module) -> int:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].in_features


@pytest.mark.parametrize("name", sorted(EXACT_C100))
def test_exact_parameter_count_c100(name):
    assert count_parameters(create_model(name, 100)) == EXACT_C100[name]


@pytest.mark.parametrize("name", sorted(EXACT_C10))
def test_exact_parameter_count_c10(name):
    assert count_parameters(create_model(name, 10)) == EXACT_C10[name]


def _close_to_published(n: int, millions: float) -> bool:
    """Within 0.5%, or within the rounding of the published figure (e.g. 1.0M is +-0.05M)."""
    decimals = len(repr(millions).split(".")[1])
    return abs(n - millions * 1e6) <= max(0.005 * millions * 1e6, 0.5 * 10 ** (6 - decimals))


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_published_parameter_count(name):
    n = count_parameters(create_model(name, 100))
    assert _close_to_published(n, PUBLISHED_M[name]), (n, PUBLISHED_M[name])


@pytest.mark.parametrize("name", sorted(PUBLISHED_C10_M))
def test_published_parameter_count_c10(name):
    n = count_parameters(create_model(name, 10))
    assert _close_to_published(n, PUBLISHED_C10_M[name]), (n, PUBLISHED_C10_M[name])


@pytest.mark.parametrize("name", sorted(EXACT_IMAGENET))
def test_torchvision_parameter_count(name):
    assert count_parameters(create_model(name, 1000)) == EXACT_IMAGENET[name]


@pytest.mark.parametrize("name", sorted(MEASURED_C100))
def test_measured_parameter_count(name):
    assert count_parameters(create_model(name, 100)) == MEASURED_C100[name]


def test_every_model_has_a_count_check():
    """Every core model (an extension checks its own models' counts in its tests)."""
    core = {n for n in ALL if get_spec(n).constructor.__module__.startswith("kdsweep.models.")}
    checked = set(EXACT_C100) | set(PUBLISHED_C10_M) | set(EXACT_IMAGENET) | set(MEASURED_C100)
    assert core <= checked, sorted(core - checked)


@pytest.mark.parametrize("name", ALL)
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
    assert torch.equal(plain, out.logits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    family = get_spec(name).family
    assert torch.equal(out.preact_feats[0], out.feats[0])
    pairs = zip(out.feats[1:], out.preact_feats[1:], strict=True)
    for i, (f, p) in enumerate(pairs):
        if family in PREACT_BN_FAMILIES:  # pre-activation = the next BN applied to the output
            assert torch.allclose(bns[i](f), p, atol=1e-5)
        elif family in LINEAR_STAGE_FAMILIES:  # stage output has no activation after it
            assert p is f
        else:  # post-activation: stage output = activation(pre-activation)
            assert torch.allclose(F.relu(p), f, atol=1e-6), family
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
    assert out.pooled.shape == (2, _classifier_in(model)) == (2, tap.pooled_dim)
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
PREACT_BN_FAMILIES = {"wrn", "densenet"}  # pre-activation blocks: preact = next BN(stage)


# C x H x W of f0..fn for a 32-px input, from kd-benchmarks.md (RepDistiller's models).
REFERENCE_SHAPES = {
    "resnet8": [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)],
    "resnet8x4": [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)],
    "wrn_40_2": [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)],
    "vgg8": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)],
    "MobileNetV2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)],
    "ShuffleV1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)],
    "ShuffleV2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)],
    "ResNet50": [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)],
}
REFERENCE_POOLED = {
    "resnet8": 64,
    "resnet8x4": 256,
    "wrn_40_2": 128,
    "vgg8": 512,
    "MobileNetV2": 1280,
    "ShuffleV1": 960,
    "ShuffleV2": 1024,
    "ResNet50": 2048,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SHAPES))
def test_reference_feature_shapes(name):
    model = create_model(name, 100)
    with FeatureTap(model, name) as tap:
        out = tap.dry_run()
        assert [tuple(f.shape[1:]) for f in out.feats] == REFERENCE_SHAPES[name]
        assert [tuple(p.shape[1:]) for p in out.preact_feats] == REFERENCE_SHAPES[name]
        assert tap.stage_channels == [c for c, _, _ in REFERENCE_SHAPES[name]]
        assert out.pooled.shape == (1, REFERENCE_POOLED[name])


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1"])
def test_features_get_gradient_without_logits(name):
    model = create_model(name, 10)
    tap = FeatureTap(model, name)
    out = tap(_input(name))
    out.feats[2].pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_checkpoint_round_trip(name, tmp_path):
    """Every model: a kdsweep checkpoint written and read back by the engine rebuilds it exactly.

    The clone is built on the meta device and materialised uninitialised, so every parameter and
    buffer it ends with must come from the checkpoint.
    """
    model = create_model(name, 7)
    model.train()
    x = _input(name)
    model(x)  # move BN running statistics away from their defaults
    model.eval()
    path = save_checkpoint(
        tmp_path / "ckpt.pt", {"arch": name, "num_classes": 7, "model": model.state_dict()}
    )
    with torch.device("meta"):
        clone = create_model(name, 7)
    clone = clone.to_empty(device="cpu")
    load_model_weights(clone, load_checkpoint(path), arch=name, num_classes=7, source=str(path))
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
    own, loaded = model.state_dict(), clone.state_dict()
    assert list(own) == list(loaded)
    assert all(torch.equal(own[k], loaded[k]) for k in own)


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


def test_default_lr_and_input_sizes():
    for name in ["MobileNetV2", "ShuffleV1", "ShuffleV2"]:
        assert get_spec(name).default_lr == 0.01
    assert get_spec("ShuffleV2_0_5").default_lr is None
    assert get_spec("tv_resnet18").input_size == 224 and get_spec("ResNet18").input_size == 32
    assert "tv_resnet18" in BIG and "ResNet18" in CIFAR


def test_shufflenetv2_bn_snapshot_interleaves_passthrough_channels():
    model = create_model("ShuffleV2", 10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    with FeatureTap(model, "ShuffleV2") as tap:
        bn = tap.bn_before_relu()[0]
    branch = model.layer1[-1].bn3
    assert bn.num_features == 2 * branch.num_features == 116
    assert torch.equal(bn.weight[1::2], branch.weight) and torch.equal(bn.bias[1::2], branch.bias)
    assert torch.equal(bn.weight[0::2], torch.zeros(58)) and not bn.weight.requires_grad
    margin = bn_margin(bn)
    assert torch.equal(margin[0::2], torch.zeros(58)) and (margin[1::2] < 0).all()


def test_bn_margin_matches_the_ofd_formula():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.1]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 5.0]))
    m = bn_margin(bn)
    # E[x | x < 0] for N(0, 1) is -sqrt(2 / pi); the third channel is almost never negative
    assert m[0].item() == pytest.approx(-((2 / torch.pi) ** 0.5), rel=1e-5)
    assert m[1].item() < -1.0 and m[2].item() == pytest.approx(-0.3)


def test_torchvision_pretrained_offline_is_a_one_line_checkpoint_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution\nsecond line")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError) as err:
        create_model("tv_shufflenet_v2_x0_5", 10, pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg and "'tv_shufflenet_v2_x0_5'" in msg and "shufflenetv2_x0.5" in msg


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_torchvision_pretrained_loads_backbone(monkeypatch, num_classes):
    reference = create_model("tv_shufflenet_v2_x0_5", 1000)
    monkeypatch.setattr(
        torch.hub, "load_state_dict_from_url", lambda *a, **k: reference.state_dict()
    )
    model = create_model("tv_shufflenet_v2_x0_5", num_classes, pretrained=True)
    assert torch.equal(model.conv1[0].weight, reference.conv1[0].weight)
    assert model.fc.out_features == num_classes
    if num_classes == 1000:
        assert torch.equal(model.fc.weight, reference.fc.weight)
