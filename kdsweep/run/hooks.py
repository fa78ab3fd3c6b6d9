"""The run hooks through which an extension (:mod:`kdsweep.extensions`) plugs into the pipeline.

An extension names a subclass of :class:`RunHooks` (``Extension.hooks = "package.module:Class"``)
and overrides what it needs; every method does nothing by default. The pipeline calls, for each
extension in registry order:

- :meth:`RunHooks.check` in :func:`kdsweep.run.preflight.check_run`, before any work;
- :meth:`RunHooks.prepare` once a member's student is built and ``student.init`` applied;
- :meth:`RunHooks.finish` after training, before the member's record is closed.

An extension that turns one config into several runs (ReduceNet's three stages) is a **job
driver**: :meth:`RunHooks.owns` says which configs are its own (a config node it adds is set),
and :func:`kdsweep.run.job.run_job` then hands the whole job to it: :meth:`RunHooks.check_job`,
:meth:`RunHooks.run_job` (a single run) or :meth:`RunHooks.run_cohort` (a fused sweep job).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsweep import extensions
from kdsweep.errors import ConfigError

if TYPE_CHECKING:
    from kdsweep.run.plan import Job, RunResult


class RunHooks:
    """What an extension may do to runs and jobs; the defaults do nothing."""

    # ---------------------------------------------------------------------- one run
    def check(self, cfg: Mapping[str, Any], method: Any) -> None:
        """Before any work: raise a one-line :class:`~kdsweep.errors.KDSweepError` for a value
        the extension refuses. ``method``: the run's method object (not yet on a device)."""

    def prepare(self, student: Any, cfg: Mapping[str, Any], data: Any) -> dict[str, float]:
        """A member's student is built (and ``student.init`` applied): change it in place;
        return metrics to log."""
        return {}

    def finish(self, p: Any, data: Any, precision: Any, limit_val_batches: int | None) -> None:
        """After training, before the member's record is closed (``p``: its plan; ``p.member``,
        ``p.recorder``, ``p.stats``); a failure stops the member (``p.member.stop``)."""

    # ------------------------------------------------------------------- job driver
    def owns(self, cfg: Mapping[str, Any]) -> bool:
        """Whether this extension runs jobs of this config itself."""
        return False

    def check_job(self, cfg: Any, overrides: Sequence[str] = ()) -> None:
        """Everything :meth:`run_job` would refuse, before any work."""

    def run_job(self, cfg: Any, *, output_dir: str | Path, overrides: Sequence[str] = (),
                label: str | None = None) -> RunResult:
        raise NotImplementedError

    def run_cohort(self, jobs: Sequence[Job]) -> list[RunResult]:
        raise NotImplementedError


@functools.cache
def loaded() -> tuple[RunHooks, ...]:
    """One instance of each extension's hooks, in registry order."""
    out = []
    for ext in extensions.loaded():
        if ext.hooks:
            cls = extensions.load_object(ext.hooks)
            if not (isinstance(cls, type) and issubclass(cls, RunHooks)):
                raise TypeError(f"extension {ext.name}: hooks {ext.hooks} is not a RunHooks")
            out.append(cls())
    return tuple(out)


def driver(cfg: Mapping[str, Any]) -> RunHooks | None:
    """The extension that runs this config's jobs itself, or None (an ordinary run)."""
    owners = [h for h in loaded() if h.owns(cfg)]
    if len(owners) > 1:
        raise ConfigError("this config is claimed by several extensions ("
                          + ", ".join(type(h).__name__ for h in owners) + "); set one")
    return owners[0] if owners else None


__all__ = ["RunHooks", "driver", "loaded"]
