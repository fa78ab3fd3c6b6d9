"""kdsweep against a real PostgreSQL server (tests/pg_server.py starts a private one, or skips).

* one ``python run.py`` (a teacher trained first, then KD) tracked in PostgreSQL through
  ``tracking.uri=postgresql://user:password@...``;
* the multi-machine sweep of docs/scaling.md: two kdsweep Optuna sweepers started at once on one
  2 x 2 grid study, Optuna storage and MLflow store both in PostgreSQL (``MLFLOW_TRACKING_URI``);
* the password of those URLs must not be written anywhere: files under the launch directory
  (outputs/, multirun/, sweep.json, MLflow artifacts, checkpoints), MLflow params and tags.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

if TYPE_CHECKING:
    from pg_server import PostgresServer

pytest_plugins = ["pg_server"]  # the postgres_server fixture
pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses: the full tier (pytest -q)
ROOT = Path(__file__).resolve().parents[1]
TINY = ["schedule.epochs=2", "train.limit_train_batches=2", "train.limit_val_batches=1",
        "schedule.eval_batch_size=100", "train.progress=false", "cpu_threads=1"]
GRID = ["hydra/sweeper=kdsweep_optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.fuse=1",
        "hydra.sweeper.study_name=pg_grid", "method.alpha=choice(0.2,0.8)", "method.T=choice(2,4)"]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k != "MLFLOW_TRACKING_URI" and not k.startswith("PG")}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1", **extra}


def _run_py(args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *args]


# ------------------------------------------------------------------------- leak checks
def files_containing(root: Path, secret: str) -> list[str]:
    """Paths under ``root`` (relative) whose bytes contain ``secret``; zip files (torch
    checkpoints) are searched member by member too, reported as ``path!member``."""
    needle = secret.encode()
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        data = path.read_bytes()
        if needle in data:
            found.append(rel)
        elif zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as z:
                    found += [f"{rel}!{m}" for m in z.namelist() if needle in z.read(m)]
            except (zipfile.BadZipFile, OSError):
                pass
    return found


def mlflow_fields_containing(tracking_uri: str, secret: str) -> list[str]:
    """``run <name>: param|tag <key>`` for every MLflow param or tag value (and run name,
    experiment artifact location or tag) that contains ``secret``."""
    client = MlflowClient(tracking_uri=tracking_uri)
    found = []
    for exp in client.search_experiments():
        if secret in exp.artifact_location:
            found.append(f"experiment {exp.name}: artifact_location")
        found += [f"experiment {exp.name}: tag {k}" for k, v in exp.tags.items() if secret in v]
        for r in client.search_runs([exp.experiment_id], "", max_results=1000):
            who = f"run {r.info.run_name or r.info.run_id}"
            found += [f"{who}: param {k}" for k, v in r.data.params.items() if secret in v]
            found += [f"{who}: tag {k}" for k, v in r.data.tags.items() if secret in v]
            if secret in (r.info.run_name or ""):
                found.append(f"{who}: run name")
    return found


def database_rows_containing(url: str, secret: str) -> list[str]:
    """``table: n rows`` for every table of the database at ``url`` with rows containing
    ``secret`` (MLflow's and Optuna's own tables, kdsweep's claims)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    found = []
    try:
        with engine.connect() as c:
            for table in sa.inspect(c).get_table_names():
                rows = c.execute(sa.text(f'SELECT * FROM "{table}"')).all()
                n = sum(secret in str(tuple(row)) for row in rows)
                if n:
                    found.append(f"{table}: {n} rows")
    finally:
        engine.dispose()
    return found


# ---------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> str:
    from kdsweep.engine import save_checkpoint
    from kdsweep.models import create_model

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, {"arch": "resnet8", "num_classes": 10,
                           "model": create_model("resnet8", num_classes=10).state_dict()})
    return str(path)


@dataclass
class Launch:
    cwd: Path
    tracking_uri: str
    outputs: list[tuple[str, str]]   # (stdout, stderr) of each process
    seconds: float
    storage: str | None = None


@pytest.fixture(scope="module")
def single_run(postgres_server: PostgresServer, tmp_path_factory) -> Launch:
    """``python run.py`` (KD; its teacher is trained first) with tracking.uri=postgresql://."""
    cwd = tmp_path_factory.mktemp("single")
    uri = postgres_server.url(postgres_server.create_database("single_mlflow"))
    started = time.perf_counter()
    p = subprocess.run(_run_py(["teacher=resnet8", "student=resnet8", *TINY, f"tracking.uri={uri}"]),
                       cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)
    seconds = time.perf_counter() - started
    assert p.returncode == 0, (p.stdout[-3000:] + p.stderr[-5000:]).replace(
        postgres_server.password, "<password>")
    return Launch(cwd, uri, [(p.stdout, p.stderr)], seconds)


@pytest.fixture(scope="module")
def two_sweepers(postgres_server: PostgresServer, tmp_path_factory, teacher_ckpt) -> Launch:
    """Two sweeper processes started together on one grid study, as on two machines: the same
    command, storage and MLflow store (fresh databases); only their sweep dirs differ."""
    cwd = tmp_path_factory.mktemp("sweep")
    pg = postgres_server
    tracking = pg.url(pg.create_database("sweep_mlflow"), driver="psycopg")
    storage = pg.url(pg.create_database("sweep_optuna"), driver="psycopg")
    args = [*GRID, f"hydra.sweeper.storage={storage}", "teacher=resnet8",
            f"teacher.checkpoint={teacher_ckpt}", *TINY]
    env = _env(MLFLOW_TRACKING_URI=tracking)
    # Fresh databases, no `mlflow db upgrade`: the sweepers create the MLflow schema themselves,
    # at the same moment (kdsweep.tracking.open_store retries what the other one created).
    started = time.perf_counter()
    procs = [subprocess.Popen(_run_py(["-m", *args, f"hydra.sweep.dir=multirun/host{i}"]),
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=500) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.perf_counter() - started
    assert all(p.returncode == 0 for p in procs), [
        (p.returncode, err[-4000:].replace(pg.password, "<password>"))
        for p, (_, err) in zip(procs, outs, strict=True)]
    return Launch(cwd, tracking, outs, seconds, storage)


# ------------------------------------------------------------------------------- tests
def test_postgres_urls_use_psycopg3():
    """SQLAlchemy >= 2.1 reads plain ``postgresql://`` as psycopg 3 (2.0: psycopg2), which is
    what the ``postgres`` extra installs; ``postgresql+psycopg://`` names it on any 2.x."""
    import sqlalchemy as sa

    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    explicit = sa.create_engine("postgresql+psycopg://u:p@127.0.0.1:1/db")
    assert explicit.dialect.driver == "psycopg"
    major, minor = (int(x) for x in sa.__version__.split(".")[:2])
    if (major, minor) >= (2, 1):
        assert sa.create_engine("postgresql://u:p@127.0.0.1:1/db").dialect.driver == "psycopg"


def test_single_run_is_tracked_in_postgres(single_run: Launch):
    out = single_run.outputs[0][0]
    assert "training one first" in out and "kdsweep: kd run finished" in out
    client = MlflowClient(tracking_uri=single_run.tracking_uri)
    exp = client.get_experiment_by_name("kdsweep")
    # No tracking server: the experiment's artifacts go to ./mlruns of the directory of the
    # process that created the experiment (MLflow's default root for database stores).
    assert exp.artifact_location == str(single_run.cwd / "mlruns" / exp.experiment_id)
    runs = {r.data.tags["method"]: r for r in client.search_runs([exp.experiment_id], "")}
    assert set(runs) == {"ce", "kd"}
    teacher, student = runs["ce"], runs["kd"]
    assert teacher.info.status == student.info.status == "FINISHED"
    assert student.data.tags["teacher_source"] == "trained"
    assert student.data.tags["teacher_run_id"] == teacher.info.run_id
    for key in ("best_val_acc", "final_val_acc", "train_val_gap"):
        assert key in student.data.metrics, key
    for key in ("teacher.val_acc", "cost.student_params", "cost.compression_ratio"):
        assert key in student.data.params, key
    for key in ("loss/train", "acc/val", "loss/kd", "opt/lr"):
        assert [m.step for m in client.get_metric_history(student.info.run_id, key)] == [1, 2]
    assert student.data.params["method.name"] == "kd" and student.data.params["schedule.epochs"] == "2"
    for r in (teacher, student):
        assert r.info.artifact_uri.startswith(exp.artifact_location)
        assert {"config.yaml", "checkpoints"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert "hydra" in {a.path for a in client.list_artifacts(student.info.run_id)}
    local = single_run.cwd / "mlruns" / exp.experiment_id / student.info.run_id / "artifacts"
    assert (local / "checkpoints" / "best.pt").is_file()
    print(f"single run: {single_run.seconds:.1f} s")


def test_two_sweepers_share_one_postgres_study(two_sweepers: Launch):
    study = optuna.load_study(study_name="pg_grid", storage=two_sweepers.storage)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state) for t in trials]
    points = sorted((t.params["method.alpha"], t.params["method.T"]) for t in trials)
    assert points == [(0.2, 2), (0.2, 4), (0.8, 2), (0.8, 4)]  # each grid point exactly once
    launched = [sum(line.startswith("kdsweep: trial t") for line in (o + e).splitlines())
                for o, e in two_sweepers.outputs]
    assert sum(launched) == 4, launched

    client = MlflowClient(tracking_uri=two_sweepers.tracking_uri)
    exp = client.get_experiment_by_name("kdsweep")
    runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kdsweep.study") == "pg_grid"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5  # the parent and its four children, nothing else
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.sampler"] == "GridSampler"
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == [t.number for t in trials]
    assert all(c.info.status == "FINISHED" for c in children)
    by_trial = {int(c.data.tags["optuna.trial"]): c for c in children}
    for t in trials:
        c = by_trial[t.number]
        assert (c.data.params["method.alpha"], c.data.params["method.T"]) == (
            str(t.params["method.alpha"]), str(t.params["method.T"]))
        assert c.data.metrics["best_val_acc"] == pytest.approx(t.value)
        assert "checkpoints" in {a.path for a in client.list_artifacts(c.info.run_id)}
    print(f"two sweepers: {two_sweepers.seconds:.1f} s, trials per sweeper {launched}")


def test_passwords_never_leak(postgres_server: PostgresServer, single_run: Launch,
                              two_sweepers: Launch):
    secret = postgres_server.password
    leaks = {}
    for name, launch in (("single run", single_run), ("two sweepers", two_sweepers)):
        leaks[name] = {"files": files_containing(launch.cwd, secret),
                       "mlflow": mlflow_fields_containing(launch.tracking_uri, secret),
                       "databases": [f"{db} {hit}" for db, url in (
                           ("mlflow", launch.tracking_uri), ("optuna", launch.storage)) if url
                           for hit in database_rows_containing(url, secret)],
                       "console": [f"process {i} {stream}" for i, pair in enumerate(launch.outputs)
                                   for stream, text in zip(("stdout", "stderr"), pair, strict=True)
                                   if secret in text]}
    print("password found in:", leaks)
    assert not any(v for d in leaks.values() for k, v in d.items() if k != "console"), leaks


# ------------------------------------------------------- first use of fresh databases, at once
PARENT_RUN = """
import sys, tempfile
from kdsweep.tracking import open_store

print("ready", flush=True)
sys.stdin.readline()
try:  # each its own lock directory: as on two machines
    print("ok", open_store(sys.argv[1], "kdsweep", tempfile.mkdtemp()), flush=True)
except Exception as e:
    print("error", type(e).__name__, str(e).splitlines()[0], flush=True)
"""


def test_fresh_mlflow_database_opened_at_once(postgres_server: PostgresServer, tmp_path):
    """What two sweepers of one study do first, in two processes released at the same instant."""
    uri = postgres_server.url(postgres_server.create_database("fresh_mlflow"), driver="psycopg")
    env = _env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", PARENT_RUN, uri], cwd=tmp_path, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        for p in procs:  # release both
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=120)[0].strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    print(results)
    assert results == ["ok 1", "ok 1"], results


def test_claims_table_created_by_another_sweeper_meanwhile(postgres_server: PostgresServer):
    """Another sweeper's CREATE TABLE kdsweep_claims commits while ours waits on it."""
    import threading

    import psycopg

    from kdsweep.sweep.claims import Claims

    pg = postgres_server
    db = pg.create_database("claims_race")
    other = psycopg.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password,
                            dbname=db)
    other.execute("CREATE TABLE kdsweep_claims (study varchar(512), key varchar(1024), "
                  "value varchar(512) NOT NULL, claimed_at float NOT NULL, PRIMARY KEY (study, key))")
    errors: list[BaseException] = []

    def ours() -> None:
        try:
            Claims(pg.url(db)).dispose()
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=ours)
    t.start()
    time.sleep(1.5)  # ours has checked (no table yet) and waits on the other's CREATE TABLE
    other.commit()
    other.close()
    t.join(30)
    assert not errors, f"{type(errors[0]).__name__}: {str(errors[0]).splitlines()[0]}"


def test_password_can_stay_out_of_the_url(postgres_server: PostgresServer, tmp_path, monkeypatch):
    """docs/scaling.md: ``postgresql+psycopg://user@host:port/db`` plus a ``~/.pgpass`` line
    (here ``PGPASSFILE``): libpq supplies the password to MLflow and Optuna alike."""
    pg = postgres_server
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{pg.host}:{pg.port}:*:{pg.user}:{pg.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    # Two databases: MLflow and Optuna both keep their schema version in alembic_version.
    tracking, storage_url = (f"postgresql+psycopg://{pg.user}@{pg.host}:{pg.port}/{db}"
                             for db in (pg.create_database("pgpass_mlflow"),
                                        pg.create_database("pgpass_optuna")))
    client = MlflowClient(tracking_uri=tracking)
    assert client.create_experiment("kdsweep", artifact_location=str(tmp_path / "art"))
    storage = optuna.storages.RDBStorage(storage_url)
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: 1.0, n_trials=1)
    storage.engine.dispose()
    for url in (tracking, storage_url):
        assert database_rows_containing(url, pg.password) == []
