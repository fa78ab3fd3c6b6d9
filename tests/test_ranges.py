"""Every numeric option of every config group is range-checked before any work: negative, zero,
huge, ``inf`` and ``nan`` values are refused where they make no sense, in one line naming the key.

The options are found from the schemas themselves (and each method's declared hyper-parameters),
so a numeric option added without a decision here fails this test until it gets one.
"""

from __future__ import annotations

import math
import typing

import pytest

from conftest import extension_keys, numeric_keys, probe_range
from kdsweep.config.schema import RunConfig
from kdsweep.errors import KDSweepError
from kdsweep.methods import create_method, get_method, hparams, list_methods

#: Which probes each numeric option accepts (everything else must be refused).
ACCEPTS: dict[str, set[str]] = {
    "dataset.num_classes": set(), "dataset.image_size": set(), "dataset.val_resize": set(),
    "dataset.num_workers": {"zero"}, "dataset.padding": {"zero"},
    "teacher.min_val_acc": {"zero"},
    "teacher.store_max_gb": {"huge"},  # no upper limit: a big disk
    "teacher.store_topk": set(),       # below the classes: checked when the store opens
    "schedule.epochs": set(), "schedule.batch_size": set(), "schedule.eval_batch_size": set(),
    "schedule.lr": {"huge"},  # a huge LR is how one shows a diverging run
    "schedule.momentum": {"zero"}, "schedule.weight_decay": {"zero"},
    "schedule.milestones": {"zero", "huge"},  # a milestone past the last epoch never fires
    "schedule.gamma": set(), "schedule.min_lr": {"zero"}, "schedule.warmup_epochs": {"zero"},
    "schedule.warmup_start_factor": set(), "schedule.dot_delta": {"zero"},
    "seed": {"zero", "huge"}, "cpu_threads": set(),
    "train.limit_train_batches": set(), "train.limit_val_batches": set(),
    "train.checkpoint_every": {"zero"},
    "sweep.trial_number": {"zero"},
}


#: The core options (an extension's own are probed by its tests, with the same helper).
KEYS = [(k, is_list) for k, is_list in numeric_keys(RunConfig) if not extension_keys(k)]


def test_every_numeric_option_has_a_decision():
    assert sorted(k for k, _ in KEYS) == sorted(ACCEPTS)


@pytest.mark.parametrize("key,is_list", KEYS, ids=[k for k, _ in KEYS])
def test_nonsense_values_are_refused_in_one_line(compose, key, is_list):
    probe_range(compose, key, is_list, ACCEPTS[key])


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
