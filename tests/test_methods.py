"""Loss values against formulas computed independently by hand; gradients reach only the student."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.methods import StepInfo, create_method
from kdsweep.models import ModelOutput, create_model

INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)


def softmax(row: list[float], T: float) -> list[float]:
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def hand_kd(s: list[list[float]], t: list[list[float]], y: list[int], alpha: float, T: float):
    """alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE, with plain Python floats."""
    kl = ce = 0.0
    for srow, trow, label in zip(s, t, y, strict=True):
        ps, pt = softmax(srow, T), softmax(trow, T)
        kl += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt, strict=True))
        ce += -math.log(softmax(srow, 1.0)[label])
    n = len(s)
    return alpha * T * T * kl / n, (1 - alpha) * ce / n


@pytest.mark.parametrize("alpha,T", [(0.9, 4.0), (0.2, 2.0), (0.5, 1.0), (1.0, 16.0), (0.0, 3.0)])
def test_kd_loss_matches_hand_computation(alpha, T):
    s = [[1.0, 2.0, 3.0, -1.0], [0.5, -0.5, 2.5, 1.0]]
    t = [[3.0, 1.0, 0.0, 2.0], [-1.0, 4.0, 0.0, 0.5]]
    y = [2, 1]
    method = create_method({"name": "kd", "alpha": alpha, "T": T})
    terms = method(ModelOutput(torch.tensor(s)), ModelOutput(torch.tensor(t)), torch.tensor(y), INFO)
    soft, hard = hand_kd(s, t, y, alpha, T)
    assert set(terms) == {"kd", "ce"}
    assert terms["kd"].item() == pytest.approx(soft, rel=1e-5, abs=1e-7)
    assert terms["ce"].item() == pytest.approx(hard, rel=1e-5, abs=1e-7)


def test_kd_is_zero_when_student_equals_teacher():
    z = torch.randn(4, 10)
    terms = create_method({"name": "kd", "alpha": 1.0, "T": 4.0})(
        ModelOutput(z), ModelOutput(z.clone()), torch.zeros(4, dtype=torch.long), INFO)
    assert terms["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_ce_matches_hand_computation():
    s, y = [[1.0, 2.0, 0.0]], [0]
    terms = create_method({"name": "ce"})(ModelOutput(torch.tensor(s)), None, torch.tensor(y), INFO)
    assert terms["ce"].item() == pytest.approx(-math.log(softmax(s[0], 1.0)[0]), rel=1e-6)


def test_kd_gradients_reach_only_the_student():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", num_classes=10), create_model("resnet14", num_classes=10)
    teacher.eval().requires_grad_(False)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    with torch.no_grad():
        t_out = ModelOutput(teacher(x))
    terms = create_method({"name": "kd"})(ModelOutput(student(x)), t_out, y, INFO)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_kd_gradient_direction_pulls_student_to_teacher():
    s = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0, 0.0]])
    terms = create_method({"name": "kd", "alpha": 1.0, "T": 1.0})(
        ModelOutput(s), ModelOutput(t), torch.tensor([0]), INFO)
    terms["kd"].backward()
    # d/ds KL(p_t || p_s) = p_s - p_t: class 0 is pushed down, class 1 up.
    expected = F.softmax(s.detach(), 1) - F.softmax(t, 1)
    assert torch.allclose(s.grad, expected, atol=1e-6)
