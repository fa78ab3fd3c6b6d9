"""Fused sweep trials vs the same trials one after another, side by side in one run.

    python benchmarks/bench_fused.py [--steps 4] [--epochs 2] [--methods kd at] [--device cpu]
                                     [--variants sequential fused horizontal]

For each method: a 16-trial alpha x T grid (alpha 0.2..0.8 x T 2..16, as PkuDavidGuan/Distillation's
grid search) of wrn_28_4 -> wrn_16_2 at batch 128 on the embedded set (``--steps`` batches per
epoch), run (a) as 16 separate runs through kdsweep's pipeline, one after another, and (b) as one
fused cohort of 16 through the same pipeline. Both include everything a trial costs (MLflow
records, checkpoints, validation); the teacher is a checkpoint (random weights: timing only).
Prints wall times and the ratio fused / sequential, and checks that every fused member's final
validation accuracy equals its sequential twin's (bit-identical on the CPU in fp32).

``horizontal`` adds (c): the fused cohort with ``train.horizontal=true``, the students stepped as one
vmapped model (kdsweep/engine/horizontal.py); its members equal the others within fp32 rounding, so
the script prints the largest difference of final validation accuracy instead of checking bits.

On a GPU: ``--device cuda --precision bf16`` (equivalence is then checked within noise, not bits).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from kdsweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def workdir_with_teacher(prefix: str, arch: str = "wrn_28_4") -> tuple[Path, Path]:
    """A fresh temporary work dir (made the current directory) holding a random-weights teacher
    checkpoint of ``arch`` (seed 0, 10 classes: for timing)."""
    import torch

    from kdsweep.engine import save_checkpoint
    from kdsweep.models import create_model

    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chdir(work)
    teacher = work / "teacher.pt"
    torch.manual_seed(0)
    save_checkpoint(teacher, {"arch": arch, "num_classes": 10,
                              "model": create_model(arch, num_classes=10).state_dict()})
    return work, teacher


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="training batches per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["kd", "at"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--trials", type=int, default=16, help="first N points of the 4x4 grid")
    ap.add_argument("--variants", nargs="+", default=["sequential", "fused"],
                    choices=["sequential", "fused", "horizontal"],
                    help="what to time (horizontal: fused with train.horizontal=true)")
    args = ap.parse_args()

    import torch

    from kdsweep.run import Job, run, run_cohort

    work, teacher = workdir_with_teacher("kdsweep-bench-fused-")
    grid = [(a, t) for a in (0.2, 0.4, 0.6, 0.8) for t in (2, 4, 8, 16)][:args.trials]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, device {args.device}, precision {args.precision}")
    print(f"{len(grid)} trials, wrn_28_4 -> wrn_16_2, batch 128, {args.epochs} epochs x "
          f"{args.steps} batches, embedded set; work dir {work}")
    for method in args.methods:
        base = [f"method={method}", "teacher=wrn_28_4", "student=wrn_16_2",
                f"teacher.checkpoint={teacher}", "schedule.batch_size=128",
                f"schedule.epochs={args.epochs}", f"train.limit_train_batches={args.steps}",
                "train.limit_val_batches=1", "schedule.eval_batch_size=250", "train.progress=false",
                f"device={args.device}", f"precision={args.precision}", "resume=false"]
        knobs = ["method.kd_weight={a}", "method.T={t}"] if method != "kd" else \
            ["method.alpha={a}", "method.T={t}"]

        def cfgs(uri: str, extra: list[str], knobs=knobs, base=base):
            return [compose([*base, *extra, f"tracking.uri={uri}",
                             *(k.format(a=a, t=t) for k in knobs)]) for a, t in grid]

        times, results = {}, {}
        for variant in args.variants:
            uri = f"sqlite:///{work / f'{method}-{variant}.db'}"
            extra = ["train.horizontal=true"] if variant == "horizontal" else []
            start = time.perf_counter()
            if variant == "sequential":
                results[variant] = [run(c, output_dir=work / f"{method}-seq{i}")
                                    for i, c in enumerate(cfgs(uri, extra))]
            else:
                results[variant] = run_cohort([Job(c, work / f"{method}-{variant}{i}")
                                               for i, c in enumerate(cfgs(uri, extra))])
            times[variant] = time.perf_counter() - start
            print(f"{method}: {variant:10s} {times[variant]:7.1f} s", flush=True)
        first = args.variants[0]
        for variant in args.variants[1:]:
            pairs = list(zip(results[first], results[variant], strict=True))
            if variant == "horizontal" or first == "horizontal":
                worst = max(abs(a.final_val_acc - b.final_val_acc) for a, b in pairs)
                same = f"largest |final val acc difference| {worst:.2f} points"
            else:
                same = "members equal bit for bit: " + str(
                    all(a.final_val_acc == b.final_val_acc for a, b in pairs))
            print(f"{method}: {variant} / {first} = {times[variant] / times[first]:.3f} "
                  f"({times[first] / times[variant]:.2f}x faster); {same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
