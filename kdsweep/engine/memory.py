"""Keep freed memory in the heap on CPU runs (glibc ``mallopt``), instead of re-faulting it each step.

A CPU training step allocates and frees the same large activation buffers every iteration (a
WRN-28-4 block at batch 128 holds 128 x 64 x 32 x 32 fp32 = 32 MiB tensors). With glibc's default
policy a request of at least ``M_MMAP_THRESHOLD`` gets its own ``mmap`` and goes back to the
kernel on ``free``; the next step maps it again and the kernel zero-fills it page by page (a minor
fault per 4 KiB page). The threshold starts at 128 KiB and adapts upwards to the size of freed
blocks, but only up to ``DEFAULT_MMAP_THRESHOLD_MAX`` = 32 MiB on 64-bit, so the 32 MiB-and-larger
buffers of the big teachers are returned and re-faulted forever (the issue behind this module
measured 38 % of the CPU time of a WRN-28-4 -> WRN-16-2 KD step in the kernel). Freed memory at the top of the heap is also
returned once it exceeds ``M_TRIM_THRESHOLD`` (128 KiB, adapting to twice the mmap threshold).

:func:`keep_freed_memory` sets, once per process:

* ``M_MMAP_THRESHOLD = 1 GiB``: every request below 1 GiB comes from the heap, so freed activation
  buffers stay there and the next step reuses them. 1 GiB is far above any activation tensor of the
  32-px training this package does (batch 1024 of a 64-channel 32x32 map is 256 MiB), while blocks
  of 1 GiB and more (whole data sets) still get their own mapping and are returned when freed.
  ``mallopt`` returns 1 on success and 0 on refusal; ``mallopt(3)`` documents an upper limit of
  ``HEAP_MAX_SIZE / 2`` = 32 MiB on 64-bit, which older glibc enforce (the 2.36 of the build
  machine accepts 1 GiB: it returns 1 and 40 MiB blocks stop faulting). When it is refused, the
  fallback is the documented maximum of 32 MiB plus ``M_MMAP_MAX = 0``, which turns ``mmap`` off
  for ordinary requests altogether (glibc still maps memory when the heap cannot grow).
* ``M_TRIM_THRESHOLD = 1 GiB``: up to 1 GiB of free memory at the top of the heap is kept rather
  than given back with ``brk`` after each step. The value is an ``int``; glibc documents no upper
  limit. Above it, memory is still returned.

Setting either threshold turns glibc's dynamic adjustment of both off, which is why both are set.
The cost is a process that keeps its peak heap (the largest step's working set) until it exits,
the normal state of a training process.

It is a no-op, saying why, on other systems (macOS, musl), when ``malloc`` is not glibc's
(jemalloc/tcmalloc/mimalloc through ``LD_PRELOAD``), when the user already tunes malloc through
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_MAX_`` or
``GLIBC_TUNABLES=glibc.malloc...``, when ``KDSWEEP_KEEP_FREED_MEMORY=0``, and for CUDA runs
(activations live in CUDA's caching allocator there; host memory is not the hot path).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

MMAP_THRESHOLD = 1 << 30  # 1 GiB, see the module docstring
TRIM_THRESHOLD = 1 << 30
DOCUMENTED_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)  # 32 MiB on 64-bit
ENV_SWITCH = "KDSWEEP_KEEP_FREED_MEMORY"
_USER_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_",
             "MALLOC_TOP_PAD_")

_applied: str | None = None  # the description of what the first CPU call did


def _libc():
    return ctypes.CDLL(None)


def glibc_version() -> str | None:
    """glibc's version string (``"2.36"``), or None when the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = _libc().gnu_get_libc_version
    except (AttributeError, OSError):
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def malloc_replaced() -> bool:
    """True when the process's ``malloc`` is not glibc's (e.g. jemalloc through ``LD_PRELOAD``).

    Compares the ``malloc`` the global symbol scope resolves to with the one inside libc.so.6.
    """
    try:
        glibc = ctypes.CDLL("libc.so.6")
        here = ctypes.cast(_libc().malloc, ctypes.c_void_p).value
        own = ctypes.cast(glibc.malloc, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return True
    return here != own


def _mallopt(param: int, value: int) -> int:
    fn = _libc().mallopt
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return int(fn(param, value))


def _mib(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 and n % (1 << 30) == 0 else f"{n >> 20} MiB"


def _skip_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"device is {device.type}"
    if os.environ.get(ENV_SWITCH, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform})"
    if glibc_version() is None:
        return "C library is not glibc"
    if malloc_replaced():
        return "malloc is not glibc's (LD_PRELOAD allocator)"
    user = [k for k in _USER_ENV if k in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        return f"malloc already tuned by {', '.join(user)}"
    return None


def keep_freed_memory(device: torch.device | str = "cpu") -> str:
    """Make glibc keep freed memory in the heap (see the module docstring); returns what it did.

    Call once at the start of a run with the run's device. Idempotent: a later call returns the
    first call's description without calling ``mallopt`` again. Never raises; the returned line is
    meant for a log line or an MLflow tag, e.g. ``"glibc 2.36 mallopt: M_MMAP_THRESHOLD=1 GiB,
    M_TRIM_THRESHOLD=1 GiB"`` or ``"not applied: device is cuda"``.
    """
    global _applied
    device = torch.device(device)
    if _applied is not None:
        return _applied
    reason = _skip_reason(device)
    if reason is not None:
        return f"not applied: {reason}"
    done: list[str] = []
    try:
        if _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
            done.append(f"M_MMAP_THRESHOLD={_mib(MMAP_THRESHOLD)}")
        else:  # a glibc that enforces the documented maximum
            capped = _mallopt(M_MMAP_THRESHOLD, DOCUMENTED_MMAP_THRESHOLD_MAX) == 1
            no_mmap = _mallopt(M_MMAP_MAX, 0) == 1
            done.append(f"M_MMAP_THRESHOLD={_mib(MMAP_THRESHOLD)} refused, "
                        + (f"{_mib(DOCUMENTED_MMAP_THRESHOLD_MAX)}" if capped else "32 MiB refused")
                        + (", M_MMAP_MAX=0" if no_mmap else ", M_MMAP_MAX=0 refused"))
        ok = _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        done.append(f"M_TRIM_THRESHOLD={_mib(TRIM_THRESHOLD)}" + ("" if ok else " refused"))
    except (AttributeError, OSError) as exc:  # pragma: no cover - glibc without mallopt
        return f"not applied: mallopt unavailable ({exc})"
    _applied = f"glibc {glibc_version()} mallopt: {', '.join(done)}"
    return _applied
