"""The study's storage: Optuna RDB storages that wait on SQLite locks, and trial heartbeats."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from kdsweep.errors import SweepError
from kdsweep.tracking import mask_url

log = logging.getLogger(__name__)


def short(target: str) -> str:
    """``optuna.samplers.TPESampler`` -> ``TPESampler``."""
    return target.rsplit(".", 1)[-1]


def job_url(url: str) -> str:
    """The storage URL handed to trials: SQLite waits up to 2 min on a lock (parallel trials
    report every epoch) instead of the driver's 5 s default."""
    if url.startswith("sqlite:///") and "timeout=" not in url:
        return url + ("&" if "?" in url else "?") + "timeout=120"
    return url


def sqlite_kwargs(url: str) -> dict[str, Any]:
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
                    url, engine_kwargs=sqlite_kwargs(url), heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period)
        except Exception as e:  # two processes creating the same fresh database
            last = e
            time.sleep(0.5 * (attempt + 1))
    raise SweepError(f"cannot open the Optuna storage {mask_url(url)}: {last}") from last


class Heartbeat:
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
class TrialRef:
    trial_id: int
    number: int
    overrides: list[str]          # the swept overrides of this trial
    params: dict[str, Any]
    label: str | None = None
