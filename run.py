"""kdsweep entry point: ``python run.py [overrides]`` trains or distils one run; ``-m`` sweeps.

Examples::

    python run.py                                          # default job on the embedded data set
    python run.py method=kd teacher=wrn_28_4 student=wrn_16_2 dataset=cifar100 schedule=cifar
    python run.py -m method.alpha=0.2,0.8 method.T=2,4      # a 2x2 grid, one MLflow run each
    python run.py --cfg job                                # print the composed config
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kdsweep.config import register_configs
from kdsweep.errors import KDSweepError

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job; return its objective (best validation accuracy, %) for sweepers."""
    from kdsweep.runner import run  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    try:
        result = run(cfg, output_dir=hc.runtime.output_dir, overrides=list(hc.overrides.task))
    except KDSweepError as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # let the sweeper record the failed trial
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    return result.best_val_acc


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
