"""Errors that help: a misspelt option or key is one short line naming what was probably meant.

The command line is checked before Hydra starts (``kdsweep.config.cli.check``); each typical
mistake below must come back as one line under 200 characters (``error: `` included) with the
expected suggestion, and no suggestion where nothing is close, only where the full list is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdsweep.config.cli import check
from kdsweep.errors import ConfigError, close_matches

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

MISTAKES = [
    # a group option that does not exist: the close one, and where the list is
    (["teacher=resnet_20"], "did you mean teacher=resnet20? (list: python -m kdsweep.zoo)"),
    (["teacher=wrn-28-4"], "did you mean teacher=wrn_28_4?"),
    (["student=resnet_8"], "did you mean student=resnet8?"),
    (["method=kdd"], "did you mean method=kd? (list: python -m kdsweep.methods)"),
    (["dataset=cifar-10"], "did you mean dataset=cifar10? (list: python run.py --help)"),
    (["schedule=cosin"], "did you mean schedule=cosine?"),
    (["experiment=alpha_grid"], "did you mean experiment=alpha_t_grid_wrn?"),
    (["debug=smok"], "did you mean debug=smoke?"),
    (["hydra/sweeper=kdsweep_optun"], "did you mean hydra/sweeper=kdsweep_optuna?"),
    (["student=resnet_50"], "model 'resnet50' was renamed: use 'tv_resnet50'"),
    # nothing close: a short line and where the list is (or the list, when it is short)
    (["teacher=zzzz"], "teacher=zzzz: no such teacher; list: python -m kdsweep.zoo"),
    (["experiment=zzz"], "experiment=zzz: no such experiment; list: python run.py --help"),
    (["schedule=zzz"], "schedule=zzz: no such schedule; valid: cifar, cosine,"),
    # a key that does not exist: the close one among the node's keys
    (["method.temperature=4"],
     "method.temperature: kd has no option 'temperature'; did you mean method.T?"),
    (["method.temprature=4"], "did you mean method.T?"),
    (["method=dkd", "method.tau=2"], "dkd has no option 'tau'; did you mean method.T?"),
    (["method=kd", "method.Alpha=0.5"], "did you mean method.alpha?"),
    (["method=at", "method.alpha=0.5"], "at has no option 'alpha'; valid: method.feat_weight"),
    (["-m", "method=kd,at", "method.alpha=0.2,0.4"], "at has no option 'alpha'"),
    (["schedule.epoch=3"], "schedule.epoch: no key 'epoch' in schedule; did you mean schedule.epochs?"),
    (["trian.progress=false"], "trian.progress: no key 'trian' in the config; did you mean "
                               "train.progress?"),
    (["seeds=1"], "seeds: no key 'seeds' in the config; did you mean seed?"),
    (["teacher.checkpont=t.pt"], "did you mean teacher.checkpoint?"),
    (["foo.bar=1"], "foo.bar: no key 'foo' in the config; keys: python run.py --cfg job"),
]


def _assert_one_short_line(error: str | None) -> str:
    assert error is not None, "the mistake was accepted"
    line = f"error: {error}"  # as run.py prints it
    assert "\n" not in line and len(line) < 200, (len(line), line)
    return error


@pytest.mark.parametrize("argv,expected", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_typical_mistake_is_one_short_line_with_the_suggestion(argv, expected):
    error = _assert_one_short_line(check(argv, CONF))
    assert expected in error, error
    if "did you mean" not in expected:
        assert "did you mean" not in error, error  # nothing close: no guess


@pytest.mark.parametrize("argv,expected", [
    (["teacher.name=resnet_20"], "teacher=resnet_20: unknown model 'resnet_20'; did you mean "
                                 "resnet20? (list: python -m kdsweep.zoo)"),
    (["student.name=nosuchnet"], "unknown model 'nosuchnet'; list: python -m kdsweep.zoo"),
    (["+method.temperature=4"], "method 'kd' has no option method.temperature; did you mean "
                                "method.T?"),
    (["+method.gamma=2"], "method 'kd' has no option method.gamma; valid: method.T, method.alpha"),
])
def test_the_checks_before_work_suggest_too(argv, expected, tmp_path, monkeypatch):
    from kdsweep.run.job import check as preflight

    monkeypatch.chdir(tmp_path)
    error = _assert_one_short_line(check(argv, CONF, preflight=preflight))
    assert expected in error, error


@pytest.mark.parametrize("argv", [["teacher=resnet20", "student=wrn_16_2"], ["method=dkd"],
                                  ["dataset=cifar10", "--cfg", "job"], ["method.T=2", "seed=1"],
                                  ["schedule=cosine", "schedule.epochs=3", "train.progress=false"]])
def test_what_was_accepted_still_is(argv):
    assert check(argv, CONF) is None


def test_the_registries_suggest_close_names_only():
    from kdsweep.methods import create_method, get_method

    assert close_matches("wrn-28-4", ["wrn_28_4", "wrn_28_2"]) == ["wrn_28_4"]  # spelling only
    assert close_matches("RESNET_20", ["resnet20", "resnet32"]) == ["resnet20"]
    assert close_matches("cosin", ["cifar", "cosine", "step"]) == ["cosine"]
    assert close_matches("zzzz", ["resnet20", "wrn_16_2"]) == []
    with pytest.raises(ConfigError, match=r"^method.name='kdd' is not a known method; did you "
                                          r"mean kd\?$"):
        get_method("kdd")
    with pytest.raises(ConfigError, match=r"is not a known method; valid: ab, at, cc, ce, "):
        get_method("zzz")
    with pytest.raises(ConfigError, match=r"has no option method.temp; did you mean method.T\?"):
        create_method({"name": "kd", "temp": 2})


@pytest.mark.parametrize("argv,expected", [
    (["method=fsp", "teacher=wrn_40_2", "student=wrn_40_1"],
     "error: method 'fsp' cannot serve the pair wrn_40_2 -> wrn_40_1: its FSP matrices need equal "
     "channel counts at every map f0..fn; teacher [16, 32, 64, 128], student [16, 16, 32, 64]\n"),
    (["method=kdsvd", "teacher=resnet32x4", "student=ShuffleV1"],
     "error: method 'kdsvd' cannot serve the pair (resnet32x4 -> ShuffleV1): it needs equal channel "
     "counts at the paired stages; teacher [64, 128, 256], student [240, 480, 960]\n"),
])
def test_a_pair_the_method_cannot_serve_is_refused_before_any_work(argv, expected, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert p.returncode == 2, p.stderr
    assert p.stderr == expected and len(expected) < 200
    assert not any(tmp_path.iterdir()), "a refused run wrote something"


def test_run_py_prints_the_suggestion_in_one_line_and_exits_2(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "teacher=wrn-28-4"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert p.returncode == 2, p.stderr
    assert p.stderr == ("error: teacher=wrn-28-4: no such teacher; did you mean teacher=wrn_28_4? "
                        "(list: python -m kdsweep.zoo)\n")
    assert not any(tmp_path.iterdir()), "a refused run wrote something"
