"""The teacher-output store: trials one after another with no store, a cold store and a warm
one, against one fused job of the same trials; and a TPE sweep asking 2 trials at a time, with
and without the store. Side by side in one run.

    python benchmarks/bench_store.py [--trials 16] [--steps 20] [--epochs 1] [--tpe 8]

KD trials of wrn_28_4 -> wrn_16_2 (an alpha x T grid) at batch 64 on the embedded set, ``--steps``
batches per epoch, through kdsweep's pipeline (MLflow records, checkpoints, validation included);
the teacher is a checkpoint (random weights: timing only).

* ``live``: the trials one after another, ``teacher.store=off`` (every trial runs the teacher);
* ``cold``: the same with an empty store: the first trial computes and writes, the rest read;
* ``warm``: the same again, reading the full store (no teacher pass at all);
* ``fused``: the trials as one cohort (one teacher pass per batch), ``teacher.store=off``.

Prints each variant's wall time and per-trial mean, the ratios the issue sets targets for
(a warm-store trial / a live trial <= 0.45; 16 warm trials / the fused job <= 1.2), and checks
that the cold, warm and fused trials end with the live trials' validation accuracy (bit for bit
on the CPU in fp32). ``--tpe N``: then a TPE sweep of N trials, 2 asked at a time (fused in
pairs), with ``teacher.store=off`` and with a fresh store, through ``python run.py -m``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fused import compose, workdir_with_teacher  # noqa: E402
from bench_methods import cpu_flags  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="training batches per epoch")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tpe", type=int, default=0, help="TPE trials (0: skip)")
    args = ap.parse_args()

    import torch

    from kdsweep.run import Job, run, run_cohort

    work, teacher = workdir_with_teacher("kdsweep-bench-store-")
    grid = [(a, t) for a in (0.2, 0.4, 0.6, 0.8) for t in (2, 4, 8, 16)][:args.trials]
    print(f"machine: {os.cpu_count()} CPUs ({cpu_flags()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32")
    print(f"{len(grid)} KD trials, wrn_28_4 -> wrn_16_2, batch {args.batch}, {args.epochs} "
          f"epoch(s) x {args.steps} batches, embedded set; work dir {work}", flush=True)
    base = ["method=kd", "teacher=wrn_28_4", "student=wrn_16_2", f"teacher.checkpoint={teacher}",
            f"schedule.batch_size={args.batch}", f"schedule.epochs={args.epochs}",
            f"train.limit_train_batches={args.steps}", "train.limit_val_batches=1",
            "schedule.eval_batch_size=250", "train.progress=false", "precision=fp32",
            "resume=false"]
    store = work / "store"

    def cfgs(variant: str):
        setting = "off" if variant in ("live", "fused") else str(store)
        uri = f"sqlite:///{work / f'{variant}.db'}"
        return [compose([*base, f"teacher.store={setting}", f"tracking.uri={uri}",
                         f"method.alpha={a}", f"method.T={t}"]) for a, t in grid]

    times, per, results = {}, {}, {}
    for variant in ("live", "cold", "warm", "fused"):
        start = time.perf_counter()
        if variant == "fused":
            results[variant] = run_cohort([Job(c, work / f"fused{i}")
                                           for i, c in enumerate(cfgs(variant))])
        else:
            results[variant], per[variant] = [], []
            for i, c in enumerate(cfgs(variant)):
                t0 = time.perf_counter()
                results[variant].append(run(c, output_dir=work / f"{variant}{i}"))
                per[variant].append(time.perf_counter() - t0)
        times[variant] = time.perf_counter() - start
        extra = (f", per trial {times[variant] / len(grid):.1f} s" if variant != "fused" else "")
        print(f"{variant:6s} {times[variant]:7.1f} s{extra}", flush=True)
    same = {v: all(a.final_val_acc == b.final_val_acc
                   for a, b in zip(results["live"], results[v], strict=True))
            for v in ("cold", "warm", "fused")}
    live_trial = sum(per["live"]) / len(per["live"])
    warm_trial = sum(per["warm"]) / len(per["warm"])
    print(f"a cold store's first trial (computes and writes) / a live trial: "
          f"{per['cold'][0] / live_trial:.2f}")
    print(f"a warm-store trial / a live trial: {warm_trial / live_trial:.2f} (target <= 0.45)")
    print(f"{len(grid)} trials with a cold store / live: {times['cold'] / times['live']:.2f}")
    print(f"{len(grid)} warm-store trials / the fused job: {times['warm'] / times['fused']:.2f} "
          f"(target <= 1.2)")
    print(f"live trial / fused per trial: {times['live'] / times['fused']:.2f}")
    print(f"final val acc equal to the live trials, bit for bit: {same}")
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    print(f"store: {size / 1e6:.1f} MB for {args.epochs} epoch(s) x {args.steps} batches", flush=True)

    if args.tpe:
        tpe = {}
        for setting in ("off", str(work / "tpe-store")):
            name = "no store" if setting == "off" else "store"
            cmd = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/sweeper/sampler=tpe",
                   f"hydra.sweeper.n_trials={args.tpe}", "hydra.sweeper.n_jobs=2",
                   "hydra.sweeper.fuse=2", "hydra.sweeper.sampler.seed=0",
                   f"hydra.sweeper.study_name=tpe-{'off' if setting == 'off' else 'store'}",
                   "method.alpha=interval(0.1,0.9)", "method.T=choice(1,2,4,8,16)",
                   f"teacher.store={setting}",
                   f"tracking.uri=sqlite:///{work / ('tpe-' + name.replace(' ', '') + '.db')}",
                   *[b for b in base if not b.startswith("resume")]]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
            tpe[name] = time.perf_counter() - t0
            if p.returncode:
                print(p.stderr[-2000:])
                return 1
            reads = [ln for ln in (p.stdout + p.stderr).splitlines() if "teacher store:" in ln]
            print(f"TPE, {args.tpe} trials 2 at a time, {name}: {tpe[name]:.1f} s"
                  + (f"; {reads[-1].split('] - ')[-1]}" if reads else ""), flush=True)
        print(f"TPE with the store / without: {tpe['store'] / tpe['no store']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
