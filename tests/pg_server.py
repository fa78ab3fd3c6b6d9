"""A throw-away PostgreSQL server for tests: its own cluster in a temp directory.

``postgres_server`` (session-scoped fixture) runs ``initdb`` into a fresh temp directory, starts
the server on 127.0.0.1 and a free port (unix socket in the temp directory too), creates a test
role with a password (TCP logins need it: scram-sha-256) and the databases ``mlflow`` and
``optuna``, yields a :class:`PostgresServer`, then stops the server and deletes the directory,
also when a test or the start-up failed.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` system user and
every server command runs through ``runuser -u postgres --`` (``su postgres -s /bin/sh -c`` where
runuser is missing). The test skips, with the reason, when there is no ``initdb`` (looked up as
``$KDSWEEP_PG_BINDIR/initdb``, on ``PATH``, then in ``/usr/lib/postgresql/*/bin``), no
``postgres`` user while running as root, no psycopg driver, or the server does not start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN = "postgres"      # the cluster's superuser: unix socket only (trust), never over TCP
ROLE = "kdsweep_test"   # the role the tests use: TCP with a password
DATABASES = ("mlflow", "optuna")
SETTINGS = {            # a scratch server: fast start, no durability
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "max_wal_size": "64MB",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "password_encryption": "'scram-sha-256'",
}


class PostgresUnavailable(RuntimeError):
    """The server cannot be started here (the test skips with this reason)."""


def find_bindir() -> Path:
    """The directory of ``initdb``/``pg_ctl``, or PostgresUnavailable."""
    candidates = []
    if os.environ.get("KDSWEEP_PG_BINDIR"):
        candidates.append(Path(os.environ["KDSWEEP_PG_BINDIR"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    raise PostgresUnavailable("PostgreSQL's initdb was not found (not on PATH, not in "
                              "/usr/lib/postgresql/*/bin; set KDSWEEP_PG_BINDIR)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    host: str
    port: int
    socket_dir: Path
    user: str
    password: str
    bindir: Path
    databases: tuple[str, ...]

    def url(self, database: str, driver: str = "") -> str:
        """``postgresql[+driver]://user:password@127.0.0.1:port/database``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def mlflow_url(self) -> str:
        return self.url("mlflow")

    @property
    def optuna_url(self) -> str:
        return self.url("optuna")

    def admin_connect(self, database: str = "postgres"):
        """A superuser connection over the unix socket (autocommit)."""
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=ADMIN,
                               dbname=database, autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """A fresh, empty database owned by the test role; returns its name."""
        from psycopg import sql

        with self.admin_connect() as c:
            c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(self.user)))
        return name


class _Cluster:
    """initdb / pg_ctl, as the ``postgres`` user when this process is root."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.pg_user = None
        if self.as_root:
            try:
                self.pg_user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no 'postgres' user to "
                                          "run PostgreSQL as (it refuses to run as root)") from None
        self.base = Path(tempfile.mkdtemp(prefix="kdsweep-pg-"))
        if self.pg_user is not None:
            os.chown(self.base, self.pg_user.pw_uid, self.pg_user.pw_gid)
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.started = False

    def command(self, args: list[str]) -> list[str]:
        if self.pg_user is None:
            return args
        if shutil.which("runuser"):
            return ["runuser", "-u", "postgres", "--", *args]
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]

    def run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env["LANG"] = "C"
        try:
            return subprocess.run(self.command(args), cwd=self.base, env=env, capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PostgresUnavailable(f"{Path(args[0]).name} did not finish in {timeout:.0f} s") from None
        except OSError as e:  # runuser/su missing or not allowed
            raise PostgresUnavailable(f"cannot run {self.command(args)[0]}: {e}") from None

    def write(self, path: Path, text: str) -> None:
        path.write_text(text)
        os.chmod(path, 0o600)
        if self.pg_user is not None:
            os.chown(path, self.pg_user.pw_uid, self.pg_user.pw_gid)

    def initdb(self) -> None:
        p = self.run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", ADMIN,
                      "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
                      "--no-locale", "--no-sync", "--no-instructions"])
        if p.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({p.returncode}): {(p.stderr or p.stdout)[-800:]}")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# kdsweep test server\n")
            f.writelines(f"{k} = {v}\n" for k, v in SETTINGS.items())
        # TCP: passwords only (and only from this machine); the socket: trust, for the set-up.
        self.write(self.data / "pg_hba.conf",
                   "local all all trust\n"
                   "host all all 127.0.0.1/32 scram-sha-256\n")

    def start(self, port: int) -> None:
        self.started = True  # from here on stop() checks for a server, also if pg_ctl fails
        p = self.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                      "-o", f"-p {port} -k {self.base}", "-w", "-t", "60", "start"], timeout=90)
        if p.returncode != 0:
            log = self.log.read_text()[-1500:] if self.log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed ({p.returncode}): "
                                      f"{(p.stderr or p.stdout)[-500:]} {log}")

    def stop(self) -> None:
        if self.started and (self.data / "postmaster.pid").exists():
            try:
                ok = self.run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                               "-w", "-t", "30", "stop"], timeout=60).returncode == 0
            except PostgresUnavailable:
                ok = False
            if not ok:
                with contextlib.suppress(Exception):
                    pid = int((self.data / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, 9)
        self.started = False

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(databases: tuple[str, ...] = DATABASES) -> Iterator[PostgresServer]:
    """Start a private PostgreSQL server; stop it and delete its files on exit."""
    bindir = find_bindir()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("the psycopg driver is not installed: "
                                  "pip install -e '.[postgres]'") from None
    cluster = _Cluster(bindir)
    try:
        cluster.initdb()
        for attempt in range(3):  # the free port may be taken between the probe and the start
            port = free_port()
            try:
                cluster.start(port)
                break
            except PostgresUnavailable:
                cluster.stop()
                if attempt == 2:
                    raise
        password = "pw" + secrets.token_hex(12)  # distinctive: the leak checks grep for it
        server = PostgresServer("127.0.0.1", port, cluster.base, ROLE, password, bindir, databases)
        from psycopg import sql

        with server.admin_connect() as c:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(password)))
        for db in databases:
            server.create_database(db)
        _check_tcp_login(server)
        yield server
    finally:
        cluster.stop()
        cluster.remove()


def _check_tcp_login(server: PostgresServer) -> None:
    import psycopg

    deadline = time.time() + 10
    while True:
        try:
            with psycopg.connect(host=server.host, port=server.port, user=server.user,
                                 password=server.password, dbname=server.databases[0],
                                 connect_timeout=5) as c:
                c.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for this test session (skips when none can be started)."""
    try:
        ctx = running_postgres()
        server = ctx.__enter__()
    except PostgresUnavailable as e:
        pytest.skip(f"no PostgreSQL server for these tests: {e}")
    try:
        yield server
    finally:
        ctx.__exit__(None, None, None)
