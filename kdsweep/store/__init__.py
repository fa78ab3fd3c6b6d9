"""The teacher-output store: the teacher's outputs on a replayed batch stream, computed once and
read by every later trial with the same key, bit for bit.

kdsweep's batch stream is a function of (data, transforms, seed, epoch, batch size): epoch ``e``'s
batch ``i`` is the same images with the same crops and flips in every run that shares those. So
the teacher's output on it is a fact that can be stored; a trial that reads it is the trial that
would have run the teacher, and the teacher's forward pass (most of a KD step for the pairs
people distil) is paid once per key instead of once per trial. The crops stay the student's own:
"patient and consistent" distillation (Beyer et al., CVPR 2022) keeps working.

**Key** (:func:`key_parts`): everything a stored output depends on: the teacher's weights (a
hash of its state), the data (a hash of the split's images and labels, or of its file list),
the split, the transforms, the data seed, the batch size and this process's part of it
(``torchrun``), the precision, device type, memory format, compilation, the teacher's BatchNorm
mode, torch's version, what is stored (logits, pooled embedding) and its form (dense or top-k).
Any difference is another entry: a miss, never a wrong hit. The epoch and the batch index name
the shard, so ``schedule.epochs`` is not part of the key: a 200-epoch trial reads the first 200
epochs of a 240-epoch trial's entry (both are those epochs' outputs).

**Layout** (:class:`Entry`)::

    ROOT/<key digest>/key.json               the key's parts, readable
    ROOT/<key digest>/e0003-c0001-n0064.pt   epoch 3, chunk 1 (batches K..2K-1), 64 batches held
    ROOT/<key digest>/used                   touched at each use (least-recently-used eviction)

A chunk holds up to ``K`` consecutive batches (``K`` from the logits' size: about 64 MiB a
chunk); one that ends an epoch early (``train.limit_train_batches``) holds fewer, and a later
writer with more batches writes a fuller version beside it (readers take the fullest). Each shard
is ``torch.save``'d to a temporary name in the same directory, flushed to disk and renamed
(atomic on POSIX file systems, NFS included), so a reader or a ``kill -9`` never sees half a
shard; each carries a SHA-256 of its tensors, checked at every read (a corrupt shard is said,
removed and computed again). Writers that race write the same bytes; the last rename wins.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdsweep import liveness

log = logging.getLogger(__name__)

STORE_VERSION = 1
CHUNK_BYTES = 64 << 20          # a shard holds about this much of logits
SHARD = re.compile(r"^e(\d{4,})-c(\d{4,})-n(\d{4,})\.pt$")
TMP_PREFIX = ".tmp-"
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# ------------------------------------------------------------------------------------ key
def tensor_digest(tensors: Iterator[tuple[str, Tensor]]) -> str:
    """SHA-256 over named tensors: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """A hash of the model's weights and buffers (its state dict)."""
    return tensor_digest(iter(model.state_dict().items()))


def digest_of(parts: Mapping[str, Any]) -> str:
    """The entry name of a key: 24 hex digits of the SHA-256 of its canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def checksum(payload: Mapping[str, Any]) -> str:
    return tensor_digest((k, v) for k, v in sorted(payload.items()) if isinstance(v, Tensor))


# ---------------------------------------------------------------------------------- entry
@dataclass
class Entry:
    """One key's directory: its shards, read and written atomically."""

    root: Path
    digest: str
    parts: dict[str, Any]
    chunk: int                                   # batches per full chunk
    writable: bool = True

    @property
    def path(self) -> Path:
        return self.root / self.digest

    def open(self) -> None:
        """Create the directory and its ``key.json`` (first writer; the same bytes for all)."""
        try:
            self._make_dir()
        except OSError as e:
            self._stop_writing(e)
        self.touch()

    def _make_dir(self) -> None:
        """The directory and its ``key.json``, made again when an eviction elsewhere removed them
        while this run goes on writing (else its shards would lie in a directory that
        :func:`entries`, :func:`evict` and the command line cannot see)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "key.json").exists():
            self._atomic_bytes(self.path / "key.json", json.dumps(
                {"version": STORE_VERSION, **self.parts}, sort_keys=True, indent=1,
                default=str).encode())

    def touch(self) -> None:
        """Mark the entry used now (least-recently-used eviction reads it)."""
        with contextlib.suppress(OSError):
            (self.path / "used").touch()

    # -- reading --------------------------------------------------------------------------
    def shards(self, epoch: int) -> dict[int, tuple[int, Path]]:
        """chunk -> (batches held, file) of the fullest shard of each chunk of ``epoch``."""
        out: dict[int, tuple[int, Path]] = {}
        try:
            names = os.listdir(self.path)
        except OSError:
            return out
        for name in names:
            m = SHARD.match(name)
            if m and int(m.group(1)) == epoch:
                c, n = int(m.group(2)), int(m.group(3))
                if c not in out or n > out[c][0]:
                    out[c] = (n, self.path / name)
        return out

    def read(self, path: Path) -> dict[str, Any] | None:
        """A shard's payload, or None (and the shard removed) when it is unreadable or corrupt."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            ok = isinstance(payload, dict) and payload.get("sha256") == checksum(payload)
        except FileNotFoundError:
            return None  # evicted or replaced meanwhile: a miss
        except Exception:  # noqa: BLE001  (any unreadable file is a corrupt shard)
            ok = False
        if not ok:
            log.warning("teacher store: shard %s is corrupt (checksum or format); it is removed "
                        "and its batches are computed again", path)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return payload

    # -- writing --------------------------------------------------------------------------
    def write(self, epoch: int, chunk: int, payload: dict[str, Any]) -> bool:
        """Write one shard atomically; False (said once, training goes on) when the disk is full
        or the store is not writable."""
        if not self.writable:
            return False
        n = int(payload["batches"])
        name = f"e{epoch:04d}-c{chunk:04d}-n{n:04d}.pt"
        payload = {**payload, "sha256": checksum(payload)}
        # Serialised in memory first: torch.save's writer turns a failed write (ENOSPC, EFBIG)
        # into a RuntimeError without its errno; the plain write below raises the OSError.
        buf = io.BytesIO()
        torch.save(payload, buf)
        try:
            self._make_dir()
            tmp = self.path / _tmp_name()
            try:
                with open(tmp, "wb") as f:
                    f.write(buf.getbuffer())
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path / name)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        except OSError as e:
            self._stop_writing(e)
            return False
        with contextlib.suppress(OSError):  # a fuller shard replaces the partial ones
            for other in os.listdir(self.path):
                m = SHARD.match(other)
                if m and (int(m.group(1)), int(m.group(2))) == (epoch, chunk) and int(m.group(3)) < n:
                    with contextlib.suppress(OSError):
                        (self.path / other).unlink()
        return True

    def _stop_writing(self, e: OSError) -> None:
        self.writable = False
        full = e.errno in FULL_ERRNOS
        log.warning("teacher store: %s at %s (%s); this run writes no more shards and goes on with "
                    "its live teacher, nothing is lost%s", "no space left" if full else
                    "cannot write", self.path, e.strerror or e,
                    "; free space, lower teacher.store_max_gb or set teacher.store=off"
                    if full else "")

    @staticmethod
    def _atomic_bytes(path: Path, data: bytes) -> None:
        tmp = path.with_name(_tmp_name())
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _tmp_name() -> str:
    """``.tmp-HOST_PID_START-XXXXXXXX``: the writer's liveness tag, read back by
    :func:`stale_tmp`."""
    return f"{TMP_PREFIX}{liveness.owner_tag().replace(':', '_')}-{uuid.uuid4().hex[:8]}"


# -------------------------------------------------------------------------- store-wide
@dataclass
class EntryInfo:
    digest: str
    path: Path
    bytes: int
    shards: int
    used: float                    # seconds since the epoch of the last use
    parts: dict[str, Any]


def entries(root: Path) -> list[EntryInfo]:
    """Every entry under ``root``, least recently used first."""
    out = []
    try:
        dirs = [d for d in root.iterdir() if d.is_dir() and (d / "key.json").exists()]
    except OSError:
        return []
    for d in dirs:
        size, count = 0, 0
        with contextlib.suppress(OSError):
            for f in d.iterdir():
                size += f.stat().st_size
                count += bool(SHARD.match(f.name))
        try:
            parts = json.loads((d / "key.json").read_text())
        except (OSError, ValueError):
            parts = {}
        try:
            used = (d / "used").stat().st_mtime
        except OSError:
            used = (d / "key.json").stat().st_mtime if (d / "key.json").exists() else 0.0
        out.append(EntryInfo(d.name, d, size, count, used, parts))
    return sorted(out, key=lambda e: e.used)


def evict(root: Path, max_bytes: int, keep: str | None = None) -> list[str]:
    """Remove least-recently-used entries (never ``keep``) until the store holds at most
    ``max_bytes``; returns the removed digests."""
    found = entries(root)
    total = sum(e.bytes for e in found)
    removed = []
    for e in found:
        if total <= max_bytes:
            break
        if e.digest == keep:
            continue
        remove_entry(e.path)
        total -= e.bytes
        removed.append(e.digest)
    if removed:
        log.info("teacher store: removed %d least recently used entries to stay under %.1f GB",
                 len(removed), max_bytes / 1e9)
    return removed


def remove_entry(path: Path) -> None:
    """Remove an entry: its key first (readers stop finding it), then its files."""
    with contextlib.suppress(OSError):
        (path / "key.json").unlink()
    for f in list(path.iterdir()) if path.exists() else []:
        with contextlib.suppress(OSError):
            f.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def stale_tmp(root: Path, older_than_s: float = 3600.0) -> list[Path]:
    """Temporary files left by killed writers: their process is gone, or they are old."""
    out = []
    now = time.time()
    for d in (root.iterdir() if root.exists() else []):
        if not d.is_dir():
            continue
        for f in d.glob(f"{TMP_PREFIX}*"):
            # HOST_PID_START: split from the right, a host name may hold "_" (or "-")
            tag = ":".join(f.name[len(TMP_PREFIX):].rsplit("-", 1)[0].rsplit("_", 2))
            owner = liveness.parse_tag(tag)
            dead = owner is not None and liveness.alive(owner) is False
            with contextlib.suppress(OSError):
                if dead or now - f.stat().st_mtime > older_than_s:
                    out.append(f)
    return out


def default_root() -> Path:
    """``$KDSWEEP_TEACHER_STORE``, else ``<kdsweep cache dir>/teacher-outputs``."""
    if os.environ.get("KDSWEEP_TEACHER_STORE"):
        return Path(os.path.expandvars(os.environ["KDSWEEP_TEACHER_STORE"])).expanduser()
    from kdsweep.data.cache import default_cache_dir

    return default_cache_dir() / "teacher-outputs"


__all__ = ["Entry", "EntryInfo", "checksum", "default_root", "digest_of", "entries", "evict",
           "model_digest", "remove_entry", "stale_tmp", "tensor_digest"]
