"""The decoded-image cache of in-memory ImageFolder splits: keyed by the file list, atomic, safe.

A split's images are decoded once into a uint8 tensor and kept in ``<cache dir>/<name>-<split>-
<S>px-<where>-<content>.pt``; the next run loads it in seconds. The name hashes every file's path,
size and mtime, so a changed tree is decoded again; files are written to a temp file and renamed
(a killed process never leaves half a cache) and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import socket
import warnings
from pathlib import Path

import torch

from kdsweep import liveness
from kdsweep.errors import DataError

CACHE_VERSION = 2  # 2: a dict with the images and the undecodable files (1: the bare tensor)
_HOST = socket.gethostname()


def reason(exc: BaseException) -> str:
    """One line of an exception (for warnings)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def default_cache_dir() -> Path:
    """``$KDSWEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/kdsweep``, else ``~/.cache/kdsweep``."""
    if os.environ.get("KDSWEEP_CACHE_DIR"):
        return Path(os.path.expandvars(os.environ["KDSWEEP_CACHE_DIR"])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "kdsweep"


def cache_dir(configured: str | None) -> Path:
    """``dataset.cache_dir`` when set, else :func:`default_cache_dir`."""
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    return default_cache_dir()


def cache_file(cdir: Path, name: str, split: Path, files: list[str], size: int) -> Path:
    """``<cdir>/<name>-<split>-<S>px-<where>-<content>.pt``.

    ``where`` hashes the split's absolute path and the size; ``content`` hashes the cache format
    version and every file's relative path, byte size and mtime (ns). A changed tree gets a new
    name, and the old file of the same ``where`` is deleted once the new one is written.
    """
    where = hashlib.sha256(f"{split.resolve()}|{size}".encode()).hexdigest()[:8]
    h = hashlib.sha256(f"{CACHE_VERSION}|{split.resolve()}|{size}".encode())
    for f in files:
        try:
            st = os.stat(split / f)
        except OSError as exc:
            raise DataError(f"cannot read image file {split / f}: {exc.strerror or exc}") from exc
        h.update(f"|{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cdir / f"{safe}-{split.name}-{size}px-{where}-{h.hexdigest()[:16]}.pt"


def read_cache(path: Path, n: int, size: int) -> tuple[torch.Tensor, dict[int, str]] | None:
    """The cached ``(images, bad)``, or None (with a warning) when the file is missing or invalid.

    Read with ``torch.load(weights_only=True)``: tensors, ints, strings and lists only, no pickle.
    """
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        x, idx, why = d["images"], d["bad_index"], d["bad_reason"]
        ok = (d.get("version") == CACHE_VERSION and isinstance(x, torch.Tensor)
              and x.dtype == torch.uint8 and tuple(x.shape) == (n, 3, size, size)
              and len(idx) == len(why) and all(0 <= int(i) < n for i in idx))
        if not ok:
            raise ValueError("unexpected contents")
    except Exception as exc:  # truncated, corrupt or foreign file: decode again and overwrite it
        warnings.warn(f"decoded-image cache {path} is unreadable ({reason(exc)}); decoding the "
                      "images again", stacklevel=3)
        return None
    return x, {int(i): str(r) for i, r in zip(idx, why, strict=True)}


def write_cache(path: Path, x: torch.Tensor, bad: dict[int, str]) -> bool:
    """Write atomically (temp file + ``os.replace``); on any failure warn and return False."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:  # Python's open: a clean OSError on a read-only directory
            torch.save({"version": CACHE_VERSION, "images": x,
                        "bad_index": list(bad), "bad_reason": list(bad.values())}, fh)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        warnings.warn(f"could not write the decoded-image cache {path} ({exc}); continuing "
                      "without a cache (set dataset.cache_dir to a writable directory, or "
                      "dataset.cache=false)", stacklevel=3)
        return False
    _remove_stale(path)
    return True


def _remove_stale(path: Path) -> None:
    """Delete older caches of the same split and size, and temp files of dead writers."""
    prefix = path.name.rsplit("-", 1)[0]  # <name>-<split>-<S>px-<where>
    for other in path.parent.glob(f"{glob.escape(prefix)}-*"):
        if other == path:
            continue
        if other.name.endswith(".tmp"):
            pid = other.name.rsplit(".", 2)[-2]
            if pid.isdigit() and liveness.alive(liveness.parse_tag(f"{_HOST}:{pid}")):
                continue  # another process is writing it right now
        elif not other.name.endswith(".pt"):
            continue
        with contextlib.suppress(OSError):
            other.unlink()
