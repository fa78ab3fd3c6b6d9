"""The Hydra plugin: a thin adapter from Hydra's Sweeper interface to :mod:`kdsweep.sweep.study`.

Hydra's plugin scan imports this module on every start, so kdsweep's sweep driver (optuna, mlflow,
sqlalchemy) is imported only when a sweep is instantiated. Dependencies point one way: this
adapter imports ``kdsweep``; ``kdsweep`` never imports ``hydra_plugins``.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from . import config as _config  # noqa: F401  (registers hydra/sweeper=kdsweep_optuna)


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x


class KDSweepOptunaSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        """``options``: the ``hydra.sweeper`` node, the fields of
        :class:`kdsweep.sweep.settings.Settings` (config.py builds the node from them)."""
        from kdsweep.errors import SweepError
        from kdsweep.sweep.settings import Settings
        from kdsweep.sweep.study import Sweep

        try:
            self.sweep_impl = Sweep(Settings.from_options(
                {k: _plain(v) for k, v in options.items()}))
        except SweepError as e:
            _refuse(e)
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.job_idx = 0

    def sweep(self, arguments: list[str]) -> Any:
        """Run the missing trials of the study; a bad sweep config is one line and exit status 2;
        a sweep that ends with points that failed exits with status 3 (kdsweep.errors)."""
        from kdsweep.errors import EXIT_INCOMPLETE, KDSweepError

        try:
            ending = self.sweep_impl.run(arguments, self._context())
        except KDSweepError as e:
            _refuse(e)
        if ending.unfinished:
            print(ending.message(retry_command()), file=sys.stderr, flush=True)
            sys.exit(EXIT_INCOMPLETE)
        return None

    def _context(self) -> Any:
        from kdsweep.config.schema import TrackingConf
        from kdsweep.sweep.settings import Context
        from kdsweep.tracking import absolute_uri

        cfg = self.config
        assert cfg is not None
        launch_dir = Path(str(cfg.hydra.runtime.cwd))
        sweep_dir = Path(str(cfg.hydra.sweep.dir))
        tracking = cfg.get("tracking") or OmegaConf.structured(TrackingConf)
        return Context(
            launch_dir=launch_dir,
            sweep_dir=sweep_dir if sweep_dir.is_absolute() else launch_dir / sweep_dir,
            tracking_uri=absolute_uri(str(tracking.uri), launch_dir),
            experiment=str(tracking.experiment),
            lock_dir=launch_dir / str(tracking.lock_dir),
            launcher=str(cfg.hydra.launcher.get("_target_", "?")).rsplit(".", 1)[-1],
            prefix="sweep." if "sweep" in cfg else "++sweep.",
            add_threads=cfg.get("cpu_threads", "absent") is None,
            launch=self._launch, compose=self._compose, check=_check, report=_report)

    def _launch(self, overrides: list[list[str]]) -> list[Any]:
        # Hydra's local launcher logs each job's overrides, kdsweep's bookkeeping (sweep.*)
        # included: the sweep prints what each job runs instead.
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").setLevel(logging.WARNING)
        returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        self.job_idx += len(returns)
        return [_outcome(r) for r in returns]

    def _compose(self, overrides: list[str]) -> dict[str, Any]:
        """A trial's composed config (as a launcher would build it), without the hydra node."""
        assert self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with_hydra = OmegaConf.to_container(cfg, resolve=False)
        with_hydra.pop("hydra", None)
        return with_hydra


def _outcome(r: Any) -> Any:
    """A Hydra job's return value, or the exception it raised (``JobReturn.return_value`` raises
    a failed job's exception: caught here, so that the sweep records it and goes on)."""
    from kdsweep.sweep.settings import Outcome

    if r.status == JobStatus.COMPLETED:
        return Outcome(value=r.return_value)
    try:
        value = r.return_value
    except BaseException as e:  # every failure of a job is the trial's
        return Outcome(error=e)
    return Outcome(error=f"the job failed and returned {value!r}")


def _check(cfg: Any, reach: bool = True) -> None:
    """The checks a job makes before any work (kdsweep.run.job.check), for a trial's config."""
    from kdsweep.run.job import check

    check(cfg, reach=reach)


def _report(*args: Any, **kwargs: Any) -> Any:
    """The sweep's tables (kdsweep.report), written when the sweep ends."""
    from kdsweep.report import write_report

    return write_report(*args, **kwargs)


def retry_command() -> str:
    """The command line that started this sweep (re-running it retries what did not finish)."""
    return shlex.join(["python", *sys.argv])


def _refuse(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)
