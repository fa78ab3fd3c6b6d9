"""Training-step throughput, side by side in one run: memory format and CPU thread sharing.

    python benchmarks/bench_train.py [--models resnet8 resnet20 wrn_16_2] [--steps 20]

1. NCHW vs channels_last (NHWC) for the same model, interleaved A/B/A/B so that machine noise hits
   both; prints images/s and the ratio.
2. Two concurrent training processes with torch's default thread count (oversubscribed on a small
   machine) vs two processes with ``torch.set_num_threads(cores // 2)``: total images/s and ratio.
   This is why kdsweep has ``cpu_threads``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time

import torch
import torch.nn.functional as F

from kdsweep.models import create_model


def step_rate(name: str, channels_last: bool, steps: int, batch: int = 64, threads: int | None = None) -> float:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, num_classes=10).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def _worker(args: tuple[str, int, int | None], out: mp.Queue) -> None:
    name, steps, threads = args
    out.put(step_rate(name, True, steps, threads=threads))


def concurrent(name: str, steps: int, threads: int | None, procs: int = 2) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=_worker, args=((name, steps, threads), q)) for _ in range(procs)]
    for p in ps:
        p.start()
    rates = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet8", "resnet20", "wrn_16_2"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cores} cores, batch 64, 32x32")
    print("\n| model | NCHW img/s | channels_last img/s | ratio |\n|---|---:|---:|---:|")
    for name in a.models:
        a_r, b_r = [], []
        for _ in range(a.rounds):
            a_r.append(step_rate(name, False, a.steps))
            b_r.append(step_rate(name, True, a.steps))
        nchw, nhwc = sum(a_r) / len(a_r), sum(b_r) / len(b_r)
        print(f"| {name} | {nchw:.0f} | {nhwc:.0f} | {nhwc / nchw:.2f} |")
    name = a.models[0]
    over = concurrent(name, a.steps, None)
    shared = concurrent(name, a.steps, max(1, cores // 2))
    print(f"\n2 concurrent {name} trainings: default threads {over:.0f} img/s total, "
          f"cpu_threads={max(1, cores // 2)} {shared:.0f} img/s total, ratio {shared / over:.2f}")


if __name__ == "__main__":
    main()
