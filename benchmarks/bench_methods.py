"""What each method costs: extra trainable parameters and training-step time relative to KD.

    python benchmarks/bench_methods.py [--pair wrn_40_2:wrn_16_2] [--batch 64] [--steps 10]

One process, one pair, the same random batch for every method: a step is the teacher's forward
pass (no grad), the student's, the method's loss terms, backward and an SGD step (DOT's two
backward passes for ``kd+dot``), fp32 on the CPU, timed after 3 warm-up steps, methods
interleaved in rounds so that machine load spreads evenly. Methods with a pre-stage (ab, ft, fsp)
are timed in their main stage; their pre-stage step is timed too (``ab:init`` ...). A method that
reads the batch's strong view (mlkd) also pays for making it (:mod:`kdsweep.data.views`) and for
the teacher's and the student's passes on it. Prints one markdown row per method, for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from kdsweep.data.views import draw_strong, strong_augment  # noqa: E402
from kdsweep.engine.dot import DOT  # noqa: E402
from kdsweep.engine.member import student_body  # noqa: E402
from kdsweep.methods import BuildContext, StepInfo, create_method, list_methods  # noqa: E402
from kdsweep.models import FeatureTap, create_model  # noqa: E402

SKIP = ("ce", "multi", "modreduce", "margin_relu")


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)


def setup(name: str, tap_t, t_out_small, s_arch: str, x, y, batch: int, init: bool):
    torch.manual_seed(0)
    student = create_model(s_arch, num_classes=100)
    tap = FeatureTap(student, s_arch)
    cfg = {"name": "kd"} if name == "kd+dot" else {"name": name}
    method = create_method(cfg)
    if hasattr(method, "set_teacher"):
        method.set_teacher(tap_t)
    ctx = BuildContext(num_train=50000, train_labels=torch.randint(0, 100, (50000,)), num_classes=100, epochs=240, steps_per_epoch=782,
                       batch_size=batch, teacher_tap=tap_t, teacher_arch=None, student_arch=s_arch)
    student.eval()
    with torch.no_grad():
        method.build(tap(x[:2]), t_out_small, ctx)
    if init:
        params = method.init_parameters(student_body(student, s_arch))
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        params = [p for p in [*student.parameters(), *method.parameters()] if p.requires_grad]
        opt = (DOT(params, lr=0.05) if name == "kd+dot" else
               torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4))
    student.train()
    method.train()
    extra = method.extra_parameters()
    return student, tap, method, opt, extra


IMAGES = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0))
DRAWS = draw_strong(torch.Generator().manual_seed(1), 256)


def step(name, tap_t, tap, method, opt, x, y, init: bool) -> None:
    with torch.no_grad():
        t_out = tap_t(x)
    s_out = tap(x)
    if method.views and not init:  # the view made from uint8 images, as the loader does
        n = x.shape[0]
        xv = strong_augment(IMAGES[:n], {k: v[:n] for k, v in DRAWS.items()}).float() / 255
        with torch.no_grad():
            t_out.views = {"strong": tap_t(xv)}
        s_out.views = {"strong": tap(xv)}
    info = StepInfo(epoch=30, step=0, epochs=240, steps_per_epoch=782,
                    indices=torch.arange(x.shape[0]))  # CRD's memory bank
    terms = method.init_forward(s_out, t_out, info) if init else method(s_out, t_out, y, info)
    opt.zero_grad(set_to_none=True)
    if isinstance(opt, DOT):
        sum(v for k, v in terms.items() if k != "ce").backward(retain_graph=True)
        opt.stash_distillation_grads()
        terms["ce"].backward()
    else:
        sum(terms.values()).backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", default="wrn_40_2:wrn_16_2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--methods", nargs="*")
    a = ap.parse_args()
    t_arch, s_arch = a.pair.split(":")
    torch.manual_seed(0)
    teacher = create_model(t_arch, num_classes=100).eval().requires_grad_(False)
    tap_t = FeatureTap(teacher, t_arch)
    x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 100, (a.batch,))
    with torch.no_grad():
        t_small = tap_t(x[:2])
    names = a.methods or ["kd", *[m for m in list_methods() if m not in SKIP and m != "kd"],
                          "kd+dot"]
    jobs = {}
    for n in names:
        try:
            jobs[n] = (*setup(n, tap_t, t_small, s_arch, x, y, a.batch, False), False)
        except Exception as e:  # a pair the method refuses
            print(f"{n}: refused: {str(e).splitlines()[0][:120]}")
            continue
        if getattr(jobs[n][2], "init_epochs", 0):
            jobs[f"{n}:init"] = (*setup(n, tap_t, t_small, s_arch, x, y, a.batch, True), True)
    times = {n: [] for n in jobs}
    for _ in range(3):
        for n, (_s, tap, m, opt, _e, init) in jobs.items():
            step(n.split(":")[0], tap_t, tap, m, opt, x, y, init)
    for _ in range(a.steps):
        for n, (_s, tap, m, opt, _e, init) in jobs.items():
            t0 = time.perf_counter()
            step(n.split(":")[0], tap_t, tap, m, opt, x, y, init)
            times[n].append(time.perf_counter() - t0)
    base = sorted(times["kd"])[len(times["kd"]) // 2]
    print(f"pair {a.pair}, batch {a.batch}, {a.steps} steps, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU flags: {cpu_flags()}")
    print("| method | extra params | step time / KD |")
    print("|---|---:|---:|")
    for n, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"| `{n}` | {jobs[n][4]:,} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
