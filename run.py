"""kdsweep entry point: ``python run.py [overrides]`` trains or distils one run; ``-m`` sweeps.

Examples::

    python run.py                                          # default job on the embedded data set
    python run.py method=kd teacher=wrn_28_4 student=wrn_16_2 dataset=cifar100 schedule=cifar
    python run.py -m method.alpha=0.2,0.8 method.T=2,4      # a 2x2 grid, one MLflow run each
    python run.py -m experiment=alpha_t_grid_wrn debug=smoke   # a paper's grid, tiny and offline
    python run.py --cfg job                                # print the composed config
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdsweep.config import register_configs
from kdsweep.config.cli import check as check_command_line
from kdsweep.errors import KDSweepError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | dict:
    """Run one job; return its objective (best validation accuracy, %) for sweepers, or for a
    fused sweep job one outcome per member trial."""
    from kdsweep.run.job import run_job  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    try:
        return run_job(cfg, output_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except KDSweepError as e:
        if hc.mode == RunMode.MULTIRUN and "kdsweep_optuna" in str(hc.sweeper.get("_target_")):
            raise  # the kdsweep sweeper records the failed trial and goes on
        print(f"error: {e}", file=sys.stderr, flush=True)
        if hc.mode == RunMode.MULTIRUN:  # Hydra's own sweepers stop at a raised error: go on;
            return float("nan")          # the sweep's record counts the failed runs at the end
        sys.exit(2)


def _preflight(cfg: DictConfig, overrides: list[str]) -> None:
    """Every check a run makes before any work (a refused run writes nothing at all)."""
    from kdsweep.run.job import check

    check(cfg, overrides)


def _presets_as_groups(argv: list[str]) -> list[str]:
    """``+experiment=NAME`` (the form before ``experiment`` was in the defaults list) -> ``experiment=NAME``.

    Hydra refuses ``+group=`` for a group that the defaults list already names (as
    ``experiment: null``); both spellings select the preset.
    """
    return [a[1:] if a.startswith(("+experiment=", "+debug=")) else a for a in argv]


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.argv = _presets_as_groups(sys.argv)
    error = check_command_line(sys.argv[1:], Path(__file__).resolve().parent / "conf",
                               preflight=_preflight)
    if error:  # a bad override: one line and status 2, before Hydra starts any work
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
