"""One retry helper for every MLflow and storage call that a busy shared store can refuse briefly."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Messages of transient failures: a locked SQLite file, a row or table another process is
#: creating at the same moment (first use of a fresh store).
TRANSIENT = ("database is locked", "database table is locked", "already exists",
             "unique constraint failed", "duplicate key value")


def is_transient(err: BaseException) -> bool:
    text = str(err).lower()
    return any(t in text for t in TRANSIENT)


def retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, retrying with jittered exponential backoff on transient errors.

    MLflow already waits 20 s on a locked SQLite file; several parallel runs logging every epoch
    can still exceed that on a slow disk, and losing a run's metrics for it would be worse.
    Any other error is raised at once.
    """
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e) or i == attempts - 1:
                raise
            delay = min(30.0, 0.5 * 2**i) * (0.5 + random.random())
            log.warning("store busy (%s); retrying in %.1f s (%d/%d)",
                        str(e).splitlines()[0][:120], delay, i + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")
