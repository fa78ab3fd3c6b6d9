"""Bad input is refused up front with one clear line and nothing written; parallel runs lose nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import kdsweep.tracking.retries as tracking_retry
from kdsweep.engine import save_checkpoint
from kdsweep.errors import KDSweepError
from kdsweep.models import create_model
from kdsweep.run import run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["schedule.epochs=2", "train.limit_train_batches=2", "train.limit_val_batches=1",
        "schedule.eval_batch_size=100", "train.progress=false"]

BAD = [
    (["method.alpha=1.5"], r"method\.alpha=1\.5 is out of range; allowed: \[0, 1\]"),
    (["method.T=0"], r"method\.T=0 is out of range; allowed: \(0, inf\]"),
    (["method=at", "method.feat_weight=-1"], r"method\.feat_weight=-1 is out of range"),
    (["schedule.lr=0"], r"schedule\.lr=0.* must be > 0"),
    (["schedule.epochs=0"], r"schedule\.epochs=0 must be an integer in \[1, 100000\]"),
    (["schedule.warmup_epochs=9"], r"schedule\.warmup_epochs=9(\.0)? must be shorter than schedule\.epochs=2"),
    (["schedule.batch_size=6000"], r"schedule\.batch_size=6000 is larger than the 5000 training images"),
    (["schedule.optimizer=lbfgs"], r"schedule\.optimizer='lbfgs' is not supported; valid: sgd, adamw"),
    (["precision=fp8"], r"precision='fp8' is not supported; valid: auto, fp32, bf16, fp16"),
    (["cpu_threads=0"], r"cpu_threads=0 must be an integer in \[1, 4096\] or null"),
    (["dataset=imagefolder", "dataset.root=/nonexistent/tree"], r"/nonexistent/tree"),
    (["teacher.checkpoint=/nonexistent/teacher.pt"], r"checkpoint '/nonexistent/teacher\.pt' does not exist"),
    (["+method.gamma=2"], r"method 'kd' has no option method\.gamma; valid: method\.T, method\.alpha"),
    (["schedule.lr=inf"], r"schedule\.lr=inf must be a finite number"),
    (["schedule.weight_decay=inf"], r"schedule\.weight_decay=inf must be a finite number"),
    (["schedule.momentum=inf"], r"schedule\.momentum=inf must be a finite number"),
    (["schedule.epochs=99999999999999999999999"], r"schedule\.epochs=99999999999999999999999 must be an integer in"),
    (["schedule.batch_size=4294967296"], r"schedule\.batch_size=4294967296 must be an integer in"),
    (["+unknown_key=1"], r"unknown config key 'unknown_key'"),
    (["+train.foo=1"], r"unknown config key 'train\.foo'"),
    (["tracking.uri=foo://host/db"], r"tracking\.uri='foo://host/db' has an unknown scheme 'foo'"),
    (["student=resnet50"], r"student=resnet50: model 'resnet50' was renamed: use 'tv_resnet50'"),
]
if not torch.cuda.is_available():
    BAD.append((["device=cuda"], r"device='cuda' but CUDA is not available here"))


def no_runs() -> bool:
    exp = MlflowClient().get_experiment_by_name("kdsweep")
    return exp is None or not MlflowClient().search_runs([exp.experiment_id], run_view_type=3)


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(overrides, message, compose, mlflow_uri, tmp_path):
    with pytest.raises(KDSweepError, match=message) as e:
        run(compose([*TINY, *overrides]), output_dir=tmp_path / "out")  # the case wins
    assert "\n" not in str(e.value)
    assert not (tmp_path / "mlflow.db").exists(), "a refused run created the MLflow store"
    assert not (tmp_path / "out" / "checkpoints").exists()


BAD_FILES = {
    "teacher checkpoint is a text file": ("teacher.pt", b"not a checkpoint\n",
                                          ["teacher.checkpoint={f}"], r"not a PyTorch checkpoint"),
    "teacher checkpoint is empty": ("teacher.pt", b"", ["teacher.checkpoint={f}"],
                                    r"checkpoint '.*teacher\.pt' is empty"),
    "mlflow.db is not a database": ("store.db", b"garbage" * 100,
                                    ["tracking.uri=sqlite:///{f}"], r"is not an SQLite database"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_files_are_one_line(case, compose, mlflow_uri, tmp_path):
    name, content, overrides, message = BAD_FILES[case]
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(KDSweepError, match=message) as e:
        run(compose([*TINY, *(o.format(f=f) for o in overrides)]), output_dir=tmp_path / "out")
    assert "\n" not in str(e.value)
    assert f.read_bytes() == content  # nothing overwritten
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("override,key", [("schedule.batch_size=inf", "schedule.batch_size"),
                                          ("seed=abc", "seed"), ("method.T=abc", "method.T")])
def test_unconvertible_values_fail_at_composition_naming_the_key(override, key, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), override], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert p.returncode == 2 and key in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr  # one line
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("argv,expected", [
    (["train.horizontal=maybe"], r"train.horizontal=maybe; Value 'maybe' is not a valid bool"),
    (["method=nosuch"], r"method=nosuch: no such method; valid: ab, at, cc, ce,"),
    (["foo.bar=1"], r"foo.bar: no key 'foo' in the config"),
    (["method.alpha=0.2,0.8"], r"method.alpha=0.2,0.8: a sweep needs -m"),
    (["-m", "method.alpha=0.2,abc"], r"method.alpha=abc; Value 'abc' .* could not be converted"),
    (["-m", "method=kd,at", "method.alpha=0.5"], r"at has no option 'alpha'"),  # (at, alpha)
])
def test_a_bad_command_line_is_one_line_before_hydra_starts(argv, expected):
    from kdsweep.config.cli import check

    error = check(argv, ROOT / "conf")
    assert error is not None and "\n" not in error and re.search(expected, error), error


@pytest.mark.parametrize("argv", [[], ["-m", "method.alpha=0.2,0.8", "method.T=2,4"],
                                  ["-m", "experiment=alpha_t_grid_wrn", "debug=smoke",
                                   "hydra.sweeper.fuse=16"],
                                  ["-m", "method=kd,dkd", "method.T=interval(1,8)"],
                                  ["hydra.mode=MULTIRUN", "method.alpha=0.2,0.8"],
                                  ["--config-dir", "/tmp", "schedule.epochs=3"],  # extra search dir
                                  ["--help"], ["--cfg", "job", "schedule.epochs=3"]])
def test_good_command_lines_pass_the_check(argv):
    from kdsweep.config.cli import check

    assert check(argv, ROOT / "conf") is None


def test_retry_waits_out_a_locked_database(monkeypatch):
    monkeypatch.setattr(tracking_retry.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking_retry.retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        tracking_retry.retry(lambda: (_ for _ in ()).throw(ValueError("other")))


@pytest.mark.slow
def test_four_parallel_runs_on_one_sqlite_store_lose_nothing(tmp_path, mlflow_uri):
    ckpt = tmp_path / "t.pt"
    save_checkpoint(ckpt, {"arch": "resnet8", "num_classes": 10,
                           "model": create_model("resnet8", num_classes=10).state_dict()})
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("kdsweep")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    epochs = 2
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "teacher=resnet8", f"teacher.checkpoint={ckpt}",
         "student=resnet8", f"seed={i}", "cpu_threads=1",
         *[o for o in TINY if not o.startswith("schedule.epochs")], f"schedule.epochs={epochs}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    client = MlflowClient()
    exp = client.get_experiment_by_name("kdsweep")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    for r in runs:
        assert r.info.status == "FINISHED"
        for key in ("loss/train", "acc/val", "opt/lr", "perf/images_per_s"):
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (key, steps)


def test_diverging_run_stops_and_is_failed_with_its_reason(compose, mlflow_uri, tmp_path):
    from kdsweep.errors import TrainingDiverged

    ckpt = tmp_path / "t.pt"
    save_checkpoint(ckpt, {"arch": "resnet8", "num_classes": 10,
                           "model": create_model("resnet8", num_classes=10).state_dict()})
    cfg = compose([*TINY, "teacher=resnet8", f"teacher.checkpoint={ckpt}", "schedule.lr=1e8",
                   "schedule.warmup_epochs=0", "train.limit_train_batches=10"])
    with pytest.raises(TrainingDiverged, match=r"loss became non-finite .*\((ce|kd)=(nan|inf)"):
        run(cfg, output_dir=tmp_path / "out")
    exp = MlflowClient().get_experiment_by_name("kdsweep")
    (r,) = MlflowClient().search_runs([exp.experiment_id])
    assert r.info.status == "FAILED"
    assert r.data.tags["kdsweep.error"].startswith("TrainingDiverged: loss became")


OPEN = """
import sys
from kdsweep.tracking import open_store
print(open_store(sys.argv[1], "kdsweep", sys.argv[2]), flush=True)
"""


def test_concurrent_first_use_of_a_fresh_store(tmp_path):
    """Four processes open one fresh SQLite store at once: all succeed, one schema, one experiment
    (without the lock, 3 of 4 died here and one left the store half-migrated)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, uri, str(tmp_path / "locks")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-2000:] for _, e in outs]
    assert {o.strip() for o, _ in outs} == {"1"}


def test_a_run_leaves_no_lock_file_beside_the_store(compose, mlflow_uri, tmp_path):
    """The store's lock lives in tracking.lock_dir, not as mlflow.db.kdsweep.lock in the user's
    folder (an untracked file git would show)."""
    run(compose([*TINY, "method=ce", "schedule.epochs=1"]), output_dir=tmp_path / "out")
    assert (tmp_path / "mlflow.db").exists()
    assert not list(tmp_path.glob("*.lock")), sorted(p.name for p in tmp_path.iterdir())
    assert [p.name for p in (tmp_path / ".kdsweep" / "locks").glob("tracking-*.lock")]


def test_a_half_migrated_store_without_runs_is_recreated(tmp_path):
    import sqlite3

    from kdsweep.tracking import open_store

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:  # what an interrupted first migration leaves behind
        con.execute("create table alembic_version (version_num varchar(32) not null)")
        con.execute("insert into alembic_version values ('not-a-revision')")
        con.execute("create table _alembic_tmp_params (x int)")
    assert open_store(f"sqlite:///{db}", "kdsweep", tmp_path / "locks") == "1"
    assert list(tmp_path.glob("mlflow.db.broken-*"))


def test_a_broken_store_with_runs_is_refused_in_one_line(tmp_path):
    import sqlite3

    from kdsweep.errors import TrackingError
    from kdsweep.tracking import open_store

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("create table alembic_version (version_num varchar(32) not null)")
        con.execute("insert into alembic_version values ('not-a-revision')")
        con.execute("create table runs (run_uuid varchar(32))")
        con.execute("insert into runs values ('abc')")
    with pytest.raises(TrackingError, match="mlflow db upgrade") as e:
        open_store(f"sqlite:///{db}", "kdsweep", tmp_path / "locks")
    assert "\n" not in str(e.value) and db.exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}",
                                 "postgresql://kd:secret@127.0.0.1:{port}/mlflow"])
def test_an_unreachable_tracking_server_is_refused_in_seconds(uri, tmp_path):
    """A refused connection is one line (password masked), exit status 2, and nothing is
    written, without MLflow's own retries: those last minutes, past the subprocess timeout (no
    tighter timing here: a process start alone took 16 s on a loaded 2-core machine)."""
    uri = uri.format(port=_closed_port())
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), f"tracking.uri={uri}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "cannot be reached" in p.stderr and "secret" not in p.stderr + p.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_check_runs_every_check_a_run_makes(tmp_path, monkeypatch):
    """Values Hydra composes but a run refuses (ranges, files) are refused by the same check."""
    from kdsweep.config.cli import check
    from kdsweep.run.job import check as preflight

    monkeypatch.chdir(tmp_path)
    conf = ROOT / "conf"
    assert "method.alpha=1.5 is out of range" in check(["method.alpha=1.5"], conf, preflight=preflight)
    assert "method.alpha=1.5" in check(["-m", "hydra/sweeper=basic", "method.alpha=0.5,1.5"], conf,
                                       preflight=preflight)  # kdsweep's sweeper checks its own
    assert "does not exist" in check(["teacher.checkpoint=nope.pt"], conf, preflight=preflight)
    assert "cifar10: no data under" in check(["dataset=cifar10"], conf, preflight=preflight)
    assert check(["--cfg", "job", "dataset=cifar10"], conf, preflight=preflight) is None
    assert check(["method.alpha=0.5"], conf, preflight=preflight) is None


def test_tracking_defaults_are_written_once_in_code():
    """The default store and lock dir are TrackingConf's; the plugin and the report
    derive them from it (README.md and docs/ may name them for users)."""
    root = Path(__file__).resolve().parents[1]
    code = [*(root / "kdsweep").rglob("*.py"), *(root / "hydra_plugins").rglob("*.py")]
    for value in ("sqlite:///mlflow.db", ".kdsweep/locks"):
        where = [str(p.relative_to(root)) for p in code if value in p.read_text()]
        assert where == ["kdsweep/config/schema.py"], (value, where)

