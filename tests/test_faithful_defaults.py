"""The published per-pair defaults a reproduction needs: DKD's beta per teacher/student pair
(mdistiller's configs) and OFD's teacher BatchNorm mode (the reference code's). No training."""

from __future__ import annotations

import pytest
import torch

from kdsweep.errors import ConfigError
from kdsweep.methods import create_method
from kdsweep.methods.base import BuildContext, StepInfo
from kdsweep.models import ModelOutput


def _ctx(**kw) -> BuildContext:
    return BuildContext(num_train=10, num_classes=10, epochs=1, steps_per_epoch=1, **kw)


@pytest.mark.parametrize("teacher,student,beta", [
    ("resnet56", "resnet20", 2.0), ("resnet110", "resnet32", 2.0), ("vgg13", "vgg8", 6.0),
    ("vgg13", "MobileNetV2", 6.0), ("wrn_40_2", "wrn_16_2", 6.0), ("wrn_40_2", "wrn_40_1", 6.0),
    ("resnet32x4", "resnet8x4", 8.0), ("resnet110", "resnet20", 8.0), ("wrn_28_4", "wrn_16_2", 8.0)])
def test_dkd_takes_the_published_beta_of_its_pair(teacher, student, beta):
    m = create_method({"name": "dkd"})
    assert m.beta == 8.0 and m.per_pair                           # not built yet: the default
    m.build(None, None, _ctx(teacher_arch=teacher, student_arch=student))
    assert m.beta == beta and m.resolved["beta"] == beta
    assert f"{teacher} -> {student}" in m.beta_source
    logits = torch.randn(4, 10)
    terms = m(ModelOutput(logits), ModelOutput(logits.flip(1)), torch.arange(4),
              StepInfo(50, 0, 100, 1))
    assert torch.isfinite(terms["nckd"])


def test_dkd_beta_override_wins_and_an_unnamed_pair_gets_the_default():
    m = create_method({"name": "dkd", "beta": 3.5})
    m.build(None, None, _ctx(teacher_arch="resnet56", student_arch="resnet20"))
    assert (m.beta, m.beta_source) == (3.5, "method.beta")
    m = create_method({"name": "dkd"})
    m.build(None, None, _ctx())                                     # engine without the names
    assert m.beta == 8.0 and "did not name the pair" in m.beta_source


def test_ofd_teacher_bn_train_needs_an_engine_that_honours_it():
    """clovaai/overhaul-distillation and mdistiller run the teacher's BN in training mode."""
    from kdsweep.models import FeatureTap, create_model

    t, s = create_model("resnet14", num_classes=10).eval(), create_model("resnet8", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    tap_t, tap_s = FeatureTap(t, "resnet14"), FeatureTap(s, "resnet8")
    with torch.no_grad():
        t_out, s_out = tap_t(x), tap_s(x)
    assert create_method({"name": "ofd"}).teacher_mode == "eval"
    m = create_method({"name": "margin_relu", "teacher_bn": "train"})
    assert m.teacher_mode == "train"
    with pytest.raises(ConfigError, match="method.teacher_bn=train .* not supported") as e:
        m.build(s_out, t_out, _ctx(teacher_tap=tap_t))
    assert "\n" not in str(e.value)
    m.build(s_out, t_out, _ctx(teacher_tap=tap_t, teacher_modes=("eval", "train")))
    assert len(m.connectors) > 0
    with pytest.raises(ConfigError, match="valid: eval, train"):
        create_method({"name": "ofd", "teacher_bn": "frozen"})
