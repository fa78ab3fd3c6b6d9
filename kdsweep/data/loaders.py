"""Batch loaders yielding ``(images float32 NCHW normalised, labels int64, indices int64)`` on a device.

* :class:`TensorLoader` keeps a whole split as one uint8 NCHW tensor on the target device and does
  shuffling, augmentation (random crop with zero padding + horizontal flip, or random-resized crop +
  flip) and normalisation with batched tensor ops there: no per-sample Python, no host->device copy
  per batch.
* :class:`StreamingLoader` wraps a ``torch.utils.data.DataLoader`` over image files with
  ``torchvision.transforms.v2`` for sets too large to hold in memory (e.g. ImageNet at 224 px).

Both are reproducible per ``(seed, epoch)``: every random number of epoch ``e`` comes from a CPU
``torch.Generator`` seeded with :func:`derive_seed` ``(seed, e)``, so a run resumed at epoch ``e``
sees the same batches, on any device and (streaming) with any number of workers. Call
``set_epoch(e)`` before iterating; without it the epoch advances by one after each complete pass.
Train loaders shuffle and drop the last batch only when it would hold a single sample (BatchNorm);
val loaders keep the order and do not augment.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from kdsweep.data.views import STRONG_TAG, VIEWS, draw_strong, strong_augment
from kdsweep.errors import DataError

AUGMENTS = ("crop_flip", "resized_crop_flip", "none")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers with numpy's SeedSequence (well spread, order-sensitive)."""
    state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1)


def num_batches(n: int, batch_size: int, train: bool, world: int = 1) -> int:
    """Batches per epoch: all of them, except a trailing train batch that would give a process
    a single sample (BatchNorm needs two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * world or (rest > 0 and not train) else 0)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Run per-batch CPU work on one intra-op thread (restored before the batch is yielded).

    The ops are small (about 1 ms per batch of 128 on one core); with several threads on a busy
    machine every op waits for a descheduled peer thread, which measured 10-80x slower.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Normalizer:
    """uint8 (or float in [0, 255]) NCHW -> float32 ``(x / 255 - mean) / std`` as one fused affine."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.bias = 1.0 / (255.0 * s), -m / s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).add_(self.bias)


class _EpochMixin:
    epoch: int = 0
    train: bool
    rank: int = 0  # data-parallel runs: this process takes part ``rank`` of ``world`` of each batch
    world: int = 1

    def shard(self, rank: int, world: int) -> None:
        """Yield only this process's contiguous part of every (global) batch; the batches
        themselves, their order and augmentation stay those of a single-process run."""
        self.rank, self.world = int(rank), int(world)

    def _mine(self, lo: int, hi: int) -> tuple[int, int]:
        if self.world == 1:
            return lo, hi
        return lo + (hi - lo) * self.rank // self.world, lo + (hi - lo) * (self.rank + 1) // self.world

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffling and augmentation the next iteration reproduces."""
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))

    # -- extra views (kdsweep.data.views): made on request from the batch last served ----------
    _served: tuple[int, slice, torch.Tensor] | None = None  # (epoch, positions, uint8 source)
    _view_params: tuple[int, dict[str, torch.Tensor]] | None = None

    def _view_draws(self, epoch: int, n: int) -> dict[str, torch.Tensor]:
        """The epoch's draws of the strong view, from their own generator (seed, epoch, tag)."""
        if self._view_params is None or self._view_params[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, STRONG_TAG))
            self._view_params = epoch, self._draw_view(g, n)
        return self._view_params[1]

    def _draw_view(self, g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        return draw_strong(g, n)

    def view(self, name: str) -> torch.Tensor:
        """The view ``name`` of the batch this loader yielded last, normalised like it."""
        if name not in VIEWS:
            raise ValueError(f"unknown view {name!r}; valid: {', '.join(VIEWS)}")
        if self._served is None:
            raise RuntimeError("view() needs a batch served first")
        epoch, sl, source = self._served
        with _one_cpu_thread(self.device):
            return self.normalize(self._make_view(epoch, sl, source))


class TensorLoader(_EpochMixin):
    """Whole-split in-memory loader; see the module docstring.

    ``images``: uint8 N,C,H,W; ``labels``: int64 N. ``image_size`` is the output size ``S``
    (defaults to H): ``crop_flip`` takes an S x S window from the image zero-padded by ``padding``
    (``RandomCrop(S, padding)`` + ``RandomHorizontalFlip``), ``resized_crop_flip`` samples an area
    fraction in ``scale`` and aspect ratio in ``ratio`` like ``RandomResizedCrop`` (bilinear, no
    antialiasing) then flips, ``none`` needs ``S == H == W``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, train: bool,
                 mean: Sequence[float], std: Sequence[float], augment: str = "none",
                 image_size: int | None = None, seed: int = 0,
                 device: torch.device | str = "cpu", padding: int = 4,
                 scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r}; expected one of {AUGMENTS}")
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 N,C,H,W with one label per image")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.augment = augment if train else "none"
        h, w = images.shape[-2:]
        self.image_size = int(image_size or h)
        if self.augment == "none" and (h, w) != (self.image_size,) * 2:
            raise ValueError(f"images are {h}x{w}; without augmentation they must be "
                             f"{self.image_size}x{self.image_size}")
        if self.augment == "crop_flip" and self.image_size > min(h, w) + 2 * padding:
            raise ValueError(f"crop {self.image_size} does not fit {h}x{w} images padded by {padding}")
        self.padding, self.scale, self.ratio = int(padding), scale, ratio
        self.normalize = _Normalizer(mean, std, self.device)

    def __len__(self) -> int:
        return num_batches(len(self.labels), self.batch_size, self.train, self.world)

    def _draw(self, g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        """All augmentation parameters of one epoch, position j for the j-th sample served."""
        if self.augment == "crop_flip":
            h, w = self.images.shape[-2:]
            p, s = self.padding, self.image_size
            params = {"oy": torch.randint(0, h + 2 * p - s + 1, (n,), generator=g),
                      "ox": torch.randint(0, w + 2 * p - s + 1, (n,), generator=g)}
        elif self.augment == "resized_crop_flip":
            area = torch.empty(n).uniform_(*self.scale, generator=g)
            logr = torch.empty(n).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                           generator=g)
            params = {"area": area, "logr": logr, "u": torch.rand(n, 2, generator=g)}
        else:
            return {}
        params["flip"] = torch.rand(n, generator=g) < 0.5
        return {k: v.to(self.device) for k, v in params.items()}

    def _crop_flip(self, x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor,
                   flip: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p, s = self.padding, self.image_size
        xp = F.pad(x, (p, p, p, p)) if p else x
        ar = torch.arange(s, device=x.device)
        rows = oy[:, None] + ar  # B, S
        cols = ox[:, None] + ar
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        lin = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, s * s)
        return xp.reshape(b, c, -1).gather(2, lin.expand(b, c, s * s)).view(b, c, s, s)

    def _resized_crop_flip(self, x: torch.Tensor, area: torch.Tensor, logr: torch.Tensor,
                           u: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        r = torch.exp(logr)
        cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
        ch = torch.sqrt(area / r).clamp(max=1.0)
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0] = torch.where(flip, -cw, cw)
        theta[:, 1, 1] = ch
        theta[:, 0, 2] = (2 * u[:, 0] - 1) * (1 - cw)
        theta[:, 1, 2] = (2 * u[:, 1] - 1) * (1 - ch)
        size = (len(x), x.shape[1], self.image_size, self.image_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def _draw_view(self, g: torch.Generator, n: int) -> dict[str, torch.Tensor]:
        crop = self._draw(g, n)  # an independent crop and flip, then RandAugment and Cutout
        return {**{f"crop_{k}": v for k, v in crop.items()}, **draw_strong(g, n)}

    def _augment(self, x: torch.Tensor, p: dict[str, torch.Tensor], sl: slice) -> torch.Tensor:
        if self.augment == "crop_flip":
            return self._crop_flip(x, p["oy"][sl], p["ox"][sl], p["flip"][sl])
        if self.augment == "resized_crop_flip":
            return self._resized_crop_flip(x, p["area"][sl], p["logr"][sl], p["u"][sl],
                                           p["flip"][sl])
        return x

    def _make_view(self, epoch: int, sl: slice, source: torch.Tensor) -> torch.Tensor:
        draws = self._view_draws(epoch, len(self.labels))
        crop = {k[5:]: v for k, v in draws.items() if k.startswith("crop_")}
        return strong_augment(self._augment(source, crop, sl),
                              {k: draws[k][sl] for k in ("ops", "mags", "cut")})

    def __iter__(self) -> Iterator[Batch]:
        n, bs = len(self.labels), self.batch_size
        params: dict[str, torch.Tensor] = {}
        epoch = self.epoch
        if self.train:
            g = self._generator()
            order = torch.randperm(n, generator=g).to(self.device)
            params = self._draw(g, n)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(len(self)):
            sl = slice(*self._mine(i * bs, min((i + 1) * bs, n)))
            with _one_cpu_thread(self.device):
                idx = order[sl]
                source = self.images.index_select(0, idx)
                if self.train:
                    self._served = epoch, sl, source
                x = self._augment(source, params, sl)
                batch = self.normalize(x), self.labels.index_select(0, idx), idx
            yield batch
        if self.train:
            self.epoch += 1


class _EpochBatchSampler(torch.utils.data.Sampler):
    """Yields batches of ``(index, per-sample seed)`` keys; the seeds make worker-side random
    transforms depend only on (seed, epoch, position), whatever the worker count."""

    def __init__(self, n: int, batch_size: int, train: bool, owner: StreamingLoader):
        self.n, self.batch_size, self.train, self.owner = n, batch_size, train, owner

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.train, self.owner.world)

    def __iter__(self):
        if self.train:
            g = self.owner._generator()
            order = torch.randperm(self.n, generator=g).tolist()
            seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        else:
            order, seeds = list(range(self.n)), [0] * self.n
        for i in range(len(self)):
            sl = slice(*self.owner._mine(i * self.batch_size, min((i + 1) * self.batch_size, self.n)))
            yield list(zip(order[sl], seeds[sl], strict=True))


def _one_line_errors(loader) -> Iterator:
    """Iterate ``loader``; a DataError raised in a worker process (which DataLoader re-raises with
    the worker's traceback in its message) comes out as the original one-line DataError."""
    try:
        yield from loader
    except DataError as exc:
        lines = str(exc).strip().splitlines()
        if len(lines) <= 1:
            raise
        tag = f"{DataError.__module__}.{DataError.__name__}: "
        msg = next((ln[len(tag):] for ln in reversed(lines) if ln.startswith(tag)), lines[-1])
        raise DataError(msg) from None


class StreamingLoader(_EpochMixin):
    """Reads files with worker processes; the dataset maps ``(index, seed)`` to ``(uint8 CHW, label,
    index)`` (see :class:`kdsweep.data.imagefolder.FileDataset`); normalisation runs on ``device``."""

    def __init__(self, dataset, labels: torch.Tensor, *, batch_size: int, train: bool,
                 mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 device: torch.device | str = "cpu", num_workers: int = 0):
        self.device = torch.device(device)
        self.dataset, self.labels = dataset, labels
        self.batch_size, self.train, self.seed = int(batch_size), bool(train), int(seed)
        self.normalize = _Normalizer(mean, std, self.device)
        sampler = _EpochBatchSampler(len(labels), self.batch_size, self.train, self)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None)

    def __len__(self) -> int:
        return len(self.loader)

    def _make_view(self, epoch: int, sl: slice, source: torch.Tensor) -> torch.Tensor:
        """RandAugment and Cutout on the batch's own crop (the workers cropped it)."""
        draws = self._view_draws(epoch, len(self.labels))
        return strong_augment(source, {k: v[sl] for k, v in draws.items()})

    def __iter__(self) -> Iterator[Batch]:
        nb = self.device.type == "cuda"
        epoch, bs, n = self.epoch, self.batch_size, len(self.labels)
        for i, (x, y, idx) in enumerate(_one_line_errors(self.loader)):
            with _one_cpu_thread(self.device):
                x = x.to(self.device, non_blocking=nb)
                if self.train:
                    self._served = epoch, slice(*self._mine(i * bs, min((i + 1) * bs, n))), x
                batch = (self.normalize(x), y.to(self.device, non_blocking=nb),
                         idx.to(self.device, non_blocking=nb))
            yield batch
        if self.train:
            self.epoch += 1
