"""The kdsweep Optuna sweeper (hydra/sweeper=kdsweep_optuna): real ``python run.py -m`` sweeps on
the embedded set with tiny schedules, real SQLite Optuna and MLflow stores in tmp_path."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from kdsweep.report import write_report
from kdsweep.sweep import space as _space
from kdsweep.sweep.claims import Claims
from kdsweep.sweep.pruning import make_pruner, pruner_for_study
from kdsweep.tracking import mask_url

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses: the full tier (pytest -q)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["schedule.epochs=2", "train.limit_train_batches=3", "train.limit_val_batches=1",
        "schedule.eval_batch_size=1000", "train.progress=false", "cpu_threads=1"]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def _cmd(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), "-m", "hydra/sweeper=kdsweep_optuna", *args]


def sweep(tmp_path: Path, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(_cmd(args), cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def study_of(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name,
                             storage=f"sqlite:///{tmp_path / 'multirun' / name / 'optuna.db'}")


def mlflow_runs(tmp_path: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("kdsweep")
    return client, client.search_runs([exp.experiment_id], "", max_results=1000)


def parent_and_children(tmp_path: Path, study: str):
    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("kdsweep.study") == study]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    pid = parents[0].info.run_id
    return client, parents[0], [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]


def write_preset(tmp_path: Path, name: str, body: str) -> str:
    """A user preset in an extra config dir: ``+experiment=<name>`` via hydra.searchpath."""
    d = tmp_path / "conf" / "experiment"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.yaml").write_text("# @package _global_\n" + body)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


# ------------------------------------------------------------------------------ fast units
def test_override_grammar_matches_hydra_optuna_sweeper():
    s = _space.build({"method.alpha": "choice(0.2, 0.8)", "method.T": "range(2, 6, 2)",
                      "seed": 3}, ["schedule.lr=tag(log, interval(0.001, 0.1))",
                                   "method.beta=interval(0, 4)", "dataset=embedded"],
                     grid=False, points=None)
    d = s.distributions
    assert list(d["method.alpha"].choices) == [0.2, 0.8]
    assert (d["method.T"].low, d["method.T"].high, d["method.T"].step) == (2, 6, 2)  # end included
    assert d["schedule.lr"].log and (d["schedule.lr"].low, d["schedule.lr"].high) == (0.001, 0.1)
    assert type(d["method.beta"]).__name__ == "FloatDistribution"  # Hydra: interval() is float
    assert s.fixed == ["seed=3", "dataset=embedded"]

    g = _space.build({"method.alpha": "choice(0.2,0.8)"}, ["method.T=range(1,3)",
                                                           "schedule.lr=range(0.1,0.3,0.1)"],
                     grid=True, points=None)
    assert len(g.points) == 2 * 3 * 3 and g.points[0].values == {
        "method.alpha": 0.2, "method.T": 1, "schedule.lr": 0.1}
    assert [v for k, v in g.axes if k == "schedule.lr"][0] == [0.1, 0.2, 0.3]
    assert g.points[-1].overrides() == ["method.alpha=0.8", "method.T=3", "schedule.lr=0.3"]
    with pytest.raises(_space.SearchSpaceError, match="schedule.lr: the grid sampler needs"):
        _space.build(None, ["schedule.lr=interval(0.1,0.2)"], grid=True, points=None)

    p = _space.build(None, ["dataset=embedded"], grid=True, points=[
        {"_label_": "steplr", "schedule": "step"},
        {"_label_": "warmup 3", "schedule": "warmup_cosine", "schedule.warmup_epochs": 3}])
    assert [pt.label for pt in p.points] == ["steplr", "warmup 3"]
    assert p.points[1].overrides() == ["schedule=warmup_cosine", "schedule.warmup_epochs=3"]
    with pytest.raises(_space.SearchSpaceError, match="cannot also be swept"):
        _space.build(None, ["method.T=choice(1,2)"], grid=True, points=[{"method.alpha": 0.5}])
    assert _space.format_value("a b") == "'a b'" and _space.format_value(None) == "null"
    assert _space.format_value("0.5") == "'0.5'" and _space.format_value(1e-05) == "1e-05"


def test_a_claim_is_free_when_its_owner_died_or_its_trial_failed():
    import time as _time
    from types import SimpleNamespace

    from kdsweep import liveness
    from kdsweep.sweep.claims import PENDING, Claim

    now = _time.time()
    dead = f"{liveness.owner()['host']}:999999999:1"  # no such process on this host
    assert Claim("s", "p", f"{PENDING}x@{dead}", now).free({}, grace_period=60)
    assert not Claim("s", "p", f"{PENDING}x@{liveness.owner_tag()}", now).free({}, 60)
    assert Claim("s", "p", f"{PENDING}x@{liveness.owner_tag()}", now - 120).free({}, 60)
    failed, done = SimpleNamespace(state=TrialState.FAIL), SimpleNamespace(state=TrialState.COMPLETE)
    assert Claim("s", "p", "#3", now).free({3: failed}, 60)
    assert not Claim("s", "p", "#3", now).free({3: done}, 60)


def test_claims_are_atomic_and_pruner_is_read_from_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    a, b = Claims(url), Claims(url)
    assert a.insert("s", "p", "1") and not b.insert("s", "p", "2")
    assert b.swap("s", "p", "1", "7") and not a.swap("s", "p", "1", "8")
    assert a.get("s", "p").value == "7"

    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    assert type(pruner_for_study(study)).__name__ == "NopPruner"
    study.set_user_attr("kdsweep_pruner", {"_target_": "optuna.pruners.MedianPruner",
                                           "n_startup_trials": 2, "n_warmup_steps": 1})
    p = pruner_for_study(optuna.load_study(study_name="s", storage=url))
    assert type(p).__name__ == "MedianPruner" and p._n_startup_trials == 2
    with pytest.raises(ValueError, match="only optuna.pruners"):
        make_pruner({"_target_": "os.system"})
    assert mask_url("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"


def _sweeper_node(**options):
    """The ``hydra.sweeper`` node as Hydra composes it (TPE, median pruner), ``options`` merged in
    (a wrong type raises as at composition), the defaults list consumed."""
    import importlib

    from omegaconf import OmegaConf

    conf = importlib.import_module("hydra_plugins.kdsweep_optuna_sweeper.config")
    node = OmegaConf.structured(conf.KDSweepOptunaSweeperConf)
    node.sampler = OmegaConf.structured(conf.TPESamplerConfig)
    node.pruner = OmegaConf.structured(conf.MedianPrunerConfig)
    node.merge_with(options)
    plain = OmegaConf.to_container(node)
    plain.pop("defaults")
    return OmegaConf.create(plain)


def test_a_sweeper_option_is_declared_once_in_settings():
    """The plugin's Hydra node is Settings' fields (same names, types, defaults) plus Hydra's own
    keys, and Hydra hands every option to Settings: an option is added in settings.py alone."""
    import dataclasses
    import importlib
    import typing

    import hydra.utils

    from kdsweep.sweep.settings import ReportSettings, Settings

    conf = importlib.import_module("hydra_plugins.kdsweep_optuna_sweeper.config")
    node_fields = {f.name: f for f in dataclasses.fields(conf.KDSweepOptunaSweeperConf)}
    options = {f.name: f for f in dataclasses.fields(Settings)}
    hydra_keys = {name for name, _, _ in conf.HYDRA_KEYS}
    assert set(node_fields) == set(options) | hydra_keys
    assert set(conf.GROUP_OPTIONS) <= set(options)
    types = typing.get_type_hints(Settings)
    for name, f in options.items():
        if name not in conf.GROUP_OPTIONS:
            n = node_fields[name]
            assert (n.type, n.default, n.default_factory) == (types[name], f.default,
                                                              f.default_factory), name
    node = conf.KDSweepOptunaSweeperConf
    assert node.__module__ == conf.__name__ and getattr(conf, node.__name__) is node  # pickles

    sweeper = hydra.utils.instantiate(_sweeper_node(n_jobs=3, report={"metric": "final_val_acc"}))
    s = sweeper.sweep_impl.s
    assert isinstance(s, Settings) and (s.n_jobs, s.fuse) == (3, Settings.fuse)
    assert s.report == ReportSettings(metric="final_val_acc")
    assert s.pruner["_target_"] == "optuna.pruners.MedianPruner" and s.pruner["n_startup_trials"] == 5


def test_every_sweeper_option_is_in_the_docs_table():
    import dataclasses

    from kdsweep.sweep.settings import ReportSettings, Settings

    text = (ROOT / "docs" / "sweeps.md").read_text().split("## Configuration")[1].split("\n\n")
    table = next(block for block in text if block.startswith("| key |"))
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "report"]
    names += [f"report.{f.name}" for f in dataclasses.fields(ReportSettings)]
    assert [n for n in names if f"`{n}`" not in table] == []


@pytest.mark.parametrize("option,value", [("n_jobs", 0), ("fuse", 0), ("max_failure_rate", 1.5),
                                          ("direction", "up"), ("grace_period", 5),
                                          ("heartbeat_interval", 0)])
def test_a_bad_sweeper_option_is_refused_in_one_line_naming_it(option, value, capsys):
    import hydra.utils
    from omegaconf.errors import ValidationError

    with pytest.raises(SystemExit) as e:
        hydra.utils.instantiate(_sweeper_node(**{option: value}))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: hydra.sweeper.") and option in err, err
    with pytest.raises(ValidationError, match="n_jobs"):  # a wrong type: Hydra, at composition
        _sweeper_node(n_jobs="abc")


# ------------------------------------------------------------------------ real sweeps
def test_two_sweepers_share_a_grid_without_repeating_a_point(tmp_path, teacher):
    """Two processes, one SQLite study, a 3 x 2 grid: each point runs exactly once; one MLflow
    parent with every trial as its child; the report's table holds the children's metrics."""
    from mlflow.tracking import MlflowClient as Client

    Client(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("kdsweep")
    args = ["hydra/sweeper/sampler=grid", "hydra.sweeper.study_name=g", "hydra.sweeper.fuse=1",
            "method.alpha=choice(0.2,0.5,0.8)", "method.T=choice(2,4)", "teacher=resnet8",
            f"teacher.checkpoint={teacher}", *TINY]
    procs = [subprocess.Popen(_cmd(args + [f"hydra.sweep.dir=multirun/g{i}"]), cwd=tmp_path,
                              env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-4000:] for o in outs]

    trials = study_of(tmp_path, "g").get_trials()
    points = [(t.params["method.alpha"], t.params["method.T"]) for t in trials
              if t.state == TrialState.COMPLETE]
    assert sorted(points) == [(a, t) for a in (0.2, 0.5, 0.8) for t in (2, 4)]  # each once
    assert all(t.state == TrialState.COMPLETE for t in trials)
    launched = [sum(line.startswith("kdsweep: trial t") for line in (o[0] + o[1]).splitlines())
                for o in outs]
    assert sum(launched) == 6, launched
    print("trials per sweeper:", launched)

    client, parent, children = parent_and_children(tmp_path, "g")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.sampler"] == "GridSampler"
    assert len(children) == 6 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == list(range(6))
    assert {c.data.tags["optuna.study"] for c in children} == {"g"}
    by_point = {(c.data.params["method.alpha"], c.data.params["method.T"]): c for c in children}
    best = max(c.data.metrics["best_val_acc"] for c in children)
    assert client.get_run(parent.info.run_id).data.metrics["best_val_acc"] == pytest.approx(best)

    rep = write_report(tmp_path / "multirun" / "g", log_to_parent=False)
    (table,) = rep.tables
    assert (table.row_labels, table.col_labels) == (["0.2", "0.5", "0.8"], ["2", "4"])
    for i, a in enumerate(table.row_labels):
        for j, t in enumerate(table.col_labels):
            assert table.values()[i][j] == by_point[(a, t)].data.metrics["best_val_acc"]
    assert "**" in rep.markdown and "| alpha \\ T | 2 | 4 |" in rep.markdown
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/heatmap.png", "report/curves.png"} <= logged


def test_resume_runs_only_missing_points_and_failures_do_not_stop_it(tmp_path, teacher):
    """n_trials=2 of 3 points, then the rest: nothing runs twice, the same parent run is reused;
    a trial whose loss is NaN is FAILED in Optuna and MLflow with its reason, the sweep goes on,
    and ends with exit status 3, the count and the command that retries it."""
    sp = write_preset(tmp_path, "t_fail", """
hydra:
  sweeper:
    study_name: f
    points:
      - {method.alpha: 0.5, schedule.lr: 0.05}
      - {method.alpha: 0.8, schedule.lr: 0.05}
      - {method.alpha: 0.5, schedule.lr: 1.0e8}
""")
    base = [sp, "+experiment=t_fail", "hydra/sweeper/sampler=grid", "teacher=resnet8",
            f"teacher.checkpoint={teacher}", *TINY]
    sweep(tmp_path, base + ["hydra.sweeper.n_trials=2"])
    study = study_of(tmp_path, "f")
    assert [(t.state, t.params["method.alpha"]) for t in study.get_trials()] == [
        (TrialState.COMPLETE, 0.5), (TrialState.COMPLETE, 0.8)]
    _, parent1, _ = parent_and_children(tmp_path, "f")

    p = subprocess.run(_cmd(base), cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=300)  # n_trials: null = every point
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-5000:]
    assert "2/3 trials done or running; running up to 1 now" in p.stderr + p.stdout
    assert "2 complete, 0 pruned, 1 failed (points)" in p.stdout
    assert "kdsweep: 1 of 3 points did not finish: 1 failed, 0 not run" in p.stderr
    retry = p.stderr.rstrip().splitlines()[-1].split("retry them (finished points are kept): ")[1]
    assert shlex.split(retry)[:3] == ["python", str(ROOT / "run.py"), "-m"]
    assert "experiment=t_fail" in retry and f"teacher.checkpoint={teacher}" in retry
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    assert "TrainingDiverged" in trials[2].user_attrs["error"]

    _, parent, children = parent_and_children(tmp_path, "f")
    assert parent.info.run_id == parent1.info.run_id and parent.info.status == "FAILED"
    status = {int(c.data.tags["optuna.trial"]): c.info.status for c in children}
    assert status == {0: "FINISHED", 1: "FINISHED", 2: "FAILED"}
    errors = {int(c.data.tags["optuna.trial"]): c.data.tags.get("kdsweep.error", "")
              for c in children}
    assert "TrainingDiverged" in errors[2] and not errors[0]
    (table,) = write_report(tmp_path / "multirun" / "f", log_to_parent=False).tables
    assert (table.row_labels, table.col_labels) == (["0.5", "0.8"], ["0.05", "100000000.0"])
    texts = [[c.text() for c in row] for row in table.cells]
    assert texts[0][1] == "failed" and texts[1][1] == ""
    metric = {int(c.data.tags["optuna.trial"]): c.data.metrics.get("best_val_acc") for c in children}
    assert [table.values()[0][0], table.values()[1][0]] == [metric[0], metric[1]]


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_anything_is_written(tmp_path, teacher):
    """A preset point, a command-line choice, a range bound: one line, exit status 2, and no
    output folder, no Optuna study, no MLflow store."""
    sp = write_preset(tmp_path, "t_bad", """
hydra:
  sweeper:
    study_name: bad
    points:
      - {method.alpha: 0.5}
      - {method.alpha: 0.5, schedule.warmup_epochs: 5}
""")
    cases = {
        "point": ([sp, "+experiment=t_bad"], "sweep point method.alpha=0.5 "
                  "schedule.warmup_epochs=5: schedule.warmup_epochs=5 must be shorter than "
                  "schedule.epochs=2"),
        "choice": (["method.alpha=choice(0.5,1.5)"], "method.alpha=1.5 is out of range"),
        "range": (["hydra/sweeper/sampler=tpe", "hydra.sweeper.n_trials=2",
                   "schedule.lr=interval(0.1,inf)"], "schedule.lr=inf must be a finite number"),
        "data": (["dataset=choice(embedded,cifar100)"], "cifar100: no data under"),
        # (model names and each option's range go through the same check: tests/test_ranges.py)
    }
    for name, (args, message) in cases.items():
        p = subprocess.run(_cmd(["hydra/sweeper/sampler=grid", "teacher=resnet8",
                                 f"teacher.checkpoint={teacher}", *TINY, *args]),
                           cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                           timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and message in lines[0], (name, p.stderr)
        assert sorted(f.name for f in tmp_path.iterdir()) == ["conf", "teacher.pt"], name


def test_tpe_sweep_in_parallel_with_joblib(tmp_path, teacher):
    """4 TPE trials, 2 at a time through the joblib launcher (falls back to the basic launcher
    when hydra-joblib-launcher is not installed): distinct trials, children, a list report."""
    try:
        import hydra_plugins.hydra_joblib_launcher  # noqa: F401
        launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    except ImportError:
        launcher = []
    sweep(tmp_path, [*launcher, "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
                     "hydra.sweeper.study_name=t", "hydra.sweeper.sampler.seed=1",
                     "method.alpha=interval(0.1,0.9)", "method.T=choice(1,2,4,8)",
                     "schedule.lr=tag(log,interval(0.01,0.2))", "teacher=resnet8",
                     f"teacher.checkpoint={teacher}", *TINY, "schedule.epochs=1"], timeout=400)
    trials = study_of(tmp_path, "t").get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    _, parent, children = parent_and_children(tmp_path, "t")
    assert parent.data.params["sweep.sampler"] == "TPESampler"
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    rep = write_report(tmp_path / "multirun" / "t", log_to_parent=False)
    (table,) = rep.tables
    assert table.kind == "list" and table.extra_cols == ["alpha", "T", "lr"]
    by_trial = {c.data.tags["optuna.trial"]: c.data.metrics["best_val_acc"] for c in children}
    assert {lab: v[0] for lab, v in zip(table.row_labels, table.values(), strict=True)} == by_trial
    values = [v[0] for v in table.values()]
    assert values == sorted(values, reverse=True)


def test_median_pruner_stops_a_poor_trial(tmp_path):
    """Five normal trials, then one with a tiny LR: its val_acc after epoch 1 is below the median
    of the others at epoch 1, so it is pruned there (PRUNED in Optuna, KILLED in MLflow)."""
    sp = write_preset(tmp_path, "t_prune", """
hydra:
  sweeper:
    study_name: p
    points: [{schedule.lr: 0.1}, {schedule.lr: 0.15}, {schedule.lr: 0.2}, {schedule.lr: 0.25},
             {schedule.lr: 0.3}, {schedule.lr: 1.0e-7}]
""")
    # MedianPruner's defaults (5 startup trials, no warmup) also hold where a trial process
    # would build Optuna's default pruner instead of the study's.
    # fuse=1: trials one after another (fused, the six would reach epoch 1 together, before the
    # five the median needs had finished)
    sweep(tmp_path, [sp, "+experiment=t_prune", "hydra/sweeper/sampler=grid", "hydra.sweeper.fuse=1",
                     "hydra/sweeper/pruner=median", "method=ce", "student=resnet8",
                     "schedule=cosine", *TINY, "train.limit_train_batches=6"])
    trials = study_of(tmp_path, "p").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5 + [TrialState.PRUNED]
    assert list(trials[5].intermediate_values) == [1]
    assert all(list(t.intermediate_values) == [1, 2] for t in trials[:5])
    client, _, children = parent_and_children(tmp_path, "p")
    (pruned,) = [c for c in children if c.data.tags["optuna.trial"] == "5"]
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned_at_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "acc/val")] == [1]
    rep = write_report(tmp_path / "multirun" / "p", log_to_parent=False)
    assert rep.tables[0].cells[5][0].text() == "pruned (epoch 1)"


def test_killed_sweep_is_resumed(tmp_path, teacher):
    """SIGKILL a sweep during its second trial; the same command fails that trial (its process is
    gone), reruns its point and the missing ones, and reuses the parent run."""
    args = ["hydra/sweeper/sampler=grid", "hydra.sweeper.study_name=k", "hydra.sweeper.fuse=1",
            "method.alpha=choice(0.2,0.8)", "method.T=choice(2,4)", "teacher=resnet8",
            f"teacher.checkpoint={teacher}", *TINY, "schedule.epochs=3"]  # one trial a job
            # (a killed fused sweep: tests/test_soak.py)
    proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = tmp_path / "multirun" / "k" / "optuna.db"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.3)
            if proc.poll() is not None:
                pytest.fail("the sweep ended before it could be killed")
            try:
                trials = study_of(tmp_path, "k").get_trials()
            except Exception:
                continue
            if [t.state for t in trials] == [TrialState.COMPLETE, TrialState.RUNNING]:
                break
        else:
            pytest.fail("the sweep never reached its second trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert db.exists()

    sweep(tmp_path, args)
    trials = study_of(tmp_path, "k").get_trials()
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["error"] == "its sweeper process died"
    done = sorted((t.params["method.alpha"], t.params["method.T"]) for t in trials
                  if t.state == TrialState.COMPLETE)
    assert done == [(0.2, 2), (0.2, 4), (0.8, 2), (0.8, 4)]
    assert len(trials) == 5
    _, parent, children = parent_and_children(tmp_path, "k")
    assert parent.info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    finished = {(c.data.params["method.alpha"], c.data.params["method.T"])
                for c in children if c.info.status == "FINISHED"}
    assert finished == {("0.2", "2"), ("0.2", "4"), ("0.8", "2"), ("0.8", "4")}


