"""Every numeric option of every config group is range-checked before any work: negative, zero,
huge, ``inf`` and ``nan`` values are refused where they make no sense, in one line naming the key.

The options are found from the schemas themselves (and each method's declared hyper-parameters),
so a numeric option added without a decision here fails this test until it gets one.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields, is_dataclass

import pytest
from omegaconf import OmegaConf

from kdsweep.config.schema import RunConfig
from kdsweep.errors import KDSweepError
from kdsweep.methods import create_method, get_method, hparams, list_methods
from kdsweep.reducenet.conf import ReduceNetConf
from kdsweep.run.job import check

PROBES = {"neg": "-1", "zero": "0", "huge": "1000000000000", "inf": "inf", "nan": "nan"}

#: Which probes each numeric option accepts (everything else must be refused).
ACCEPTS: dict[str, set[str]] = {
    "dataset.num_classes": set(), "dataset.image_size": set(), "dataset.val_resize": set(),
    "dataset.num_workers": {"zero"}, "dataset.padding": {"zero"},
    "teacher.min_val_acc": {"zero"},
    "student.adapt.lora_rank": {"zero"}, "student.adapt.anneal": set(),
    "schedule.epochs": set(), "schedule.batch_size": set(), "schedule.eval_batch_size": set(),
    "schedule.lr": {"huge"},  # a huge LR is how one shows a diverging run
    "schedule.momentum": {"zero"}, "schedule.weight_decay": {"zero"},
    "schedule.milestones": {"zero", "huge"},  # a milestone past the last epoch never fires
    "schedule.gamma": set(), "schedule.min_lr": {"zero"}, "schedule.warmup_epochs": {"zero"},
    "schedule.warmup_start_factor": set(),
    "seed": {"zero", "huge"}, "cpu_threads": set(),
    "train.limit_train_batches": set(), "train.limit_val_batches": set(),
    "train.checkpoint_every": {"zero"},
    "sweep.trial_number": {"zero"},
    "reducenet.expansion": set(), "reducenet.small_epochs": set(),
    "reducenet.grow_epochs": set(), "reducenet.anneal": set(),
    "reducenet.rank": set(),  # 0 is refused by the preset's lambda_relu=true (needs LoRA)
}
REDUCENET = ["experiment=reducenet", "student=reduce8"]


def numeric_keys(schema: type, prefix: str = "") -> list[tuple[str, bool]]:
    """(key, is_list) of every int/float option of ``schema``, nested schemas included."""
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, bool]] = []
    for f in fields(schema):
        sub = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(sub):
            out += numeric_keys(type(sub), f"{prefix}{f.name}.")
            continue
        t = hints[f.name]
        args = typing.get_args(t) or (t,)
        is_list = typing.get_origin(t) is list
        if is_list:
            args = typing.get_args(t)
        if any(a in (int, float) for a in args):
            out.append((f"{prefix}{f.name}", is_list))
    return out


KEYS = numeric_keys(RunConfig) + numeric_keys(ReduceNetConf, "reducenet.")


def test_every_numeric_option_has_a_decision():
    assert sorted(k for k, _ in KEYS) == sorted(ACCEPTS)


@pytest.mark.parametrize("key,is_list", KEYS, ids=[k for k, _ in KEYS])
def test_nonsense_values_are_refused_in_one_line(compose, key, is_list):
    base = REDUCENET if key.startswith("reducenet.") else []
    for probe, text in PROBES.items():
        override = f"{key}=[{text}]" if is_list else f"{key}={text}"
        try:
            cfg = compose([*base, override])
        except Exception as e:  # Hydra refuses the type (an int option given inf or nan)
            assert probe not in ACCEPTS[key], (override, e)
            continue
        plain = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items()})
        try:
            check(plain, [*base, override], reach=False)
        except KDSweepError as e:
            message = str(e)
            assert probe not in ACCEPTS[key], (override, message)
            assert "\n" not in message and key.rsplit(".", 1)[-1] in message, (override, message)
        else:
            assert probe in ACCEPTS[key], f"{override} was accepted"


@pytest.mark.parametrize("name", list_methods())
def test_method_hyper_parameters_refuse_non_finite_and_out_of_range_values(name):
    """Every numeric hyper-parameter of every method declares its range, and nan, inf and a
    value below its range are refused with one line naming it."""
    for hp in hparams(get_method(name)):
        inner = typing.get_args(hp.type)[0] if typing.get_origin(hp.type) is list else hp.type
        if inner not in (int, float):
            continue
        assert hp.range is not None, f"method {name}: {hp.name} declares no range"
        bad = [math.nan, math.inf, -math.inf]
        if hp.range.lo is not None:
            bad.append(hp.range.lo - 1)
        for v in bad:
            value = [v] * (hp.length or 1) if inner is not hp.type else v
            with pytest.raises(KDSweepError, match=f"method.{hp.name}="):
                create_method({"name": name, hp.name: value})
