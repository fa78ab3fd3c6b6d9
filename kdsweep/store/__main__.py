"""List, size and clear the teacher-output store (:mod:`kdsweep.store`).

Usage::

    python -m kdsweep.store list   [--store PATH]
    python -m kdsweep.store size   [--store PATH]
    python -m kdsweep.store clear  [--store PATH] [--digest D | --older-than DAYS]
    python -m kdsweep.store gc     [--store PATH] [--max-gb GB]

``list``   every entry, least recently used first: its digest, size, shards, last use (local
           time), and the teacher, data set, batch size, precision and form from its key.json;
           then a total line.
``size``   the store's total size (bytes and entries).
``clear``  remove every entry, or the one named by ``--digest`` (a unique prefix will do), or
           those last used more than ``--older-than`` days ago; also removes the temporary
           files of killed writers.
``gc``     remove the temporary files of killed writers (their process is gone, or they are over
           an hour old), and with ``--max-gb`` the least recently used entries until the store
           holds at most that much.

``--store`` defaults to ``$KDSWEEP_TEACHER_STORE``, else ``<kdsweep cache dir>/teacher-outputs``
(a default store that does not exist yet is empty; a ``--store`` that does not exist is an
error). Sizes are decimal (1 MB = 10^6 bytes, like ``teacher.store_max_gb``). Bad input is one
line on stderr and exit status 2. Safe while trials run: an entry removed under a running trial
is a miss for it (computed again), never a wrong read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from kdsweep.store import (
    EntryInfo,
    default_root,
    entries,
    evict,
    remove_entry,
    stale_tmp,
)

PROG = "python -m kdsweep.store"
DIGEST_DIR = re.compile(r"^[0-9a-f]{24}$")


class UsageError(Exception):
    """Bad input: said in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(f"{message} (see {PROG} --help)")


def human(n: float) -> str:
    """Decimal units: ``950 B``, ``12.3 kB``, ``45.6 MB``, ``1.23 GB``."""
    if n < 1000:
        return f"{int(n)} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        if n < scale * 1000 or unit == "TB":
            v = n / scale
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"
    raise AssertionError  # unreachable


def _local(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t > 0 else "never"


def _key(parts: dict[str, Any]) -> dict[str, str]:
    def get(*path: str) -> str:
        v: Any = parts
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return "?" if v is None else str(v)

    return {"teacher": get("teacher", "arch"), "data": get("data", "name"),
            "batch": get("batch_size"), "precision": get("precision"), "form": get("form")}


# ----------------------------------------------------------------------------- commands
def _list(root: Path, found: list[EntryInfo], _args: argparse.Namespace) -> int:
    if not found:
        print(f"no entries in {root}")
        return 0
    rows = [("digest", "size", "shards", "last used", "teacher", "data", "batch", "precision",
             "form")]
    for e in found:
        k = _key(e.parts)
        rows.append((e.digest, human(e.bytes), str(e.shards), _local(e.used), k["teacher"],
                     k["data"], k["batch"], k["precision"], k["form"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 2, 6}  # size, shards, batch
    for r in rows:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
    total = sum(e.bytes for e in found)
    print(f"total: {len(found)} entr{'y' if len(found) == 1 else 'ies'}, {human(total)}, "
          f"{sum(e.shards for e in found)} shards in {root}")
    return 0


def _size(root: Path, found: list[EntryInfo], _args: argparse.Namespace) -> int:
    total = sum(e.bytes for e in found)
    print(f"{human(total)} ({total} bytes) in {len(found)} entr{'y' if len(found) == 1 else 'ies'}"
          f" at {root}")
    return 0


def _remove_tmp(root: Path) -> tuple[int, int]:
    count = size = 0
    for f in stale_tmp(root):
        with contextlib.suppress(OSError):
            n = f.stat().st_size
            f.unlink()
            count, size = count + 1, size + n
    return count, size


def _say_tmp(count: int, size: int) -> None:
    if count:
        print(f"removed {count} stale temporary file{'s' * (count != 1)} of killed writers "
              f"({human(size)})")


def _clear(root: Path, found: list[EntryInfo], args: argparse.Namespace) -> int:
    if args.digest is not None:
        d = args.digest.strip().lower()
        match = [e for e in found if d and e.digest.startswith(d)]
        if not match:
            raise UsageError(f"--digest {args.digest!r}: no entry in {root} has that digest")
        if len(match) > 1:
            raise UsageError(f"--digest {args.digest!r} matches {len(match)} entries in {root}; "
                             "give more of the digest")
        chosen = match
    elif args.older_than is not None:
        cutoff = time.time() - args.older_than * 86400
        chosen = [e for e in found if e.used < cutoff]
    else:
        chosen = found
    for e in chosen:
        remove_entry(e.path)
    if args.digest is None and args.older_than is None and root.is_dir():
        # directories an interrupted removal left without their key.json
        for d in root.iterdir():
            if DIGEST_DIR.match(d.name) and d.is_dir() and not (d / "key.json").exists():
                shutil.rmtree(d, ignore_errors=True)
    _say_tmp(*_remove_tmp(root))
    freed = sum(e.bytes for e in chosen)
    print(f"removed {len(chosen)} entr{'y' if len(chosen) == 1 else 'ies'} ({human(freed)}); "
          f"{len(found) - len(chosen)} left in {root}")
    return 0


def _gc(root: Path, _found: list[EntryInfo], args: argparse.Namespace) -> int:
    count, size = _remove_tmp(root)
    _say_tmp(count, size)
    removed: list[str] = []
    if args.max_gb is not None:
        by_digest = {e.digest: e for e in entries(root)}  # sizes without the removed files
        removed = evict(root, int(args.max_gb * 1e9))
        freed = sum(by_digest[d].bytes for d in removed if d in by_digest)
        if removed:
            print(f"removed {len(removed)} least recently used entr"
                  f"{'y' if len(removed) == 1 else 'ies'} ({human(freed)}) to stay under "
                  f"{args.max_gb:g} GB")
    left = entries(root)
    if not count and not removed:
        print("nothing to collect")
    print(f"{human(sum(e.bytes for e in left))} in {len(left)} "
          f"entr{'y' if len(left) == 1 else 'ies'} at {root}")
    return 0


COMMANDS = {"list": _list, "size": _size, "clear": _clear, "gc": _gc}


# --------------------------------------------------------------------------------- main
def _non_negative(kind: type) -> Any:
    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if not v >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
        return v
    return parse


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="List, size and clear kdsweep's teacher-output store.",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="store: --store PATH, else $KDSWEEP_TEACHER_STORE, else "
                       "<kdsweep cache dir>/teacher-outputs")
    store_help = "the store's directory (default: $KDSWEEP_TEACHER_STORE or the cache dir)"
    p.add_argument("--store", metavar="PATH", type=Path, default=None, help=store_help)
    sub = p.add_subparsers(dest="command", required=True, metavar="{list,size,clear,gc}",
                           parser_class=_Parser)
    helps = {"list": "every entry, least recently used first, and a total",
             "size": "the store's total size and number of entries",
             "clear": "remove all entries, one (--digest) or the old ones (--older-than)",
             "gc": "remove killed writers' temporary files; --max-gb: evict to that size"}
    subs = {name: sub.add_parser(name, help=h, description=h) for name, h in helps.items()}
    for s in subs.values():  # --store after the command too; SUPPRESS keeps one given before
        s.add_argument("--store", metavar="PATH", type=Path, default=argparse.SUPPRESS,
                       help=store_help)
    which = subs["clear"].add_mutually_exclusive_group()
    which.add_argument("--digest", metavar="D", help="only this entry (a unique prefix will do)")
    which.add_argument("--older-than", metavar="DAYS", type=_non_negative(float),
                       help="only entries last used more than DAYS days ago")
    subs["gc"].add_argument("--max-gb", metavar="GB", type=_non_negative(float),
                            help="then evict least recently used entries down to GB")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        explicit = args.store is not None
        root = (args.store or default_root()).expanduser()
        if root.exists() and not root.is_dir():
            raise UsageError(f"store {root} is not a directory")
        if explicit and not root.exists():
            raise UsageError(f"store {root} does not exist")
        if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
            raise UsageError(f"store {root} is not readable")
        return COMMANDS[args.command](root, entries(root), args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
