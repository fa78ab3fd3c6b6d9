"""Every reproduction preset composes, with and without ``debug=smoke``: its data set, models,
method, points and published table; each distinct kind of point composes and validates as the
trial it becomes. Nothing is trained (the report's tests use hand-made MLflow runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdsweep.config import validate
from kdsweep.methods import create_method
from kdsweep.report.published import get_published
from kdsweep.sweep import space as _space

CONF = Path(__file__).resolve().parents[1] / "conf" / "experiment"

# name: (data set, teacher, student, method, points, published table, per-point models)
PRESETS = {
    "alpha_t_grid_wrn": ("cifar100", "wrn_28_4", "wrn_16_2", "kd", 16, "pkudavidguan_kd_grid", False),
    "alpha_t_grid_shufflenet": ("mini_imagenet", "tv_shufflenet_v2_x2_0", "tv_shufflenet_v2_x1_0",
                                "kd", 7, "wangziren1_kd_grid", False),
    "alpha_t_grid_shufflenet_full": ("mini_imagenet", "tv_shufflenet_v2_x2_0",
                                     "tv_shufflenet_v2_x1_0", "kd", 16, "wangziren1_kd_grid", False),
    "lr_tricks_shufflenet": ("mini_imagenet", None, "tv_shufflenet_v2_x1_0", "ce", 4,
                             "wangziren1_tricks", False),
    "tpe_kd": ("cifar100", "wrn_28_4", "wrn_16_2", "kd", None, None, False),
    "wrn_methods_cifar100": ("cifar100", "wrn_28_4", "wrn_16_2", "kd", 15, "pkudavidguan_cifar100",
                             True),
    "shufflenet_methods_cinic10": ("cinic10", "ShuffleV2_2_0", "ShuffleV2", "kd", 14,
                                   "pkudavidguan_cinic10", True),
    "shufflenet_widths": ("mini_imagenet", None, "tv_shufflenet_v2_x1_0", "ce", 3,
                          "wangziren1_shufflenet", True),
    "resnet_kd_mini_imagenet": ("mini_imagenet", "tv_resnet50", "tv_resnet18", "ce", 4,
                                "wangziren1_resnet", True),
    "efficientnet_kd_cifar10": ("cifar10", "ResNeXt29_32x8d", "EfficientNetB0", "kd", 4,
                                "keti_cifar10", True),
    "efficientnet_kd_imagenet": ("imagenet", "tv_resnet152", "tv_efficientnet_b0", "kd", 2,
                                 "keti_imagenet", False),
    "crd_benchmark": ("cifar100", "wrn_40_2", "wrn_16_2", "kd", 708, "crd_dkd_cifar100", True),
    "modreduce_benchmark": ("cifar100", "wrn_40_2", "wrn_16_2", "kd", 70, "modreduce_cifar100",
                            True),
    "logit_stand_cifar100": ("cifar100", "resnet32x4", "resnet8x4", "kd", 112,
                             "logit_stand_cifar100", True),
    "dist_cifar100": ("cifar100", "resnet32x4", "resnet8x4", "dist", 14, "dist_cifar100", True),
    "temperature_study": ("cifar100", "wrn_40_2", "wrn_16_2", "kd", 15, None, False),
}


@pytest.fixture(scope="module")
def composed():
    """compose(overrides) with the results kept for the module (composing is the cost here)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from kdsweep.config import register_configs

    register_configs()
    cache: dict = {}

    def get(overrides: list[str], hydra: bool = True):
        key = (tuple(overrides), hydra)
        if key not in cache:
            with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
                cache[key] = hydra_compose("config", overrides=list(overrides),
                                           return_hydra_config=hydra)
        return cache[key]

    return get


def test_every_preset_is_listed():
    """conf/experiment's presets (an extension's own are tested in its folder)."""
    assert {p.stem for p in CONF.glob("*.yaml")} == set(PRESETS)


def _points(cfg) -> list[dict]:
    sw = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    return _space.build(sw["params"], [], grid=True, points=sw["points"]).points


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("smoke", [False, True], ids=["real", "smoke"])
def test_preset_composes(composed, name, smoke):
    ds, teacher, student, method, n_points, published, per_point = PRESETS[name]
    cfg = composed([f"experiment={name}", *(["debug=smoke"] if smoke else [])])
    assert cfg.dataset.name == ("embedded" if smoke else ds)
    # debug=smoke comes after the preset in the defaults list: its small models win.
    assert (cfg.teacher.name, cfg.student.name) == (
        ("resnet14", "resnet8") if smoke else (teacher or cfg.teacher.name, student))
    assert cfg.method.name == method
    if smoke:
        assert cfg.schedule.epochs == 4 and cfg.train.limit_train_batches == 10
        assert not cfg.teacher.pretrained and not cfg.student.pretrained
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("KDSweepOptunaSweeper")
    assert sw.study_name == f"{name}-{cfg.dataset.name}"
    assert cfg.hydra.sweep.dir == f"multirun/{name}-{cfg.dataset.name}"
    assert sw.report.published == published
    if published:
        pub = get_published(published)
        assert pub.dataset in (ds, "")
    if n_points is None:
        assert sw.sampler._target_.endswith("TPESampler")
        return
    points = _points(cfg)
    assert len(points) == n_points
    assert any({"student", "teacher"} & set(p.values) for p in points) == per_point


def _method_cfg(values: dict) -> dict:
    return {"name": values["method"], **{k.split(".", 1)[1]: v for k, v in values.items()
                                          if k.startswith("method.")}}


@pytest.mark.parametrize("name", [n for n, v in PRESETS.items() if v[4] is not None])
def test_every_point_is_a_valid_trial(composed, name):
    """Every point's models exist and its method options are valid (no composing: cheap); the
    point with the most overrides composes as the sweeper passes it, after the preset and the
    smoke overlay, and wins over both."""
    from kdsweep.models import get_spec

    points = _points(composed([f"experiment={name}"]))
    for p in points:
        for role in ("teacher", "student"):
            if role in p.values:
                get_spec(p.values[role])
        if "method" in p.values:
            create_method(_method_cfg(p.values))
    richest = max(points, key=lambda p: len(p.values))
    cfg = composed([f"experiment={name}", "debug=smoke", *richest.overrides()], hydra=False)
    validate(cfg)
    create_method(cfg.method)
    for k, v in richest.values.items():
        if k in ("method", "teacher", "student"):
            assert cfg[k].name == v
        elif "." in k or k == "seed":
            assert OmegaConf.select(cfg, k) == v


def test_benchmark_points_follow_the_published_recipe(composed):
    cfg = composed(["experiment=crd_benchmark"])
    points = _points(cfg)
    assert cfg.schedule.epochs == 240 and cfg.schedule.lr == 0.05
    assert list(cfg.schedule.milestones) == [150, 180, 210]
    for p in points:
        small = p.values["student"] in ("MobileNetV2", "ShuffleV1", "ShuffleV2")
        assert p.values.get("schedule.lr") == (0.01 if small else None), p.values
    labels = {p.label for p in points}
    pub = get_published("crd_dkd_cifar100")
    assert labels == set(pub.cols) == {
        "vanilla", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst",
        "crd", "crd+kd", "dkd", "ofd", "reviewkd", "kd+dot"}
    # fsp where RepDistiller prints it (equal widths), every other method on all 13 pairs
    fsp = {(p.values["teacher"], p.values["student"]) for p in points if p.label == "fsp"}
    assert {f"{t} -> {s}" for t, s in fsp} == {r for r in pub.rows if pub.value(r, "fsp")}
    assert all(p.values.get("schedule.optimizer") == "dot" and p.values["method"] == "kd"
               for p in points if p.label == "kd+dot")
    assert {p.values["seed"] for p in points} == {0, 1, 2}
    pairs = {(p.values["teacher"], p.values["student"]) for p in points if "teacher" in p.values}
    assert {f"{t} -> {s}" for t, s in pairs} == set(pub.rows)
    crd_kd = [p for p in points if p.label == "crd+kd"]
    assert all(p.values["method"] == "crd" and p.values["method.kd_weight"] == 1 for p in crd_kd)
    assert all(p.values.get("method.teacher_bn") == "train" for p in points if p.label == "ofd")
    # each teacher is first needed by a pair whose student has the teachers' LR (0.05)
    first = {}
    for p in points:
        if "teacher" in p.values:
            first.setdefault(p.values["teacher"], p)
    assert all("schedule.lr" not in p.values for p in first.values())


def test_modreduce_and_pku_tables_cover_their_published_rows(composed):
    for name, pid in (("modreduce_benchmark", "modreduce_cifar100"),
                      ("shufflenet_methods_cinic10", "pkudavidguan_cinic10"),
                      ("efficientnet_kd_cifar10", "keti_cifar10")):
        points = _points(composed([f"experiment={name}"]))
        rows = {f"{p.values['teacher']} -> {p.values['student']}" for p in points
                if "teacher" in p.values}
        assert rows == set(get_published(pid).rows), name
    points = _points(composed(["experiment=wrn_methods_cifar100"]))
    assert {p.values["student"] for p in points} == set(get_published("pkudavidguan_cifar100").rows)
    assert {p.label for p in points} == set(get_published("pkudavidguan_cifar100").cols)


@pytest.mark.parametrize("name", list(PRESETS))
def test_smoke_schedules_fit_their_epochs(composed, name):
    """debug=smoke trains 4 epochs: a step schedule's milestones (the CIFAR recipe's 150/180/210
    of 240) are scaled to them (fractions), so the LR decays within the run; warmup ends before
    the last epoch. Every schedule a point picks (the tricks table) is checked too."""
    from kdsweep.engine.optim import milestone_steps

    cfg = composed([f"experiment={name}", "debug=smoke"])
    variants = {(): cfg}
    if PRESETS[name][4] is not None:
        for p in _points(cfg):
            ov = tuple(o for o in p.overrides() if o.split("=")[0].lstrip("+~").startswith("schedule"))
            if ov and ov not in variants:
                variants[ov] = composed([f"experiment={name}", "debug=smoke", *ov], hydra=False)
    for ov, c in variants.items():
        s = c.schedule
        per_epoch = c.train.limit_train_batches                 # the iterations the LR steps
        steps = milestone_steps(list(s.milestones), s.epochs, per_epoch)
        assert s.epochs == 4 and all(0 < m < s.epochs * per_epoch for m in steps), (ov, steps)
        if s.name == "step":
            assert len(steps) == 3, ov                        # three decays, as the recipe
        assert s.warmup_epochs < s.epochs, ov


def test_benchmark_points_are_the_generators():
    """conf/experiment/crd_benchmark.yaml's points are written by tools/crd_benchmark_points.py."""
    import subprocess
    import sys

    tool = CONF.parents[1] / "tools" / "crd_benchmark_points.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
