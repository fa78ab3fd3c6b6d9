"""LR schedules: the CIFAR step recipe, cosine, and cosine with linear warmup, stepped per iteration."""

from __future__ import annotations

import pytest
import torch

from kdsweep.engine import build_optimizer, build_scheduler


def lrs(cfg: dict, steps_per_epoch: int) -> list[float]:
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg["epochs"] * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cifar_step_recipe_decays_at_150_180_210():
    cfg = {"name": "step", "epochs": 240, "lr": 0.05, "milestones": [150, 180, 210], "gamma": 0.1}
    lr = lrs(cfg, steps_per_epoch=2)
    per_epoch = lr[::2]
    assert per_epoch[149] == pytest.approx(0.05)
    assert per_epoch[150] == pytest.approx(0.005)
    assert per_epoch[180] == pytest.approx(0.0005)
    assert per_epoch[210] == pytest.approx(0.00005)


def test_fractional_milestones_scale_with_epochs():
    cfg = {"name": "step", "epochs": 10, "lr": 0.1, "milestones": [0.3, 0.6], "gamma": 0.1}
    per_epoch = lrs(cfg, steps_per_epoch=1)
    assert per_epoch[2] == pytest.approx(0.1) and per_epoch[3] == pytest.approx(0.01)
    assert per_epoch[6] == pytest.approx(0.001)


def test_cosine_reaches_min_lr_and_is_monotone():
    cfg = {"name": "cosine", "epochs": 5, "lr": 0.1, "min_lr": 0.0}
    lr = lrs(cfg, steps_per_epoch=10)
    assert lr[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr, lr[1:], strict=False))
    assert lr[-1] < 0.001


def test_warmup_ramps_linearly_then_cosine():
    cfg = {"name": "cosine", "epochs": 4, "lr": 0.1, "warmup_epochs": 1, "warmup_start_factor": 0.1}
    lr = lrs(cfg, steps_per_epoch=10)
    warm = lr[:10]
    assert warm[0] == pytest.approx(0.01)
    diffs = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert all(d == pytest.approx(0.009) for d in diffs)
    assert lr[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))


def test_smoke_overlay_keeps_the_cifar_shape_in_four_epochs():
    """conf/debug/smoke.yaml's milestones: 150/180/210 of 240 as fractions, so 4 epochs of 10
    iterations decay at iterations 25, 30 and 35 (a staircase, not a flat LR)."""
    from pathlib import Path

    import yaml

    smoke = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "debug"
                            / "smoke.yaml").read_text())["schedule"]
    assert smoke["milestones"] == [150 / 240, 180 / 240, 210 / 240]
    cfg = {"name": "step", "epochs": smoke["epochs"], "lr": 0.05, "gamma": 0.1,
           "milestones": smoke["milestones"]}
    lr = lrs(cfg, steps_per_epoch=10)
    assert lr[24] == pytest.approx(0.05) and lr[25] == pytest.approx(0.005)
    assert lr[30] == pytest.approx(0.0005) and lr[35] == pytest.approx(0.00005)
