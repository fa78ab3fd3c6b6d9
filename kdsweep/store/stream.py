"""A cohort's use of the teacher-output store: per batch, the stored output or a miss to compute
and write (see :mod:`kdsweep.store` for the key, the layout and the guarantees)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdsweep.errors import ConfigError
from kdsweep.methods import teacher_reads_of
from kdsweep.models import ModelOutput
from kdsweep.store import CHUNK_BYTES, Entry, digest_of, evict, model_digest, tensor_digest

log = logging.getLogger(__name__)

#: ``teacher.store=auto`` stays off when one epoch of dense logits would exceed this (ImageNet:
#: 2.5 GB an epoch); ``teacher.store_topk`` or an explicit path turns it on.
AUTO_MAX_EPOCH_BYTES = 1 << 30


def data_digest(loader: Any) -> str:
    """A hash of the training split's content: the in-memory images and labels, or the file
    list with each file's size and mtime (streaming sets). Memoised on the loader."""
    cached = getattr(loader, "_store_digest", None)
    if cached:
        return cached
    images = getattr(loader, "images", None)
    if isinstance(images, Tensor):
        digest = tensor_digest(iter([("images", images), ("labels", loader.labels)]))
    else:
        ds = loader.dataset
        h = hashlib.sha256(str(getattr(ds, "base", "")).encode())
        for f in getattr(ds, "files", []):
            path = os.path.join(str(getattr(ds, "base", "")), str(f))
            try:
                st = os.stat(path)
                h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{f}|missing\n".encode())
        h.update(tensor_digest(iter([("labels", torch.as_tensor(loader.labels))])).encode())
        h.update(repr(getattr(ds, "transform", None)).encode())
        digest = h.hexdigest()
    loader._store_digest = digest
    return digest


def key_parts(*, teacher: torch.nn.Module, teacher_arch: str | None, data: Any,
              precision: str, device: torch.device, channels_last: bool, compile: bool,
              stores: str, topk: int | None) -> dict[str, Any]:
    """Everything a stored output depends on (the module docstring of :mod:`kdsweep.store`)."""
    tr = data.train
    norm = getattr(tr, "normalize", None)
    return {
        "teacher": {"arch": teacher_arch, "weights": model_digest(teacher)},
        "data": {"name": getattr(data, "name", None), "split": "train",
                 "content": data_digest(tr), "num_classes": getattr(data, "num_classes", None)},
        "transforms": {"augment": getattr(tr, "augment", None),
                       "padding": getattr(tr, "padding", None),
                       "image_size": getattr(tr, "image_size", None),
                       "scale": list(getattr(tr, "scale", ()) or ()),
                       "ratio": list(getattr(tr, "ratio", ()) or ()),
                       "normalize": tensor_digest(iter([("s", norm.scale), ("b", norm.bias)]))
                       if norm is not None else None},
        "seed": int(tr.seed), "batch_size": int(tr.batch_size),
        "shard": [int(getattr(tr, "rank", 0)), int(getattr(tr, "world", 1))],
        "precision": precision, "device_type": device.type, "channels_last": bool(channels_last),
        "compile": bool(compile), "teacher_bn": "eval", "torch": torch.__version__,
        "stores": stores, "form": f"top{topk}" if topk else "dense",
    }


def sparse(logits: Tensor, k: int) -> dict[str, Tensor]:
    """The top-k form of a batch of logits: the k largest values, their classes and the
    log-sum-exp of the row (float32)."""
    z = logits.float()
    values, index = z.topk(k, dim=1)
    return {"topk_values": values.to(logits.dtype), "topk_index": index.to(torch.int32),
            "lse": torch.logsumexp(z, dim=1)}


def dense(values: Tensor, index: Tensor, lse: Tensor, num_classes: int) -> Tensor:
    """Logits back from the top-k form: the k stored values in place, every other class at the
    value that gives it an equal share of the rest of the probability mass, so softmax at T=1
    is exact for the k classes and for their total; not exact at other temperatures."""
    v = values.float()
    k = v.shape[1]
    rest = torch.clamp(1.0 - torch.exp(v - lse[:, None]).sum(1), min=1e-12)
    fill = lse + torch.log(rest / max(1, num_classes - k))
    out = fill[:, None].expand(v.shape[0], num_classes).clone()
    out.scatter_(1, index.long(), v)
    return out.to(values.dtype)


class StoredTeacher:
    """One cohort's reads and writes of one entry, batch by batch."""

    def __init__(self, entry: Entry, *, pooled: bool, topk: int | None, num_classes: int,
                 batch_size: int, max_bytes: int, device: torch.device):
        self.entry, self.pooled, self.topk, self.num_classes = entry, pooled, topk, num_classes
        self.max_bytes, self.device = max_bytes, device
        per_batch = batch_size * (2 * topk if topk else num_classes) * 4
        self.chunk = entry.chunk = max(1, CHUNK_BYTES // max(1, per_batch))
        self.read_batches = self.computed_batches = 0
        self.wrote = False  # a shard written since the last size check
        self.epoch = -1
        self.index: dict[int, tuple[int, Path]] = {}
        self.loaded: tuple[int, dict[str, Any]] | None = None
        self.pending: dict[int, list[tuple[Tensor, Tensor | None]]] = {}

    def begin_epoch(self, epoch: int) -> None:
        self.epoch, self.index, self.loaded, self.pending = epoch, self.entry.shards(epoch), None, {}
        self.entry.touch()

    def get(self, i: int) -> ModelOutput | None:
        """Batch ``i``'s stored output on the device, or None (a miss: compute it, then
        :meth:`put`)."""
        c, j = divmod(i, self.chunk)
        held = self.index.get(c)
        if held is None or held[0] <= j:
            return None
        if self.loaded is None or self.loaded[0] != c:
            payload = self.entry.read(held[1])
            if payload is None or (self.pooled and payload.get("pooled") is None):
                self.index.pop(c, None)
                return None
            offsets = [0, *torch.cumsum(payload["sizes"], 0).tolist()]
            self.loaded = c, {**payload, "offsets": offsets}
        p = self.loaded[1]
        lo, hi = p["offsets"][j], p["offsets"][j + 1]
        if self.topk:
            logits = dense(p["topk_values"][lo:hi], p["topk_index"][lo:hi], p["lse"][lo:hi],
                           self.num_classes)
        else:
            logits = p["logits"][lo:hi]
        nb = self.device.type == "cuda"
        pooled = p["pooled"][lo:hi] if self.pooled else None
        if held[0] < self.chunk and not self.topk:  # a partial shard: a fuller one may follow
            self.pending.setdefault(c, []).append((logits, pooled))
        pooled = pooled.to(self.device, non_blocking=nb) if pooled is not None else None
        self.read_batches += 1
        return ModelOutput(logits=logits.to(self.device, non_blocking=nb), pooled=pooled)

    def put(self, i: int, out: ModelOutput) -> ModelOutput:
        """Keep a computed batch for its chunk's shard (a chunk is written when it is whole);
        returns what the trial uses: ``out``, or in the top-k form its reconstruction, so a trial
        that computes sees the same targets as one that reads."""
        self.computed_batches += 1
        self._keep(i, out)  # the computed logits: written in the top-k form as readers read it
        if self.topk:
            s = sparse(out.logits.detach(), self.topk)
            out = ModelOutput(logits=dense(s["topk_values"], s["topk_index"], s["lse"],
                                           self.num_classes), pooled=out.pooled)
        return out

    def _keep(self, i: int, out: ModelOutput) -> None:
        c, j = divmod(i, self.chunk)
        if not self.entry.writable or (c in self.index and self.index[c][0] > j):
            return
        rows = self.pending.setdefault(c, [])
        if len(rows) != j:  # batches of a chunk arrive in order from its first; else skip it
            self.pending.pop(c)
            return
        pooled = out.pooled.detach().cpu() if self.pooled and out.pooled is not None else None
        rows.append((out.logits.detach().cpu(), pooled))
        if len(rows) == self.chunk:
            self._write(c)

    def end_epoch(self) -> None:
        """Write the partial chunks this epoch computed (a short epoch), then keep the store
        under its size limit."""
        for c in list(self.pending):
            held = self.index.get(c, (0, None))[0]
            if len(self.pending[c]) > held:
                self._write(c)
        self.pending = {}
        if self.wrote:  # the store grew: keep it under its limit (a walk of its files)
            evict(self.entry.root, self.max_bytes, keep=self.entry.digest)
            self.wrote = False

    def _write(self, c: int) -> None:
        rows = self.pending.pop(c)
        logits = torch.cat([r[0] for r in rows])
        payload: dict[str, Any] = {"batches": len(rows),
                                   "sizes": torch.tensor([len(r[0]) for r in rows])}
        if self.topk:
            payload.update(sparse(logits, self.topk))
        else:
            payload["logits"] = logits
        if self.pooled:
            payload["pooled"] = torch.cat([r[1] for r in rows])
        if self.entry.write(self.epoch, c, payload):
            self.index[c] = (len(rows), self.entry.path)
            self.wrote = True

    def teacher_accuracy(self, val: Any, limit: int | None, compute: Any) -> float:
        """The teacher's validation accuracy, stored in the entry beside its outputs (its key is
        the entry's plus the validation split's content, batch size and ``limit``): evaluated
        once per entry, not once per trial."""
        name = "val-" + digest_of({"content": data_digest(val), "batch_size": int(val.batch_size),
                                   "limit": limit}) + ".json"
        path = self.entry.path / name
        try:
            return float(json.loads(path.read_text())["val_acc"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        acc = float(compute())
        if self.entry.writable:
            try:
                self.entry._atomic_bytes(path, json.dumps({"val_acc": acc}).encode())
            except OSError as e:
                self.entry._stop_writing(e)
        return acc

    def summary(self) -> str:
        return (f"teacher store: {self.read_batches} batches read, {self.computed_batches} "
                f"computed by the teacher (entry {self.entry.digest} in {self.entry.root})")


def open_teacher_store(setting: str, *, members: Sequence[Any], teacher: torch.nn.Module,
               teacher_arch: str | None, data: Any, precision: str, device: torch.device,
               channels_last: bool, compile: bool, max_gb: float, topk: int | None,
               root_default: Path) -> StoredTeacher | None:
    """The cohort's store, or None with the reason said once: ``teacher.store`` off, a member
    that reads the teacher's feature maps or another view, the teacher's BatchNorm in training
    mode, or (``auto``) dense logits too big for an epoch."""
    if setting == "off":
        return None
    reads = {teacher_reads_of(m.method) for m in members}
    views = sorted({v for m in members for v in getattr(m.method, "views", ())})
    bn = {getattr(m.method, "teacher_mode", "eval") for m in members}
    why = ("a method reads the teacher's feature maps" if "features" in reads else
           f"a method reads the teacher on the {views[0]} view" if views else
           "the teacher's BatchNorm runs in training mode" if "train" in bn else None)
    if why:
        log.info("teacher store: not used (%s): the teacher runs live", why)
        return None
    num_classes = int(data.num_classes)
    if topk is not None and not 1 <= topk < num_classes:
        raise ConfigError(f"teacher.store_topk={topk} must be in [1, {num_classes - 1}] "
                          f"({num_classes} classes); or null for dense logits")
    epoch_bytes = int(getattr(data, "num_train", 0)) * num_classes * 4
    if setting == "auto" and topk is None and epoch_bytes > AUTO_MAX_EPOCH_BYTES:
        log.info("teacher store: auto leaves it off: dense logits are %.1f GB an epoch here; set "
                 "teacher.store_topk=10 (not exact) or teacher.store=PATH", epoch_bytes / 1e9)
        return None
    root = root_default if setting == "auto" else Path(setting).expanduser()
    stores = "logits+pooled" if "pooled" in reads else "logits"
    parts = key_parts(teacher=teacher, teacher_arch=teacher_arch, data=data, precision=precision,
                      device=device, channels_last=channels_last, compile=compile, stores=stores,
                      topk=topk)
    entry = Entry(root, digest_of(parts), parts, chunk=0)
    st = StoredTeacher(entry, pooled="pooled" in reads, topk=topk, num_classes=num_classes,
                       batch_size=int(data.train.batch_size), max_bytes=int(max_gb * 1e9),
                       device=device)
    entry.open()
    return st


__all__ = ["StoredTeacher", "dense", "key_parts", "open_teacher_store", "sparse"]
