"""Opening the MLflow store: checked URIs, safe concurrent first use, a clear line when it is broken.

The store is the run config's ``tracking.uri`` (its default is declared in
:class:`kdsweep.config.schema.TrackingConf`); ``MLFLOW_TRACKING_URI`` (or ``tracking.uri=...``)
sets it, e.g. ``postgresql://user@host/db`` shared by several machines.

Several processes that open a *fresh* SQLite store at once race in MLflow's schema migration
(measured here: 3 of 4 simultaneous first runs died, and one left ``_alembic_tmp_params`` behind so
that every later run failed). :func:`open_store` therefore creates or upgrades a store under a file
lock (one per store, in ``tracking.lock_dir``), and recovers a half-migrated SQLite store that holds
no runs yet by moving it aside. Stores on a database server are migrated once too (the lock covers
the runs of one launch folder on one machine; the sweeper opens the store
before it launches any worker, and transient "already exists" errors are retried).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from filelock import FileLock
from mlflow.tracking import MlflowClient

from kdsweep.errors import TrackingError
from kdsweep.tracking.retries import retry
from kdsweep.tracking.secrets import mask_url

log = logging.getLogger(__name__)

#: URI schemes MLflow can track to (database drivers may follow the dialect: postgresql+psycopg).
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks")


def absolute_uri(uri: str, base: Path) -> str:
    """A tracking URI that means the same from any directory (relative SQLite/file paths)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:" and not Path(path).is_absolute():
            return f"sqlite:///{(base / path).resolve()}"
    if "://" not in uri and not Path(uri).is_absolute():
        return str((base / uri).resolve())
    return uri


def check_uri(uri: str) -> None:
    """Refuse a URI MLflow cannot use, in one line, before anything is created."""
    if "://" not in uri:
        return  # a local directory (MLflow's file store)
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in SCHEMES:
        raise TrackingError(f"tracking.uri={mask_url(uri)!r} has an unknown scheme {scheme!r}; "
                            f"valid: sqlite:///PATH, postgresql://..., mysql://..., "
                            f"http(s)://SERVER, file:///DIR or a directory")


#: Seconds to wait for a tracking server to accept a connection before the run is refused.
CONNECT_TIMEOUT = 5.0
_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def server_address(uri: str) -> tuple[str, int] | None:
    """``(host, port)`` of the server behind a tracking URI (None: a file, SQLite, a local
    socket, or a scheme without one)."""
    from sqlalchemy.engine import make_url

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme not in _PORTS:
        return None
    try:
        if scheme in ("http", "https"):
            from urllib.parse import urlsplit

            parts = urlsplit(uri)
            host, port = parts.hostname, parts.port
        else:
            url = make_url(uri)
            host, port = url.host, url.port
    except Exception:  # malformed: MLflow's own error says why, later
        return None
    return (host, int(port or _PORTS[scheme])) if host else None


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse, in seconds, a tracking server that does not accept a connection.

    MLflow retries a refused HTTP request with exponential backoff for minutes, and a database
    server's connection for longer; a server that is down is a configuration problem, so one TCP
    connection decides first. A server that accepts the connection but answers slowly is still
    left to MLflow's own retries.
    """
    import socket

    address = server_address(uri)
    if address is None:
        return
    try:
        with socket.create_connection(address, timeout=timeout):
            pass
    except OSError as e:
        why = (f"no answer within {timeout:g} s" if isinstance(e, TimeoutError)
               else (e.strerror or type(e).__name__))
        raise TrackingError(f"tracking.uri={mask_url(uri)}: the tracking server at "
                            f"{address[0]}:{address[1]} cannot be reached ({why}); start it, or "
                            "set tracking.uri to a reachable store (with neither tracking.uri nor "
                            "MLFLOW_TRACKING_URI set: the local default)") from None


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            return Path(path)
    return None


def check_sqlite_file(path: Path, uri: str) -> None:
    where = mask_url(uri)
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK) or not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking.uri={where}: {path} (or its folder) is not writable; "
                                "fix its permissions or set tracking.uri to a writable store")
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise TrackingError(f"tracking.uri={where}: {path} is not an SQLite database; move it "
                                "away or set tracking.uri to another store")
    elif not folder.exists() or not os.access(folder, os.W_OK):
        raise TrackingError(f"tracking.uri={where}: cannot create {path}: its folder is missing or "
                            "not writable")


def _lock_for(uri: str, lock_dir: Path) -> FileLock:
    """One lock per store, in ``lock_dir`` (never a file beside the user's ``mlflow.db``): an
    SQLite store is named by its absolute path, any other by its URL without a password."""
    path = sqlite_path(uri)
    name = str(path.resolve()) if path is not None else mask_url(uri)
    lock_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return FileLock(str(lock_dir / f"tracking-{digest}.lock"))


def _holds_runs(path: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            return bool(con.execute("select count(*) from runs").fetchone()[0])
    except sqlite3.Error:
        return False  # no runs table: nothing to lose


def _open(uri: str, experiment: str) -> str:
    # MLflow creates (migrates) a database store when the client is built: another machine may be
    # doing the same at this moment, which a retry outlives ("duplicate key value", "exists").
    client = retry(lambda: _client_with_store(uri))
    exp = retry(client.get_experiment_by_name, experiment)
    if exp is not None:
        exp_id = exp.experiment_id
        if exp.tags.get(KIND_TAG) is None:
            retry(client.set_experiment_tag, exp_id, KIND_TAG, KIND)
        return exp_id
    try:
        return retry(client.create_experiment, experiment, tags={KIND_TAG: KIND})
    except Exception:  # created meanwhile by another process
        exp = retry(client.get_experiment_by_name, experiment)
        if exp is None:
            raise
        return exp.experiment_id


#: MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it holds
#: model training: then it opens on the runs table (the UI reads this tag).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


@contextlib.contextmanager
def _quiet(*names: str):
    """Loggers ``names`` at WARNING for the block (their INFO lines are MLflow's internals:
    "Creating initial MLflow database tables...")."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _probe(uri: str) -> None:
    """Create or check an SQLite store before any client caches it.

    MLflow keeps one engine per URI for the process (``SqlAlchemyStore._engine_map``, no public
    way to drop it); after a failed check that engine still holds the broken file open, so it is
    dropped here before the file is moved aside.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:
        SqlAlchemyStore(uri, str(Path(tempfile.gettempdir()) / "kdsweep-probe-artifacts"))
    except Exception:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
        raise


def _client_with_store(uri: str) -> MlflowClient:
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)  # touches the store: creates or checks its schema
    return client


def open_store(uri: str, experiment: str, lock_dir: str | Path) -> str:
    """Create or upgrade the store at ``uri`` once (under a file lock in ``lock_dir``:
    ``tracking.lock_dir``), select ``experiment``; returns its id.

    Raises :class:`TrackingError` (one line) for a store that cannot be used.
    """
    check_uri(uri)
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_file(path, uri)
    check_reachable(uri)
    with _lock_for(uri, Path(lock_dir)), _quiet("mlflow.store.db.utils", "alembic"):
        try:
            if path is not None:
                _probe(uri)
            return _open(uri, experiment)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            if path is None or _holds_runs(path):
                raise TrackingError(f"tracking.uri={mask_url(uri)}: the MLflow store cannot be "
                                    f"opened ({first}); run `mlflow db upgrade {mask_url(uri)}` "
                                    "or point tracking.uri elsewhere") from None
            # A half-migrated store without runs (an interrupted first use): start it again.
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.warning("MLflow store %s was half-created (%s) and held no runs: moved to %s and "
                        "created anew", path, first, aside)
            return _open(uri, experiment)


def ui_command(uri: str) -> str:
    """How to open the MLflow UI on this store (bound to the loopback interface only)."""
    if uri.startswith(("http://", "https://")):
        return f"open {mask_url(uri)} in a browser (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {mask_url(uri)} --host 127.0.0.1 --port 5000 --workers 1"


def runs_link(experiment_id: str, run_id: str | None = None, port: int = 5000) -> str:
    """A link that opens the model-training runs view (not the GenAI overview) of the local UI.

    MLflow 3's UI picks its view from a switch it keeps in the browser (GenAI by default), not
    from the experiment; the ``workflowType`` query parameter sets that switch (seen in 3.17)."""
    base = f"http://127.0.0.1:{port}/#/experiments/{experiment_id}"
    return (f"{base}/runs/{run_id}" if run_id else f"{base}/runs") + "?workflowType=machine_learning"
