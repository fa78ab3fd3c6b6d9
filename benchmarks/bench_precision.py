"""fp32 vs bf16 autocast: accuracy over seeds and speed, side by side in one run.

    python benchmarks/bench_precision.py [--seeds 0 1 2] [--epochs 3] [--batches 100]
                                         [--dataset cifar10_jpg] [--student resnet8] [--device cpu]

For each seed, trains the same student with ``method=ce`` twice through kdsweep's pipeline, once with
``precision=fp32`` and once with ``precision=bf16`` (same seed, same batch stream), on the real
CIFAR-10 JPEG tree (``../shared/data/cifar10-jpg``; ``--dataset embedded`` works offline anywhere),
``--batches`` training batches of 128 per epoch and the whole 10,000-image test set each epoch.
Prints, per precision, the final and best validation accuracy as mean ± std over the seeds, the
per-seed difference bf16 - fp32, and training images/s (last epoch, mean over seeds).

bf16 changes the arithmetic, so the comparison is "within the seed-to-seed spread", not bit for bit.
On a CPU without native bf16 (no AVX512-BF16/AMX) bf16 autocast is emulated and slower: the speed
column then says why ``precision=auto`` picks fp32 there; the accuracy columns still hold, because
the rounding is the same wherever it is computed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("KDSWEEP_LOG_MODEL", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(dataset: str, student: str, seed: int, precision: str, epochs: int, batches: int,
        device: str, work: Path) -> tuple[float, float, float]:
    """(final val acc, best val acc, train images/s of the last epoch) of one run."""
    from hydra import compose, initialize_config_dir
    from mlflow.tracking import MlflowClient

    from kdsweep.run import run

    uri = f"sqlite:///{work / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "method=ce", f"student={student}", f"dataset={dataset}", f"seed={seed}",
            f"precision={precision}", f"device={device}", f"schedule.epochs={epochs}",
            f"train.limit_train_batches={batches}", "schedule.batch_size=128",
            "schedule.warmup_epochs=0", "schedule=cosine", "schedule.lr=0.1",
            "train.progress=false", f"tracking.uri={uri}", "resume=false",
            *([f"dataset.root={ROOT.parent / 'shared/data/cifar10-jpg'}"]
              if dataset == "cifar10_jpg" else [])])
    res = run(cfg, output_dir=work / f"{precision}-{seed}")
    hist = MlflowClient(uri).get_metric_history(res.run_id, "perf/images_per_s")
    rate = max(hist, key=lambda m: m.step).value
    return res.final_val_acc, res.best_val_acc, rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batches", type=int, default=100, help="training batches of 128 per epoch")
    ap.add_argument("--dataset", default="cifar10_jpg")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from kdsweep.config import register_configs
    from kdsweep.engine.device import cpu_has_native_bf16

    register_configs()
    if args.dataset == "cifar10_jpg" and not (ROOT.parent / "shared/data/cifar10-jpg").is_dir():
        print("../shared/data/cifar10-jpg is absent: use --dataset embedded", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kdsweep-bench-precision-"))
    os.chdir(work)
    print(f"machine: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}, native "
          f"bf16: {cpu_has_native_bf16()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.student} on {args.dataset}, "
          f"{args.epochs} epochs x {args.batches} batches of 128, seeds {args.seeds}", flush=True)
    results: dict[str, list[tuple[float, float, float]]] = {"fp32": [], "bf16": []}
    for seed in args.seeds:
        for precision in results:
            r = one(args.dataset, args.student, seed, precision, args.epochs, args.batches,
                    args.device, work)
            results[precision].append(r)
            print(f"seed {seed} {precision}: final {r[0]:.2f}%  best {r[1]:.2f}%  "
                  f"{r[2]:.0f} img/s", flush=True)

    def ms(xs: list[float]) -> str:
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{statistics.mean(xs):6.2f} ± {sd:4.2f}"

    print("\n| precision | final val acc (%) | best val acc (%) | train img/s |\n|---|---:|---:|---:|")
    for p, rs in results.items():
        print(f"| {p} | {ms([r[0] for r in rs])} | {ms([r[1] for r in rs])} | "
              f"{statistics.mean(r[2] for r in rs):.0f} |")
    diffs = [b[0] - f[0] for f, b in zip(results["fp32"], results["bf16"], strict=True)]
    print(f"\nbf16 - fp32, final val acc per seed: {', '.join(f'{d:+.2f}' for d in diffs)} "
          f"(mean {statistics.mean(diffs):+.2f}); bf16 speed / fp32 speed: "
          f"{statistics.mean(r[2] for r in results['bf16']) / statistics.mean(r[2] for r in results['fp32']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
