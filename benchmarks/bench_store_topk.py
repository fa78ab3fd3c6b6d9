"""What the top-k form of the teacher-output store costs in accuracy: KD students trained from
dense stored logits (exact: the live teacher's) and from top-k ones, side by side.

    python benchmarks/bench_store_topk.py [--k 1 3] [--seeds 0 1] [--epochs 8]

The default job's pair (resnet20 -> resnet8, KD alpha 0.9, T 4) on the embedded CIFAR-10 subset
(5,000 training images, 10 classes), ``schedule=quick``; the teacher is trained first (once) as
the default job does. Prints each student's best validation accuracy per seed and form, and the
mean difference top-k - dense. At T 4 the soft targets of the classes outside the top k are
flattened to equal shares of their mass, so the kd term is no longer exact.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("KDSWEEP_LOG_MODEL", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fused import compose  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()

    from kdsweep.run import run

    work = Path(tempfile.mkdtemp(prefix="kdsweep-bench-topk-"))
    os.chdir(work)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    store = work / "store"
    forms = [None, *args.k]
    acc: dict[object, list[float]] = {f: [] for f in forms}
    for seed in args.seeds:
        for k in forms:
            extra = [f"teacher.store_topk={k}"] if k else []
            cfg = compose([f"tracking.uri={uri}", f"teacher.store={store}", f"seed={seed}",
                           f"schedule.epochs={args.epochs}", "train.progress=false", *extra])
            r = run(cfg, output_dir=work / f"s{seed}-{k or 'dense'}")
            acc[k].append(r.best_val_acc)
            print(f"seed {seed} {'dense' if k is None else f'top{k}':6s} best val acc "
                  f"{r.best_val_acc:.2f}", flush=True)
    dense = acc[None]
    print("| stored logits | best val acc per seed | mean | mean - dense |")
    print("|---|---|---:|---:|")
    for k in forms:
        vals = acc[k]
        mean = sum(vals) / len(vals)
        diff = mean - sum(dense) / len(dense)
        print(f"| {'dense (exact)' if k is None else f'top-{k}'} | "
              f"{', '.join(f'{v:.2f}' for v in vals)} | {mean:.2f} | {diff:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
