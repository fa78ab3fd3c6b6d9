"""``build_data``: one entry point from a ``dataset`` config node to train/val loaders on a device.

The values every source shares are checked here (:func:`parse_config`); the rest is the source's
own, looked up in the registry (:mod:`kdsweep.data.sources`): ``check_dataset`` runs its checks,
``build_data`` its checks and its builder. No source is named in this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from omegaconf import MISSING

from kdsweep.data.bundle import (
    DataBundle,
    Loader,
    check_batch_sizes,
    check_num_classes,
    launch_dir,
    resolve_device,
    resolve_root,
    tensor_bundle,
)
from kdsweep.data.loaders import AUGMENTS
from kdsweep.data.sources import get_source
from kdsweep.errors import ConfigError


@dataclass
class DatasetConf:
    """The ``dataset`` config group's schema and defaults (presets in ``conf/dataset/``).

    ``source`` defaults to ``name`` (presets such as cinic10 set ``source: imagefolder``); its
    valid values are the registered sources (:func:`kdsweep.data.sources.list_sources`).
    """

    name: str = MISSING
    source: str | None = None
    root: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: str = "crop_flip"
    in_memory: bool = True
    download: bool = False
    num_workers: int | None = None
    val_split: str | None = None
    padding: int = 4
    val_resize: int | None = None
    cache: bool = True
    cache_dir: str | None = None
    skip_bad_images: bool = False   # in_memory ImageFolder: leave unreadable images out (warned)


DEFAULTS: dict[str, Any] = {f.name: (None if f.default is MISSING else f.default)
                            for f in fields(DatasetConf)}


def _as_dict(cfg: Mapping) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(cfg)


def parse_config(cfg: Mapping) -> dict[str, Any]:
    """Defaults filled in and values checked; raises ConfigError naming the bad ``dataset.*`` key."""
    raw = _as_dict(cfg)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown dataset keys {unknown}; known: {sorted(DEFAULTS)}")
    c = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    if not c["name"]:
        raise ConfigError("dataset.name is missing; expected e.g. embedded, cifar10, imagefolder")
    c["source"] = c["source"] or c["name"]
    get_source(c["source"])  # a ConfigError naming the registered sources
    if c["augment"] not in AUGMENTS:
        raise ConfigError(f"dataset.augment={c['augment']!r}; expected one of {list(AUGMENTS)}")
    for key in ("mean", "std"):
        v = c[key]
        if v is not None and (len(v) != 3 or (key == "std" and min(v) <= 0)):
            raise ConfigError(f"dataset.{key}={list(v)}; expected 3 per-channel values"
                              + (" > 0" if key == "std" else ""))
    for key in ("mean", "std"):
        v = c[key]
        if v is not None and not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
            raise ConfigError(f"dataset.{key}={list(v)}; expected 3 finite per-channel values")
    for key, hi in LIMITS.items():
        v = c[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or not (0 if key in ("padding", "num_workers") else 1) <= v <= hi):
            lo = 0 if key in ("padding", "num_workers") else 1
            raise ConfigError(f"dataset.{key}={v!r}; expected an integer in [{lo}, {hi}]"
                              + ("" if key in ("padding",) else " or null"))
    if c["image_size"] is not None and c["padding"] >= c["image_size"]:
        raise ConfigError(f"dataset.padding={c['padding']} must be smaller than "
                          f"dataset.image_size={c['image_size']}")
    if not isinstance(c["skip_bad_images"], bool):
        raise ConfigError(f"dataset.skip_bad_images={c['skip_bad_images']!r}; expected true or false")
    if c["num_workers"] is None:
        c["num_workers"] = min(8, os.cpu_count() or 1)
    return c


#: Upper bounds of the data set's integer options (a typo of a few extra digits, or a size no
#: memory holds, is refused before any work).
LIMITS = {"image_size": 4096, "num_classes": 1_000_000, "val_resize": 8192, "padding": 512,
          "num_workers": 256}


def check_dataset(cfg: Mapping) -> None:
    """Every check of the ``dataset`` node that needs no decoding: values (:func:`parse_config`)
    and that its files are where it says (or will be downloaded). Raises one line."""
    c = parse_config(cfg)
    get_source(c["source"]).check(c)


def build_data(cfg: Mapping, *, batch_size: int, eval_batch_size: int,
               device: torch.device | str = "cpu", seed: int = 0) -> DataBundle:
    """Build the train/val loaders described by the ``dataset`` config node (see docs/data.md).

    Both loaders yield ``(images float32 N,3,S,S normalised, labels int64, indices int64)`` on
    ``device``; call ``loader.set_epoch(e)`` before each epoch for (seed, epoch) reproducibility.
    """
    c = parse_config(cfg)
    source = get_source(c["source"])
    source.check(c)
    return source.build(c, batch_size=batch_size, eval_batch_size=eval_batch_size,
                        device=resolve_device(device), seed=int(seed))


__all__ = ["DataBundle", "DatasetConf", "Loader", "build_data", "check_batch_sizes",
           "check_dataset", "check_num_classes", "launch_dir", "parse_config", "resolve_root",
           "tensor_bundle"]
