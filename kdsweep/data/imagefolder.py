"""ImageFolder trees ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` (or ``test/``).

``in_memory: true`` decodes every image once (worker processes, tqdm progress) into a uint8
N,3,S,S tensor for :class:`~kdsweep.data.loaders.TensorLoader`; images that are not S x S get their
shorter side resized to S and are centre-cropped. The decoded tensor is cached in
``cache_dir`` (default ``$KDSWEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdsweep``, else
``~/.cache/kdsweep``) under a name keyed by the root, split, size and every file's path, size and
mtime, so a changed tree is decoded again. ``in_memory: false`` streams the files through a
DataLoader with torchvision v2 transforms (:class:`~kdsweep.data.loaders.StreamingLoader`).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.data.datasets import TensorSplits
from kdsweep.errors import ConfigError, DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or ROOT/test/...)"
CACHE_VERSION = 1


def split_dirs(root: Path, val_split: str | None = None) -> tuple[Path, Path]:
    """``(train_dir, val_dir)``; ``val_split`` null picks ``val/`` if present, else ``test/``."""
    if not root.is_dir():
        raise DataError(f"imagefolder root {root} does not exist; expected {LAYOUT} "
                        "(set dataset.root)")
    train = root / "train"
    choices = [val_split] if val_split else ["val", "test"]
    val = next((root / v for v in choices if (root / v).is_dir()), None)
    if not train.is_dir() or val is None:
        missing = "train/" if not train.is_dir() else "/ or ".join(choices) + "/"
        raise DataError(f"imagefolder root {root} has no {missing}; expected {LAYOUT}")
    return train, val


def list_images(split: Path, classes: list[str] | None = None) -> tuple[list[str], list[int],
                                                                        list[str]]:
    """Sorted ``(relative file paths, labels, classes)``; ``classes`` fixes the label mapping."""
    found = sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise DataError(f"{split} has no class sub-folders; expected {LAYOUT}")
    if classes is None:
        classes = found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise DataError(f"{split} has classes {extra[:5]} that are not in the train split")
    files: list[str] = []
    labels: list[int] = []
    for name in found:
        names = sorted(e.name for e in os.scandir(split / name)
                       if e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file())
        if not names:
            raise DataError(f"class folder {split / name} holds no images ({', '.join(IMG_EXTENSIONS)})")
        files += [f"{name}/{n}" for n in names]
        labels += [classes.index(name)] * len(names)
    return files, labels, classes


def _read_bytes(path: str | Path) -> torch.Tensor:
    """The file's bytes as a uint8 tensor (plain Python I/O: cheaper than torchvision's read_file)."""
    try:
        with open(path, "rb") as fh:
            return torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc.strerror or exc}") from exc


def _is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and data.numpy()[:2].tobytes() == b"\xff\xd8"


def _square(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """Shorter side resized to ``size`` (antialiased), then centre-cropped to size x size."""
    from torchvision.transforms.v2 import functional as TF

    if size is not None and tuple(img.shape[-2:]) != (size, size):
        img = TF.center_crop(TF.resize(img, size, antialias=True), [size, size])
    return img


def read_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """uint8 3,H,W RGB; with ``size``: shorter side resized to ``size``, centre-cropped square."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    try:
        data = _read_bytes(path)
        img = (decode_jpeg if _is_jpeg(data) else decode_image)(data, mode=ImageReadMode.RGB)
    except RuntimeError:  # formats libjpeg/libpng cannot read: fall back to PIL
        try:
            from PIL import Image

            with Image.open(path) as im:
                img = TF.pil_to_tensor(im.convert("RGB"))
        except Exception as exc:
            raise DataError(f"cannot decode image {path}: {exc}") from exc
    return _square(img, size)


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, base: Path, files: list[str], size: int, chunk: int = 256):
        self.base, self.files, self.size, self.chunk = str(base), np.array(files), size, chunk

    def __len__(self) -> int:
        return (len(self.files) + self.chunk - 1) // self.chunk

    def __getitem__(self, i: int) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        paths = [os.path.join(self.base, f) for f in self.files[i * self.chunk:(i + 1) * self.chunk]]
        data = [_read_bytes(p) for p in paths]
        if all(_is_jpeg(d) for d in data):
            try:  # fast path: one batched decode call for the whole chunk
                imgs = decode_jpeg(data, mode=ImageReadMode.RGB)
                return torch.stack([_square(im, self.size) for im in imgs])
            except RuntimeError:
                pass  # some file needs the per-file path (and its error message)
        return torch.stack([read_image(p, self.size) for p in paths])


def decode_split(base: Path, files: list[str], size: int, num_workers: int,
                 desc: str) -> torch.Tensor:
    """Decode ``files`` (relative to ``base``) into uint8 N,3,size,size with worker processes."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_Chunks(base, files, size), batch_size=None,
                                         num_workers=num_workers)
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    pos = 0
    with tqdm(total=len(files), desc=desc, unit="img", disable=None, leave=False) as bar:
        for x in loader:
            out[pos:pos + len(x)] = x
            pos += len(x)
            bar.update(len(x))
    return out


def cache_dir(configured: str | None) -> Path:
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    if os.environ.get("KDSWEEP_CACHE_DIR"):
        return Path(os.environ["KDSWEEP_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "kdsweep"


def _cache_file(cdir: Path, name: str, split: Path, files: list[str], size: int) -> Path:
    h = hashlib.sha256(f"{CACHE_VERSION}|{split.resolve()}|{size}".encode())
    for f in files:
        st = os.stat(split / f)
        h.update(f"|{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cdir / f"{safe}-{split.name}-{size}px-{h.hexdigest()[:16]}.pt"


def load_split_in_memory(c: dict[str, Any], split: Path, files: list[str], size: int) -> torch.Tensor:
    """Decoded uint8 tensor of one split, from the cache when it is valid (see module docstring)."""
    path = _cache_file(cache_dir(c["cache_dir"]), c["name"], split, files, size) \
        if c["cache"] else None
    if path is not None and path.is_file():
        try:
            x = torch.load(path, map_location="cpu", weights_only=True)
            if x.dtype == torch.uint8 and tuple(x.shape) == (len(files), 3, size, size):
                return x
        except Exception:  # unreadable cache: decode again below and overwrite it
            pass
    x = decode_split(split, files, size, int(c["num_workers"]), f"decoding {split}")
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(x, tmp)
            os.replace(tmp, path)
        except OSError as exc:
            warnings.warn(f"could not write the decoded-image cache {path}: {exc}", stacklevel=2)
    return x


class FileDataset(torch.utils.data.Dataset):
    """Maps a key ``(index, seed)`` to ``(uint8 3,S,S, label, index)``; random transforms run under
    the global CPU generator seeded with ``seed`` (state restored afterwards), so they depend on the
    key only."""

    def __init__(self, base: Path, files: list[str], labels: list[int], transform, random: bool):
        self.base, self.files = str(base), np.array(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform, self.random = transform, random

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        img = read_image(os.path.join(self.base, self.files[i]))
        if self.random:  # v2 transforms draw from the global CPU generator: seed it per sample
            gen = torch.default_generator
            state = gen.get_state()  # restored so that the main process (num_workers=0) is unaffected
            gen.manual_seed(seed)  # (torch.manual_seed would also touch CUDA and is ~100x slower)
            try:
                img = self.transform(img)
            finally:
                gen.set_state(state)
        else:
            img = self.transform(img)
        return img, int(self.labels[i]), int(i)


def stream_transforms(augment: str, size: int, padding: int, val_resize: int | None):
    """torchvision v2 pipelines on uint8 tensors: ``(train, val)``; normalisation is on the device."""
    from torchvision.transforms import v2

    square = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    if augment == "resized_crop_flip":
        train = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        val_resize = val_resize or round(size / 0.875)
    elif augment == "crop_flip":
        train = square + [v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()]
    else:
        train = square
    val = [v2.Resize(val_resize or size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(train), v2.Compose(val)


def imagefolder_bundle(c: dict[str, Any], *, batch_size: int, eval_batch_size: int,
                       device: torch.device, seed: int):
    from kdsweep.data.build import (
        DataBundle,
        check_batch_sizes,
        check_num_classes,
        resolve_root,
        tensor_bundle,
    )
    from kdsweep.data.loaders import StreamingLoader

    if c["root"] in (None, "", "???"):
        raise ConfigError(f"dataset.root is not set; point it at an ImageFolder tree: {LAYOUT}")
    root = resolve_root(c["root"])
    train_dir, val_dir = split_dirs(root, c["val_split"])
    tfiles, tlabels, classes = list_images(train_dir)
    vfiles, vlabels, _ = list_images(val_dir, classes)
    check_num_classes(c, len(classes), str(train_dir))
    size = c["image_size"]
    if c["in_memory"]:
        if size is None:
            h, w = read_image(train_dir / tfiles[0]).shape[-2:]
            if h != w:
                raise ConfigError(f"dataset.image_size is null and {train_dir / tfiles[0]} is "
                                  f"{h}x{w}; set dataset.image_size for in-memory loading")
            size = h
        splits = TensorSplits(
            load_split_in_memory(c, train_dir, tfiles, int(size)),
            torch.as_tensor(tlabels, dtype=torch.int64),
            load_split_in_memory(c, val_dir, vfiles, int(size)),
            torch.as_tensor(vlabels, dtype=torch.int64), classes)
        c = {**c, "image_size": int(size)}
        return tensor_bundle(c, splits, batch_size=batch_size, eval_batch_size=eval_batch_size,
                             device=device, seed=seed, where=str(root))
    if size is None or c["mean"] is None or c["std"] is None:
        raise ConfigError("dataset.in_memory=false needs dataset.image_size, dataset.mean and "
                          f"dataset.std set (got {size}, {c['mean']}, {c['std']})")
    check_batch_sizes(batch_size, eval_batch_size, len(tfiles), c["name"])
    ttf, vtf = stream_transforms(c["augment"], int(size), int(c["padding"]), c["val_resize"])
    nw = int(c["num_workers"])
    common = dict(mean=c["mean"], std=c["std"], seed=seed, device=device, num_workers=nw)
    ytrain = torch.as_tensor(tlabels, dtype=torch.int64)
    train = StreamingLoader(FileDataset(train_dir, tfiles, tlabels, ttf, c["augment"] != "none"),
                            ytrain, batch_size=batch_size, train=True, **common)
    val = StreamingLoader(FileDataset(val_dir, vfiles, vlabels, vtf, False),
                          torch.as_tensor(vlabels, dtype=torch.int64),
                          batch_size=eval_batch_size, train=False, **common)
    return DataBundle(train=train, val=val, num_classes=len(classes), image_size=int(size),
                      name=c["name"], num_train=len(tfiles), num_val=len(vfiles),
                      classes=classes, mean=tuple(c["mean"]), std=tuple(c["std"]),
                      train_labels=ytrain)
