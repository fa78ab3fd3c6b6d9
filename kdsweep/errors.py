"""Exceptions that kdsweep turns into one clear line and a non-zero exit.

Every user-facing refusal raises a subclass of :class:`KDSweepError` whose message names the bad
value and what is allowed. ``run.py`` prints ``error: <message>`` and exits with status 2 for these;
anything else is a bug and keeps its traceback.

Exit statuses of ``python run.py``: 0 done (a sweep: every point finished or was pruned);
1 a crash (a bug: its traceback is printed); 2 refused before any work (bad input, one line);
:data:`EXIT_INCOMPLETE` (3) a sweep that ended with points that failed or were not run (it prints
how many and the command that retries them).
"""

import difflib
from collections.abc import Iterable

#: Exit status of a sweep that ended with failed (not pruned) or unrun points.
EXIT_INCOMPLETE = 3


class KDSweepError(Exception):
    """Base class of the errors that are the user's to fix (bad config, missing data, ...)."""


class ConfigError(KDSweepError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class DataError(KDSweepError):
    """A data set is missing, unreadable, or laid out differently than expected."""


class CheckpointError(KDSweepError):
    """A checkpoint is unreadable or does not match the configured model."""


class TrainingDiverged(KDSweepError):
    """The loss became NaN or infinite; the run stops instead of training on garbage."""


class TrackingError(KDSweepError):
    """The MLflow store cannot be used (unknown URI scheme, unreadable or read-only database)."""


class SweepError(KDSweepError):
    """A sweep configuration the sweeper cannot run (bad search space, sampler, storage)."""


class Pruned(Exception):
    """A sweep's pruner stopped a trial early (not an error: the trial is recorded as PRUNED)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


def name_key(name: str) -> str:
    """What a name reads as: lower case, without ``_`` and ``-``."""
    return name.lower().replace("_", "").replace("-", "")


def close_matches(word: str, names: Iterable[str], n: int = 3) -> list[str]:
    """The names of ``names`` that ``word`` probably meant, best first (none when none is close).

    A name equal to ``word`` but for case, ``_`` and ``-`` (``wrn-28-4``: ``wrn_28_4``) is the
    only answer; else the names that :mod:`difflib` rates at least 0.75 alike, and no more than
    0.04 below the best of them. The one rule of every did-you-mean of kdsweep's error lines.
    """
    keyed: dict[str, list[str]] = {}
    for name in names:
        keyed.setdefault(name_key(name), []).append(name)
    key = name_key(word)
    if key in keyed:
        return keyed[key][:n]
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in keyed),
                    key=lambda t: -t[0])
    best = scored[0][0] if scored else 0.0
    return [name for r, k in scored if r >= max(0.75, best - 0.04) for name in keyed[k]][:n]
