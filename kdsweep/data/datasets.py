"""Tensor-backed data sources: the embedded CIFAR-10 subset and torchvision's CIFAR-10/100."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdsweep.data.embedded_io import load_embedded
from kdsweep.errors import DataError


@dataclass
class TensorSplits:
    """A whole data set in memory: uint8 N,3,H,W images and int64 labels per split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float] | None = None  # stats shipped with the data, if any
    std: tuple[float, float, float] | None = None


def embedded_splits(path: str | Path | None = None) -> TensorSplits:
    """The packaged 5,000 + 1,000 image CIFAR-10 subset (``root`` may point at another .npz)."""
    d = load_embedded(path)
    return TensorSplits(d.train_x, d.train_y, d.test_x, d.test_y, list(d.classes), d.mean, d.std)


_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python.tar.gz", "cifar-100-python"),
}


def missing_cifar(name: str, root: Path, download: bool) -> str | None:
    """Why CIFAR ``name`` cannot be loaded from ``root`` without downloading (None: it can, or
    ``download`` is set)."""
    _, archive, folder = _CIFAR[name]
    if download or (root / folder).is_dir() or (root / archive).is_file():
        return None
    return (f"{name}: no data under {root}; put {archive} (or its extracted {folder}/) under "
            f"{root}, or set dataset.download=true to fetch it when online")


def cifar_splits(name: str, root: Path, download: bool) -> TensorSplits:
    """CIFAR-10/100 through ``torchvision.datasets`` (downloads into ``root`` when asked).

    Offline without the files -> one-line DataError saying which file to put where. A present
    ``.tar.gz`` without its extracted folder is extracted here (torchvision only does that when
    downloading).
    """
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import extract_archive

    cls_name, archive, folder = _CIFAR[name]
    where = (f"put {archive} (or its extracted {folder}/) under {root}, "
             "or set dataset.download=true to fetch it when online")
    if not download and not (root / folder).is_dir():
        if (root / archive).is_file():
            try:
                extract_archive(str(root / archive), str(root))
            except Exception as exc:  # corrupt archive: tarfile raises several types
                raise DataError(f"{name}: cannot extract {root / archive} ({exc}); {where}") from exc
        else:
            raise DataError(f"{name}: no data under {root}; {where}")
    cls = getattr(tvd, cls_name)
    try:
        train = cls(str(root), train=True, download=download)
        val = cls(str(root), train=False, download=False)
    except (urllib.error.URLError, OSError, ConnectionError) as exc:
        raise DataError(f"{name}: download into {root} failed ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); offline, "
                        f"put {archive} (or its extracted {folder}/) under {root} and keep "
                        "dataset.download=false") from exc
    except RuntimeError as exc:  # "Dataset not found or corrupted"
        raise DataError(f"{name}: files under {root / folder} are missing or corrupt; {where}") \
            from exc

    def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    tx, ty = to_tensors(train)
    vx, vy = to_tensors(val)
    return TensorSplits(tx, ty, vx, vy, list(train.classes))


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 N,C,H,W images scaled to [0, 1] (float64 accumulation)."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        b = x[i:i + chunk].to(torch.float64).div_(255.0)
        s += b.sum(dim=(0, 2, 3)).cpu()
        s2 += b.pow(2).sum(dim=(0, 2, 3)).cpu()
    n = x.numel() / c
    mean = s / n
    std = (s2 / n - mean**2).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
