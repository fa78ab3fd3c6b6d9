"""Ways to run a frozen teacher's forward pass faster in fp32, side by side in one run.

    python benchmarks/bench_teacher.py [--arch wrn_28_4] [--batch 128] [--repeats 5]

The teacher's forward pass is most of a KD step on a CPU (1.65 s of 2.5 s per batch for wrn_28_4 ->
wrn_16_2 at batch 128, docs/benchmarks.md), so a cheaper teacher would speed every KD run up. This
times, on one random batch, in inference mode, the candidates a frozen network allows:

* eager, NCHW and channels_last (kdsweep's default);
* Conv-BN folding (``torch.fx.experimental.optimization.fuse``), channels_last;
* TorchScript freezing (``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``: folded
  BatchNorm, oneDNN weight prepacking), channels_last.

Each is timed ``--repeats`` times after one warm-up call (the median is printed) and compared
with eager channels_last: the ratio, and the largest absolute difference of the logits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="wrn_28_4")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch
    from torch.fx.experimental.optimization import fuse

    from kdsweep.models import create_model

    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=10).eval().requires_grad_(False)
    x = torch.randn(args.batch, 3, 32, 32)
    cl = torch.channels_last

    def timed(fn, batch) -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            out = fn(batch)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn(batch)
                times.append(time.perf_counter() - start)
        return statistics.median(times), out

    candidates = {
        "eager, NCHW": lambda: (model.to(memory_format=torch.contiguous_format), x),
        "eager, channels_last (default)": lambda: (model.to(memory_format=cl),
                                                   x.contiguous(memory_format=cl)),
        "Conv-BN folded (torch.fx fuse)": lambda: (fuse(model.to(memory_format=cl)),
                                                   x.contiguous(memory_format=cl)),
        "TorchScript freeze + optimize_for_inference": lambda: _frozen(model.to(memory_format=cl),
                                                                       x.contiguous(memory_format=cl)),
    }
    print(f"{args.arch}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    results = []
    for name, make in candidates.items():
        fn, batch = make()
        results.append((name, *timed(fn, batch)))
    _, base, ref = next(r for r in results if r[0].endswith("(default)"))
    for name, seconds, out in results:
        diff = float((out.float() - ref.float()).abs().max())
        print(f"{name:45s} {seconds:6.3f} s  {base / seconds:5.2f}x  max|logit diff| {diff:.1e}")
    return 0


def _frozen(model, batch):
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, batch)))
    return frozen, batch


if __name__ == "__main__":
    sys.exit(main())
