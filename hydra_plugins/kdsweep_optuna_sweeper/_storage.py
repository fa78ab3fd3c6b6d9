"""Storage and liveness for the kdsweep sweeper: Optuna storages, owner checks, trial heartbeats."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from ._tracking import mask_url

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    pass


def _container(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig,)) or \
        OmegaConf.is_config(x) else x


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` (to tell a live process from a reused pid), where /proc exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid())}


def _owner_alive(owner: Mapping[str, Any]) -> bool | None:
    """True/False for a sweeper process on this host, None when it ran elsewhere."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = owner.get("start")
    return start is None or _proc_start(pid) in (None, start)


def _job_url(url: str) -> str:
    """The storage URL handed to trials: SQLite waits up to 2 min on a lock (parallel trials
    report every epoch) instead of the driver's 5 s default."""
    if url.startswith("sqlite:///") and "timeout=" not in url:
        return url + ("&" if "?" in url else "?") + "timeout=120"
    return url


def _sqlite_kwargs(url: str) -> dict[str, Any]:
    return {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}


def make_storage(url: str, heartbeat_interval: int | None = None,
                 grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url`` (created if missing), waiting on SQLite locks instead of failing."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=_sqlite_kwargs(url), heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period)
        except Exception as e:  # two processes creating the same fresh database
            last = e
            time.sleep(0.5 * (attempt + 1))
    raise SweepError(f"cannot open the Optuna storage {mask_url(url)}: {last}") from last


class _Heartbeat:
    """Writes a heartbeat for every trial this process has in flight, from a daemon thread."""

    def __init__(self, url: str, interval: int):
        self.storage = make_storage(url, heartbeat_interval=interval)
        self.interval = interval
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kdsweep-heartbeat", daemon=True)
        self.thread.start()

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.ids.add(trial_id)
        self._beat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.ids.discard(trial_id)

    def _beat(self, trial_id: int) -> None:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as e:  # never kill the sweep over a heartbeat
            log.debug("heartbeat of trial id %s failed: %s", trial_id, e)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            with self.lock:
                ids = list(self.ids)
            for tid in ids:
                self._beat(tid)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self.storage.remove_session()
        self.storage.engine.dispose()


@dataclass
class _Trial:
    trial_id: int
    number: int
    overrides: list[str]          # the swept overrides of this trial
    params: dict[str, Any]
    label: str | None = None
