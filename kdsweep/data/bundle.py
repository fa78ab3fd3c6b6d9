"""What a data set becomes: a :class:`DataBundle` of train/val loaders on a device, and the helpers
every source uses to make one (root paths, batch-size and class-count checks, in-memory tensors).

Below both ``build`` (the entry point) and the sources (``datasets``, ``imagefolder``, any module
that calls :func:`~kdsweep.data.sources.register_source`), so that neither imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from kdsweep.data.loaders import TensorLoader
from kdsweep.errors import ConfigError


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


class Loader(Protocol):
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def __iter__(self): ...  # -> (x float32 NCHW normalised, y int64, idx int64) on the device


@dataclass
class DataBundle:
    train: Loader
    val: Loader
    num_classes: int
    image_size: int
    name: str
    num_train: int
    num_val: int
    classes: list[str]
    mean: tuple[float, ...] = field(default=(0.0, 0.0, 0.0))
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))
    train_labels: torch.Tensor | None = None  # int64 on CPU, position i = train index i


def launch_dir() -> Path:
    """Directory relative paths are resolved against: Hydra's original cwd if Hydra runs, else cwd."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import get_original_cwd

        if HydraConfig.initialized():
            return Path(get_original_cwd())
    except ImportError:  # pragma: no cover
        pass
    return Path.cwd()


def resolve_root(root: str | os.PathLike | None, default: str | None = None) -> Path | None:
    root = root if root not in (None, "") else default
    if root is None:
        return None
    p = Path(os.path.expandvars(str(root))).expanduser()
    return p if p.is_absolute() else launch_dir() / p


def resolve_device(device: torch.device | str) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_batch_sizes(batch_size: int, eval_batch_size: int, num_train: int, name: str) -> None:
    if int(batch_size) < 1:
        raise ConfigError(f"schedule.batch_size={batch_size}; expected a positive integer")
    if int(eval_batch_size) < 1:
        raise ConfigError(f"eval_batch_size={eval_batch_size}; expected a positive integer")
    if int(batch_size) > num_train:
        raise ConfigError(f"schedule.batch_size={batch_size} is larger than the {num_train} "
                          f"training images of data set {name!r}; use at most {num_train}")


def check_num_classes(c: dict[str, Any], found: int, where: str) -> None:
    if c["num_classes"] is not None and int(c["num_classes"]) != found:
        raise ConfigError(f"dataset.num_classes={c['num_classes']} but {where} has {found} classes")


def tensor_bundle(c: dict[str, Any], s: TensorSplits, *, batch_size: int, eval_batch_size: int,
                  device: torch.device, seed: int, where: str) -> DataBundle:
    """Wrap in-memory splits into train/val :class:`TensorLoader` s (config already parsed)."""
    check_num_classes(c, len(s.classes), where)
    check_batch_sizes(batch_size, eval_batch_size, len(s.train_y), c["name"])
    h, w = s.train_x.shape[-2:]
    size = int(c["image_size"] or h)
    if size != h or h != w:
        raise ConfigError(f"dataset.image_size={size} but {where} holds {h}x{w} images; "
                          f"use dataset.image_size={h}")
    mean, std = c["mean"] or s.mean, c["std"] or s.std
    if mean is None or std is None:
        m, sd = channel_stats(s.train_x)
        mean, std = mean or m, std or sd
    common = dict(mean=mean, std=std, device=device, seed=seed, image_size=size)
    train = TensorLoader(s.train_x, s.train_y, batch_size=batch_size, train=True,
                         augment=c["augment"], padding=int(c["padding"]), **common)
    val = TensorLoader(s.val_x, s.val_y, batch_size=eval_batch_size, train=False, **common)
    return DataBundle(train=train, val=val, num_classes=len(s.classes), image_size=size,
                      name=c["name"], num_train=len(s.train_y), num_val=len(s.val_y),
                      classes=list(s.classes), mean=tuple(map(float, mean)),
                      std=tuple(map(float, std)), train_labels=s.train_y.cpu())
