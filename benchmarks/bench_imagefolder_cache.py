"""In-memory ImageFolder start-up: first build (decode + write the cache) vs cached build.

    python benchmarks/bench_imagefolder_cache.py [--root ../shared/data/cifar10-jpg] [--workers N]

Calls ``build_data`` twice on the same tree with a fresh, empty cache directory (deleted at the
end): the first call lists the files, fingerprints them, decodes every image and writes the cache;
the second finds the cache. Prints both wall times and the cache files' sizes. The first call also
pays for importing torchvision. The OS page cache is not dropped, so a tree read recently decodes
faster than a cold one.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "cifar10-jpg"))
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default min(8, CPUs))")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from kdsweep.data import build_data

    cache = tempfile.mkdtemp(prefix="kdsweep-cache-")
    cfg = {"name": "bench", "source": "imagefolder", "root": a.root, "image_size": a.image_size,
           "mean": [0.5] * 3, "std": [0.25] * 3, "in_memory": True, "cache_dir": cache,
           "num_workers": a.workers}
    try:
        for label in ("first build (decode + write cache)", "second build (cache)"):
            t = time.perf_counter()
            b = build_data(cfg, batch_size=2, eval_batch_size=2)
            print(f"{label}: {time.perf_counter() - t:.1f} s, {b.num_train} + {b.num_val} images",
                  flush=True)
        for f in sorted(os.listdir(cache)):
            print(f"  {f}: {os.path.getsize(os.path.join(cache, f)) / 1e6:.1f} MB")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
