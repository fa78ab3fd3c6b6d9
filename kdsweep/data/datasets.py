"""Tensor-backed data sources: the embedded CIFAR-10 subset (``dataset.source=embedded``) and
torchvision's CIFAR-10/100 (``cifar10``, ``cifar100``), each declared here once with
:func:`~kdsweep.data.sources.register_source`: its checks before any work and its builder."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.data.bundle import DataBundle, TensorSplits, resolve_root, tensor_bundle
from kdsweep.data.embedded_io import EMBEDDED_PATH, load_embedded
from kdsweep.data.sources import register_source
from kdsweep.errors import DataError


def embedded_splits(path: str | Path | None = None) -> TensorSplits:
    """The packaged 5,000 + 1,000 image CIFAR-10 subset (``root`` may point at another .npz)."""
    d = load_embedded(path)
    return TensorSplits(d.train_x, d.train_y, d.test_x, d.test_y, list(d.classes), d.mean, d.std)


def check_embedded(c: dict[str, Any]) -> None:
    """``dataset.root`` is optional (null: the packaged file); when set, it must exist."""
    if c["root"] not in (None, ""):
        root = resolve_root(c["root"])
        if root is not None and not root.exists():
            raise DataError(f"dataset.root={c['root']}: {root} does not exist")


@register_source("embedded", check=check_embedded, location=str(EMBEDDED_PATH))
def build_embedded(c: dict[str, Any], **common: Any) -> DataBundle:
    """The 5,000 + 1,000 real CIFAR-10 images shipped in the package (or another .npz at root)."""
    root = resolve_root(c["root"])
    return tensor_bundle(c, embedded_splits(root), where=str(root or "the embedded set"), **common)


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


def check_cifar(c: dict[str, Any]) -> None:
    """The files are under ``dataset.root`` (default ``data``), or ``dataset.download`` is set."""
    problem = missing_cifar(c["source"], resolve_root(c["root"], default="data"),
                            bool(c["download"]))
    if problem:
        raise DataError(problem)


@register_source("cifar10", "cifar100", check=check_cifar)
def build_cifar(c: dict[str, Any], **common: Any) -> DataBundle:
    """CIFAR-10/100 through torchvision.datasets (50,000 + 10,000 images, 32 px)."""
    root = resolve_root(c["root"], default="data")
    splits = cifar_splits(c["source"], root, bool(c["download"]))
    return tensor_bundle(c, splits, where=str(root), **common)
