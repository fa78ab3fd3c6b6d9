"""Read the embedded CIFAR-10 subset (``embedded/cifar10_subset.npz``) into uint8 NCHW tensors."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.errors import DataError

EMBEDDED_PATH = Path(__file__).with_name("embedded") / "cifar10_subset.npz"

_CACHE: dict[tuple[str, int, int], EmbeddedData] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class EmbeddedData:
    train_x: torch.Tensor  # uint8 N,3,32,32
    train_y: torch.Tensor  # int64 N
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def decode_packed(jpeg: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """Decode concatenated JPEG files (``offsets`` of length n+1) into one uint8 N,3,H,W tensor.

    Uses the batched list API of :func:`torchvision.io.decode_jpeg`; all images must share a size.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.from_numpy(np.ascontiguousarray(jpeg, dtype=np.uint8))
    bounds = offsets.tolist()
    blobs = [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if not blobs:
        return torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    try:
        images = decode_jpeg(blobs, mode=ImageReadMode.RGB)
        return torch.stack(images)
    except RuntimeError as exc:
        raise DataError(f"cannot decode the packed JPEG images: {exc}".splitlines()[0]) from exc


def load_embedded(path: str | Path | None = None) -> EmbeddedData:
    """Load and decode the embedded subset once per process (cached by path, size and mtime)."""
    path = Path(path) if path is not None else EMBEDDED_PATH
    if not path.is_file():
        raise DataError(f"embedded data file {path} is missing; rebuild it with "
                        "`python tools/build_embedded.py --source ../shared/data/cifar10-jpg "
                        f"--out {path}` (see docs/data.md)")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"embedded data file {path} is unreadable ({exc}); rebuild it "
                            "as described in docs/data.md") from exc
        need = {"train_jpeg", "train_offsets", "train_labels", "test_jpeg", "test_offsets",
                "test_labels", "classes", "mean", "std"}
        if not need <= set(arrays):
            raise DataError(f"embedded data file {path} lacks keys {sorted(need - set(arrays))}")
        data = EmbeddedData(
            train_x=decode_packed(arrays["train_jpeg"], arrays["train_offsets"]),
            train_y=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
            test_x=decode_packed(arrays["test_jpeg"], arrays["test_offsets"]),
            test_y=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
            classes=[str(c) for c in arrays["classes"]],
            mean=tuple(float(v) for v in arrays["mean"]),
            std=tuple(float(v) for v in arrays["std"]),
        )
        _CACHE[key] = data
        return data
