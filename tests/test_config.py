"""Every config group option composes with the real conf/, and the documented commands compose."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdsweep.config import validate
from kdsweep.errors import ConfigError
from kdsweep.methods import create_method, list_methods
from kdsweep.models import list_models

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("dataset", "schedule")


def yaml_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_composes(compose):
    cfg = compose()
    assert cfg.dataset.name == "embedded"
    assert cfg.method.name == "kd" and cfg.teacher.name and cfg.student.name
    validate(cfg)
    create_method(cfg.method)


def test_readme_command_composes(compose):
    cfg = compose(["method=kd", "teacher=wrn_28_4", "student=wrn_16_2"])
    assert (cfg.method.name, cfg.teacher.name, cfg.student.name) == ("kd", "wrn_28_4", "wrn_16_2")
    assert cfg.teacher.checkpoint is None


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in yaml_options(g)])
def test_every_yaml_option_composes(compose, group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset" and option == "imagefolder":
        overrides.append("dataset.root=/tmp/some/tree")
    cfg = compose(overrides)
    node = cfg[group]
    assert node.name
    if group == "method":
        create_method(node)
    if group == "schedule":
        validate(cfg)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_is_an_option_with_its_declared_defaults(compose, name):
    """``method=NAME`` nodes are generated from each method's ``__init__`` declaration."""
    from kdsweep.methods import get_method, hparams

    node = compose([f"method={name}"]).method
    declared = {hp.name: hp.default for hp in hparams(get_method(name))}
    assert node.name == name
    assert {k: v for k, v in node.items() if k != "name"} == declared
    create_method(node)


def test_no_method_yaml_repeats_a_declaration():
    """A conf/method/ (none ships; a user may add one) holds presets that differ from the code,
    never a copy of its defaults."""
    for f in (CONF / "method").glob("*.yaml") if (CONF / "method").is_dir() else []:
        assert f.stem not in list_methods(), f"{f} shadows the generated method={f.stem}"


@pytest.mark.slow
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_every_model_is_a_teacher_and_student_option(compose, role):
    for name in list_models():
        assert compose([f"{role}={name}"])[role].name == name


def test_misspelt_option_lists_valid_choices(compose):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as e:
        compose(["student=wrn_16_3"])
    assert "wrn_16_2" in str(e.value)


def test_warmup_cosine_inherits_cosine(compose):
    s = compose(["schedule=warmup_cosine"]).schedule
    assert s.name == "cosine" and s.warmup_epochs == 1 and s.epochs == 100


def test_cifar_recipe_is_the_published_one(compose):
    s = compose(["schedule=cifar"]).schedule
    assert (s.epochs, s.lr, s.momentum, s.weight_decay, list(s.milestones), s.batch_size) == (
        240, 0.05, 0.9, 5e-4, [150, 180, 210], 64)


@pytest.mark.parametrize("override,message", [
    ("schedule.epochs=0", "schedule.epochs=0"),
    ("schedule.lr=-0.1", "schedule.lr=-0.1"),
    ("schedule.warmup_epochs=20", "schedule.warmup_epochs=20"),
    ("schedule.batch_size=0", "schedule.batch_size=0"),
])
def test_bad_schedule_values_are_refused(compose, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(compose([override]))


@pytest.mark.parametrize("override,message", [
    ("method.alpha=1.5", r"method\.alpha=1\.5 is out of range; allowed: \[0, 1\]"),
    ("method.T=0", r"method\.T=0 is out of range; allowed: \(0, inf\]"),
])
def test_bad_method_values_are_refused(compose, override, message):
    with pytest.raises(ConfigError, match=message):
        create_method(compose([override]).method)


@pytest.mark.parametrize("override,message", [
    ("+unknown_key=1", "unknown config key 'unknown_key'"),
    ("+schedule.lrr=1", "unknown config key 'schedule.lrr'"),
    ("+train.foo=1", "unknown config key 'train.foo'"),
])
def test_added_unknown_keys_are_refused(compose, override, message):
    """Hydra lets ``+key=`` add keys even to typed nodes; kdsweep refuses them in one line."""
    with pytest.raises(ConfigError, match=message):
        validate(compose([override]))


def test_unknown_method_key_is_refused(compose):
    with pytest.raises(ConfigError, match=r"method 'kd' has no option method\.beta"):
        create_method(compose(["+method.beta=3"]).method)
    with pytest.raises(ConfigError, match=r"method 'kd' has no option method\.beta; valid: "
                                          r"method\.T, method\.alpha"):
        create_method({"name": "kd", "beta": 3})


def test_the_default_schedule_preset_repeats_no_default_of_the_code():
    """conf/schedule/quick.yaml (the default run's schedule) writes only what differs from
    ScheduleConf's defaults: each default is declared once, in code."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from kdsweep.engine.optim import ScheduleConf

    defaults = asdict(ScheduleConf())
    preset = OmegaConf.to_container(OmegaConf.load(CONF / "schedule" / "quick.yaml"))
    assert preset and not [k for k, v in preset.items() if defaults.get(k) == v]

