"""KD training step with and without ``keep_freed_memory()`` (glibc mallopt), side by side.

    python benchmarks/bench_malloc.py [--steps 20] [--rounds 2] [--batch 128] [--threads N]

One step = what ``kdsweep.engine.loop.Trainer`` does per batch for ``method=kd
teacher=wrn_28_4 student=wrn_16_2``: a batch of the embedded data set from the tensor loader
(crop + flip), the frozen teacher's forward under ``no_grad``, the student's forward, the KD loss,
backward and an SGD step, channels_last, ``precision=auto``. ``mallopt`` is process-wide and cannot
be undone cleanly, so each variant runs in its own fresh subprocess; the variants alternate
(default, kept, default, kept, ...) so that machine noise hits both. Each subprocess reports
images/s over ``--steps`` timed steps after 3 warm-up steps, minor page faults per step and the
share of CPU time spent in the kernel; the script prints a table and the ratio of the means.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(keep: bool, steps: int, batch: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from kdsweep.engine.memory import keep_freed_memory

    mallopt = keep_freed_memory("cpu") if keep else "default glibc policy"
    from kdsweep.data import build_data
    from kdsweep.engine.device import resolve_precision
    from kdsweep.methods import StepInfo, create_method
    from kdsweep.models import create_model

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu)
    data = build_data({"name": "embedded"}, batch_size=batch, eval_batch_size=batch, device=cpu)
    cl = torch.channels_last
    teacher = create_model("wrn_28_4", num_classes=10).to(memory_format=cl).eval()
    teacher.requires_grad_(False)
    student = create_model("wrn_16_2", num_classes=10).to(memory_format=cl).train()
    method = create_method({"name": "kd", "alpha": 0.9, "T": 4.0})
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    from kdsweep.models import ModelOutput

    def batches():
        epoch = 0
        while True:
            data.train.set_epoch(epoch)
            yield from data.train
            epoch += 1

    it = batches()
    warmup = 3
    for i in range(warmup + steps):
        if i == warmup:
            ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        x, y, idx = next(it)
        x = x.contiguous(memory_format=cl)
        with precision.autocast():
            s = ModelOutput(logits=student(x))
            with torch.no_grad():
                t = ModelOutput(logits=teacher(x))
            terms = method(s, t, y, StepInfo(epoch=0, step=i, epochs=1, steps_per_epoch=1,
                                             indices=idx))
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    user, sys_ = ru.ru_utime - ru0.ru_utime, ru.ru_stime - ru0.ru_stime
    return {"img_s": batch * steps / seconds, "faults_per_step": (ru.ru_minflt - ru0.ru_minflt) / steps,
            "kernel_share": sys_ / max(user + sys_, 1e-9), "mallopt": mallopt,
            "precision": precision.name, "threads": torch.get_num_threads()}


def run_variant(keep: bool, a: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, __file__, "--worker", "keep" if keep else "default",
           "--steps", str(a.steps), "--batch", str(a.batch)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per subprocess")
    ap.add_argument("--rounds", type=int, default=2, help="default/kept pairs, interleaved")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--worker", choices=["default", "keep"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker == "keep", a.steps, a.batch, a.threads)))
        return
    import torch

    print(f"wrn_28_4 -> wrn_16_2 KD step, embedded data set, batch {a.batch}, {a.steps} timed steps "
          f"x {a.rounds} rounds, torch {torch.__version__}, {os.cpu_count()} cores")
    res: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(a.rounds):
        for keep in (False, True):
            res[keep].append(run_variant(keep, a))
    print("\n| malloc | img/s (per round) | mean img/s | minor faults/step | kernel CPU share |")
    print("|---|---|---:|---:|---:|")
    means = {}
    for keep in (False, True):
        r = res[keep]
        means[keep] = sum(x["img_s"] for x in r) / len(r)
        rounds = ", ".join(f"{x['img_s']:.0f}" for x in r)
        print(f"| {r[0]['mallopt']} | {rounds} | {means[keep]:.0f} | "
              f"{sum(x['faults_per_step'] for x in r) / len(r):.0f} | "
              f"{100 * sum(x['kernel_share'] for x in r) / len(r):.0f} % |")
    print(f"\nprecision {res[True][0]['precision']}, {res[True][0]['threads']} torch threads; "
          f"kept / default = {means[True] / means[False]:.2f}x")


if __name__ == "__main__":
    main()
