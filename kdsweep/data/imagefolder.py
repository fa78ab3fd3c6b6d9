"""``dataset.source=imagefolder``: trees ``ROOT/train/<class>/*`` + ``ROOT/val/<class>/*`` (or
``test/``), registered here with its checks (:func:`check_imagefolder`) and builder.

``in_memory: true`` decodes every image once (worker processes; a tqdm bar on a terminal, else a
log line every 30 s, and a final log line with the time taken) into a uint8 N,3,S,S tensor for
:class:`~kdsweep.data.loaders.TensorLoader`; images that are not S x S get their shorter side
resized to S and are centre-cropped.

The decoded split is cached (``dataset.cache``, default true) as
``<cache_dir>/<name>-<split>-<S>px-<where>-<content>.pt``; ``cache_dir`` is ``dataset.cache_dir``,
else ``$KDSWEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdsweep``, else ``~/.cache/kdsweep`` (never
next to the data: shared trees are often read-only). ``content`` hashes every file's relative path,
byte size and mtime, so an edited, added or removed file means a new decode; the stale file is then
deleted. The cache is written to a temp file and moved into place with ``os.replace`` (a killed
run never leaves half a cache), read with ``torch.load(weights_only=True)``, and a truncated or
otherwise invalid cache is decoded again and replaced. A cache directory that cannot be written
gives a warning and the run goes on without a cache.

An image that cannot be decoded (zero bytes, truncated, not an image) is a one-line
:class:`~kdsweep.errors.DataError` naming the file, or, with ``dataset.skip_bad_images=true``, is
left out with a warning naming it.

``in_memory: false`` streams the files through a DataLoader with torchvision v2 transforms
(:class:`~kdsweep.data.loaders.StreamingLoader`); there a bad image is a one-line DataError when a
batch reaches it (``skip_bad_images`` applies to in-memory decoding only).
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdsweep.data.bundle import (
    DataBundle,
    TensorSplits,
    check_batch_sizes,
    check_num_classes,
    resolve_root,
    tensor_bundle,
)
from kdsweep.data.cache import cache_dir, cache_file, read_cache, write_cache
from kdsweep.data.sources import register_source
from kdsweep.errors import ConfigError, DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or ROOT/test/...)"
log = logging.getLogger(__name__)


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
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read image file {path}: {exc.strerror or exc}") from exc
    if not raw:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and data.numpy()[:2].tobytes() == b"\xff\xd8"


def _square(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """Shorter side resized to ``size`` (antialiased), then centre-cropped to size x size."""
    from torchvision.transforms.v2 import functional as TF

    if size is not None and tuple(img.shape[-2:]) != (size, size):
        img = TF.center_crop(TF.resize(img, size, antialias=True), [size, size])
    return img


_TV_WHERE = re.compile(r"^\w+, \S+:\d+, ")  # torchvision's "decode_jpeg, /src/x.cpp:171, " prefix


def _reason(exc: BaseException) -> str:
    """A short one-line reason from a decoder error (no source locations, first sentence)."""
    text = str(exc).strip()
    line = _TV_WHERE.sub("", text.splitlines()[0]) if text else type(exc).__name__
    return line.split(". ")[0].rstrip(".")


def try_read_image(path: str | Path, size: int | None = None) -> tuple[torch.Tensor | None, str]:
    """``(uint8 3,S,S image, "")``, or ``(None, reason)`` for an unreadable or undecodable file."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    try:
        data = _read_bytes(path)
    except DataError as exc:
        return None, str(exc).rsplit(": ", 1)[-1]
    if len(data) == 0:
        return None, "empty file (0 bytes)"
    try:
        img = (decode_jpeg if _is_jpeg(data) else decode_image)(data, mode=ImageReadMode.RGB)
    except RuntimeError as tv_exc:  # formats libjpeg/libpng cannot read: fall back to PIL
        try:
            from PIL import Image

            with Image.open(path) as im:
                img = TF.pil_to_tensor(im.convert("RGB"))
        except Exception:  # PIL raises many types; torchvision's reason is the clearer one
            return None, _reason(tv_exc)
    return _square(img, size), ""


def read_image(path: str | Path, size: int | None = None) -> torch.Tensor:
    """uint8 3,H,W RGB; with ``size``: shorter side resized to ``size``, centre-cropped square.
    An unreadable file is a one-line :class:`DataError` naming it."""
    img, reason = try_read_image(path, size)
    if img is None:
        raise DataError(f"cannot decode image {path}: {reason}")
    return img


class _Chunks(torch.utils.data.Dataset):
    """Chunk ``i`` -> ``(uint8 n,3,S,S, [(offset, reason), ...])``; bad files are zeros plus a reason
    (returned, not raised, so that a worker's error reaches the main process as one line)."""

    def __init__(self, base: Path, files: list[str], size: int, chunk: int = 256):
        self.base, self.files, self.size, self.chunk = str(base), np.array(files), size, chunk

    def __len__(self) -> int:
        return (len(self.files) + self.chunk - 1) // self.chunk

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        from torchvision.io import ImageReadMode, decode_jpeg

        paths = [os.path.join(self.base, f) for f in self.files[i * self.chunk:(i + 1) * self.chunk]]
        try:
            data = [_read_bytes(p) for p in paths]
        except DataError:
            data = []
        if data and all(_is_jpeg(d) for d in data):
            try:  # fast path: one batched decode call for the whole chunk
                imgs = decode_jpeg(data, mode=ImageReadMode.RGB)
                return torch.stack([_square(im, self.size) for im in imgs]), []
            except RuntimeError:
                pass  # some file needs the per-file path (and its own reason)
        out = torch.zeros(len(paths), 3, self.size, self.size, dtype=torch.uint8)
        bad: list[tuple[int, str]] = []
        for j, p in enumerate(paths):
            img, reason = try_read_image(p, self.size)
            if img is None:
                bad.append((j, reason))
            else:
                out[j] = img
        return out, bad


LOG_EVERY_S = 30.0  # progress log line interval when the tqdm bar is off (stderr not a terminal)


def decode_split(base: Path, files: list[str], size: int, num_workers: int,
                 desc: str) -> tuple[torch.Tensor, dict[int, str]]:
    """Decode ``files`` (relative to ``base``) into uint8 N,3,size,size with worker processes.

    Returns the images and ``{index: reason}`` of the files that could not be decoded (zeros in
    the tensor). A tqdm bar shows progress on a terminal; otherwise a log line every
    :data:`LOG_EVERY_S` seconds. A final log line says how long decoding took.
    """
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(_Chunks(base, files, size), batch_size=None,
                                         num_workers=num_workers)
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    bad: dict[int, str] = {}
    pos = 0
    start = last = time.perf_counter()
    with tqdm(total=len(files), desc=desc, unit="img", disable=None, leave=False) as bar:
        for x, chunk_bad in loader:
            out[pos:pos + len(x)] = x
            bad.update({pos + j: reason for j, reason in chunk_bad})
            pos += len(x)
            bar.update(len(x))
            now = time.perf_counter()
            if bar.disable and now - last >= LOG_EVERY_S:
                last = now
                log.info("%s: %d/%d images, %.0f s", desc, pos, len(files), now - start)
    seconds = time.perf_counter() - start
    log.info("decoded %d images of %s in %.1f s (%.0f images/s, %d workers)%s", len(files), base,
             seconds, len(files) / max(seconds, 1e-9), num_workers,
             f", {len(bad)} unreadable" if bad else "")
    return out, bad


def load_split_in_memory(c: dict[str, Any], split: Path, files: list[str],
                         size: int) -> tuple[torch.Tensor, dict[int, str]]:
    """Decoded uint8 tensor of one split and ``{index: reason}`` of undecodable files, from the
    cache when it is valid (see the module docstring)."""
    path = cache_file(cache_dir(c["cache_dir"]), c["name"], split, files, size) \
        if c["cache"] else None
    if path is not None:
        start = time.perf_counter()
        hit = read_cache(path, len(files), size)
        if hit is not None:
            log.info("loaded %d decoded images of %s from the cache %s in %.1f s", len(files),
                     split, path, time.perf_counter() - start)
            return hit
    x, bad = decode_split(split, files, size, int(c["num_workers"]), f"decoding {split}")
    if path is not None and write_cache(path, x, bad):
        log.info("cached the decoded images of %s as %s", split, path)
    return x, bad


def drop_bad(c: dict[str, Any], split: Path, files: list[str], labels: list[int],
             x: torch.Tensor, bad: dict[int, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` without the undecodable files: a DataError naming the first one unless
    ``dataset.skip_bad_images``, else a warning naming them."""
    y = torch.as_tensor(labels, dtype=torch.int64)
    if not bad:
        return x, y
    order = sorted(bad)
    first = f"{split / files[order[0]]}: {bad[order[0]]}"
    if not c["skip_bad_images"]:
        more = f" (and {len(bad) - 1} more under {split})" if len(bad) > 1 else ""
        raise DataError(f"cannot decode image {first}{more}; fix or remove it, or set "
                        "dataset.skip_bad_images=true to skip unreadable images")
    shown = "; ".join(f"{files[i]}: {bad[i]}" for i in order[:5])
    warnings.warn(f"skipping {len(bad)} unreadable image(s) of {split} "
                  f"(dataset.skip_bad_images=true): {shown}" + (" ..." if len(bad) > 5 else ""),
                  stacklevel=3)
    keep = torch.ones(len(files), dtype=torch.bool)
    keep[order] = False
    return x[keep], y[keep]


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


def _first_image_size(c: dict[str, Any], split: Path, files: list[str]) -> tuple[int, int]:
    """H, W of the first train image (the first readable one with ``skip_bad_images``)."""
    reason = ""
    for f in files[:100] if c["skip_bad_images"] else files[:1]:
        img, why = try_read_image(split / f)
        if img is not None:
            return int(img.shape[-2]), int(img.shape[-1])
        reason = reason or why
    raise DataError(f"cannot decode image {split / files[0]}: {reason}; fix or remove it, or set "
                    + ("dataset.image_size" if c["skip_bad_images"] else
                       "dataset.skip_bad_images=true to skip unreadable images"))


def check_imagefolder(c: dict[str, Any]) -> None:
    """``dataset.root`` is required and holds ``train/`` and the val split (see :data:`LAYOUT`)."""
    if c["root"] in (None, "", "???"):
        raise ConfigError(f"dataset.root is not set; point it at an ImageFolder tree: {LAYOUT}")
    split_dirs(resolve_root(c["root"]), c["val_split"])


@register_source("imagefolder", check=check_imagefolder)
def imagefolder_bundle(c: dict[str, Any], *, batch_size: int, eval_batch_size: int,
                       device: torch.device, seed: int) -> DataBundle:
    """Any ImageFolder tree: decoded once into memory (cached), or streamed from the files."""
    from kdsweep.data.loaders import StreamingLoader

    root = resolve_root(c["root"])
    train_dir, val_dir = split_dirs(root, c["val_split"])
    tfiles, tlabels, classes = list_images(train_dir)
    vfiles, vlabels, _ = list_images(val_dir, classes)
    check_num_classes(c, len(classes), str(train_dir))
    size = c["image_size"]
    if c["in_memory"]:
        if size is None:
            h, w = _first_image_size(c, train_dir, tfiles)
            if h != w:
                raise ConfigError(f"dataset.image_size is null and {train_dir / tfiles[0]} is "
                                  f"{h}x{w}; set dataset.image_size for in-memory loading")
            size = h
        tx, ty = drop_bad(c, train_dir, tfiles, tlabels,
                          *load_split_in_memory(c, train_dir, tfiles, int(size)))
        vx, vy = drop_bad(c, val_dir, vfiles, vlabels,
                          *load_split_in_memory(c, val_dir, vfiles, int(size)))
        splits = TensorSplits(tx, ty, vx, vy, classes)
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
