"""Throughput of kdsweep's tensor loader vs a torchvision DataLoader with per-sample transforms.

Both read the same decoded embedded set (5,000 train images, 32x32) and produce the same thing:
shuffled batches, RandomCrop(32, padding=4) + horizontal flip, float32 normalised NCHW. Nothing
else runs (no model), so the numbers are the data path's ceiling on this machine.

    python benchmarks/bench_data.py [--epochs 3 --batch-size 128 --workers 0 2 --device cpu --threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from kdsweep.data import build_data, load_embedded
from kdsweep.data.embedded_io import EMBEDDED_PATH, decode_packed


def images_per_s(loader, epochs: int, device: torch.device) -> float:
    rates = []
    for e in range(epochs + 1):  # epoch 0 warms up (worker start, allocator)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        t, n = time.perf_counter(), 0
        for x, *_ in loader:
            n += len(x)
            x = x.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if e:
            rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


class PerSample(torch.utils.data.Dataset):
    def __init__(self, x, y, transform, pil: bool):
        self.x = x.permute(0, 2, 3, 1).numpy() if pil else x  # PIL path starts from HWC numpy
        self.y, self.transform, self.pil = y, transform, pil

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i]
        if self.pil:
            from PIL import Image

            img = Image.fromarray(img)
        return self.transform(img), self.y[i], i


def torchvision_loader(x, y, mean, std, batch_size, workers, pil):
    if pil:  # the classic CIFAR recipe of RepDistiller / pytorch-cifar (transforms v1 on PIL)
        from torchvision import transforms as T

        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(mean, std)])
    else:  # transforms v2 on uint8 tensors
        from torchvision.transforms import v2

        tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    return torch.utils.data.DataLoader(PerSample(x, y, tf, pil), batch_size=batch_size,
                                       shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    import torchvision.io  # noqa: F401  (imported before timing: the decode alone is measured)

    z = dict(np.load(EMBEDDED_PATH))
    t = time.perf_counter()
    decode_packed(z["train_jpeg"], z["train_offsets"])
    decode_packed(z["test_jpeg"], z["test_offsets"])
    t_decode = time.perf_counter() - t
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}, device {dev}")
    print(f"embedded set: decode 6,000 JPEGs {t_decode:.2f} s")

    bundle = build_data({"name": "embedded"}, batch_size=args.batch_size,
                        eval_batch_size=args.batch_size, device=dev)
    ours = images_per_s(bundle.train, args.epochs, dev)
    print(f"kdsweep TensorLoader (batched crop+flip+normalise on {dev}): {ours:,.0f} img/s")
    d = load_embedded()
    for pil in (True, False):
        for w in args.workers:
            loader = torchvision_loader(d.train_x, d.train_y, bundle.mean, bundle.std,
                                        args.batch_size, w, pil)
            rate = images_per_s(loader, args.epochs, dev)
            kind = "PIL + transforms v1" if pil else "uint8 tensor + transforms v2"
            print(f"torchvision DataLoader ({kind}, {w} workers): {rate:,.0f} img/s "
                  f"-> tensor loader is {ours / rate:.1f}x faster")


if __name__ == "__main__":
    main()
