"""torch.compile vs eager for a KD training step, side by side in one run, compile time included.

    python benchmarks/bench_compile.py [--steps 40] [--pair wrn_40_2:wrn_16_2:64] [--members 1 4]

Runs kdsweep's pipeline (``kdsweep.run.run_cohort``) with ``train.compile=false`` and ``true`` on
the embedded set and reports, per cohort size: wall time of the whole run (compile included),
steady-state images/s (last epoch), and the ratios. With several members, the compiled code of
the first is reused by the others (dynamo caches it per model class): the run shows whether it is.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("KDSWEEP_LOG_MODEL", "false")
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="batches per epoch (2 epochs)")
    ap.add_argument("--pair", default="wrn_40_2:wrn_16_2:64")
    ap.add_argument("--members", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    import torch
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    from kdsweep.config import register_configs
    from kdsweep.engine import save_checkpoint
    from kdsweep.models import create_model
    from kdsweep.run import Job, run_cohort

    register_configs()
    t_arch, s_arch, batch = args.pair.split(":")
    work = Path(tempfile.mkdtemp(prefix="kdsweep-bench-compile-"))
    os.chdir(work)
    ckpt = work / "teacher.pt"
    save_checkpoint(ckpt, {"arch": t_arch, "num_classes": 10,
                           "model": create_model(t_arch, num_classes=10).state_dict()})
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}; {t_arch} -> {s_arch}, "
          f"batch {batch}, 2 epochs x {args.steps} batches")
    for n in args.members:
        res = {}
        for compiled in (False, True):
            uri = f"sqlite:///{work / f'm{n}-{compiled}.db'}"
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfgs = [compose("config", overrides=[
                    "method=kd", f"teacher={t_arch}", f"student={s_arch}", f"teacher.checkpoint={ckpt}",
                    f"schedule.batch_size={batch}", "schedule.epochs=2",
                    f"train.limit_train_batches={args.steps}", "train.limit_val_batches=1",
                    "train.progress=false", f"train.compile={str(compiled).lower()}",
                    f"method.alpha={0.1 + 0.2 * i}", f"tracking.uri={uri}", "resume=false"])
                    for i in range(n)]
            start = time.perf_counter()
            out = run_cohort([Job(c, work / f"m{n}-{compiled}-{i}") for i, c in enumerate(cfgs)])
            wall = time.perf_counter() - start
            hist = MlflowClient(uri).get_metric_history(out[0].run_id, "perf/images_per_s")
            res[compiled] = (wall, max(hist, key=lambda m: m.step).value)
        (we, ie), (wc, ic) = res[False], res[True]
        print(f"{n} member(s): eager {we:6.1f} s ({ie:6.1f} img/s)   compiled {wc:6.1f} s "
              f"({ic:6.1f} img/s)   wall ratio {wc / we:.2f}, steady img/s ratio {ic / ie:.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
