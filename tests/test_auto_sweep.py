"""What ``-m`` does by default (kdsweep/sweep/auto.py): lists make a grid, ranges and intervals a
TPE search; ``fuse=auto`` fuses a grid per launcher slot and a search 4 per job; the grid's axes
keep the distributions the user wrote (choice -> categorical)."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from kdsweep.errors import SweepError
from kdsweep.sweep import auto
from kdsweep.sweep import space as _space
from kdsweep.sweep.settings import Settings, check_settings

TPE_OPTIONS = {"_target_": "auto", "seed": 3, "n_startup_trials": 10, "constant_liar": True}


def test_lists_and_choices_make_a_grid_of_every_point():
    s, why = auto.resolve(Settings(sampler=dict(TPE_OPTIONS)),
                          ["method.alpha=0.2,0.4", "method.T=choice(2,4,8)", "seed=1"])
    assert s.sampler == {"_target_": auto.GRID, "seed": 3} and "grid" in why
    assert s.n_trials is None  # the whole grid
    space = _space.build(s.params, ["method.alpha=0.2,0.4", "method.T=choice(2,4,8)"], grid=True,
                         points=None)
    assert auto.total(s, space) == 6
    # stored as written: T of {2, 4, 8} is categorical, not IntDistribution(2..8)
    assert space.distributions["method.T"] == CategoricalDistribution([2, 4, 8])


def test_a_range_or_an_interval_makes_a_tpe_search_of_20_trials():
    for swept in (["method.alpha=interval(0.1,0.9)"], ["method.T=range(1,8)", "method.alpha=0.2,0.4"]):
        s, why = auto.resolve(Settings(sampler=dict(TPE_OPTIONS)), swept)
        assert s.sampler == {**TPE_OPTIONS, "_target_": auto.TPE}, swept
        assert s.n_trials == auto.SEARCH_TRIALS and "TPE" in why
    space = _space.build(None, ["method.T=range(1,8)"], grid=False, points=None)
    assert space.distributions["method.T"] == IntDistribution(1, 8)


def test_points_are_a_grid_and_an_explicit_sampler_is_kept():
    s, _ = auto.resolve(Settings(points=[{"method.alpha": 0.2}]), [])
    assert s.sampler["_target_"] == auto.GRID
    s, why = auto.resolve(Settings(sampler={"_target_": "optuna.samplers.RandomSampler"},
                                   n_trials=5), ["method.alpha=0.2,0.4"])
    assert s.sampler == {"_target_": "optuna.samplers.RandomSampler"} and why is None
    assert s.n_trials == 5


@pytest.mark.parametrize("fuse,n_jobs,grid,total,expected", [
    ("auto", 1, True, 16, 16), ("auto", 2, True, 16, 8), ("auto", 3, True, 16, 6),
    ("auto", 1, True, 417, auto.MAX_FUSE), ("auto", 1, False, 40, auto.SEARCH_FUSE),
    (1, 1, True, 16, 1), (5, 1, True, 16, 5)])
def test_fuse_auto_sizes_jobs_from_the_sweep_alone(fuse, n_jobs, grid, total, expected):
    assert auto.fuse_size(Settings(fuse=fuse, n_jobs=n_jobs), total, grid) == expected


def test_fuse_auto_prints_what_it_decided(capsys):
    s = auto.with_fuse(Settings(), 16, True, "a grid (every swept key is a list or choice())")
    assert s.fuse == 16
    out = capsys.readouterr().out
    assert out.startswith("kdsweep: 16 trials, a grid") and "up to 16 per job" in out


@pytest.mark.parametrize("fuse", [0, -1, "many", 2.5, True])
def test_a_bad_fuse_is_refused_in_one_line(fuse):
    with pytest.raises(SweepError, match=r"^hydra.sweeper.fuse=.* must be auto or an integer"):
        check_settings(Settings(fuse=fuse))


def test_a_point_reads_short_in_names_and_lines():
    """Run names, the cohort line and Optuna's ``point`` attribute: a search's drawn floats to 4
    digits (the overrides keep the exact value)."""
    assert _space.point_text({"method.alpha": 0.24824030047002132, "method.T": 8}) == \
        "alpha=0.2482 T=8"
    assert _space.point_text({"method.alpha": 0.3, "method": "kd"}) == "alpha=0.3 method=kd"
    assert _space.point_text({"method.alpha": 0.3}, label="tricks: cosine") == "tricks: cosine"
