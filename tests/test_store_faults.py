"""The teacher-output store under faults and concurrency, on the real file system with real
processes: kill -9 in the middle of a shard, corrupt and truncated shards, writers and a reader
racing on the same shards, a full disk (RLIMIT_FSIZE), least-recently-used eviction, and the
``python -m kdsweep.store`` command line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdsweep.store import (
    Entry,
    digest_of,
    entries,
    evict,
    stale_tmp,
)
from kdsweep.store.__main__ import human, main

REPO = Path(__file__).resolve().parents[1]
LOGGER = "kdsweep.store"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _py(code: str, *args: object, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdsweep.store", *map(str, args)], cwd=REPO,
                          env=_env(), text=True, capture_output=True, timeout=timeout)


def _parts(arch: str, *, data: str = "cifar100", batch: int = 64,
           precision: str = "fp32") -> dict:
    return {"teacher": {"arch": arch, "weights": f"w-{arch}"},
            "data": {"name": data, "split": "train"}, "batch_size": batch,
            "precision": precision, "form": "dense"}


def _payload(rows: int = 64, classes: int = 100, seed: int = 0, batches: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"batches": batches, "sizes": torch.full((batches,), rows // batches),
            "logits": torch.randn(rows, classes, generator=g)}


def _entry(root: Path, arch: str, *, shards: int = 1, rows: int = 64, used: float | None = None,
           **kw) -> Entry:
    parts = _parts(arch, **kw)
    e = Entry(root, digest_of(parts), parts, chunk=1)
    e.open()
    for c in range(shards):
        assert e.write(0, c, _payload(rows, seed=c))
    if used is not None:
        os.utime(e.path / "used", (used, used))
    return e


def _tmps(d: Path) -> list[Path]:
    return sorted(d.glob(".tmp-*"))


# ------------------------------------------------------------------------ kill -9 mid-write
KILLED_WRITER = r"""
import sys, torch
from pathlib import Path
from kdsweep.store import Entry
root, digest, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
x = torch.randn(n, generator=torch.Generator().manual_seed(0))
e = Entry(root, digest, {"teacher": {"arch": "big"}}, chunk=1)
e.open()
print("ready", flush=True)
while True:
    assert e.write(0, 0, {"batches": 1, "sizes": torch.tensor([n]), "logits": x})
"""


def test_kill_9_mid_write_leaves_no_readable_half_shard_and_gc_removes_its_temp_file(tmp_path):
    root, digest = tmp_path / "store", "a" * 24
    n = 150_000_000 // 4                                    # a 150 MB logits tensor
    d = root / digest
    p = _py(KILLED_WRITER, root, digest, n)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        # Wait for one whole shard (its size is what a whole one weighs), then for the next
        # write's temporary file while it is still being written (shorter than a whole shard):
        # the kill lands before that write's rename.
        whole, half, deadline = 0, None, time.monotonic() + 90
        while half is None:
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline, "no shard write was caught in progress"
            for f in d.iterdir() if d.exists() else []:
                try:
                    size = f.stat().st_size
                except FileNotFoundError:
                    continue
                if f.name.endswith(".pt"):
                    whole = size
                elif f.name.startswith(".tmp-") and 0 < size < whole:
                    half = f
            if half is None:
                time.sleep(0.001)
        p.send_signal(signal.SIGKILL)
        p.wait(30)  # reaped: its PID no longer answers
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL

    # Every shard under its final name is whole, with its checksum.
    shards = sorted(d.glob("e*.pt"))
    assert [s.name for s in shards] == ["e0000-c0000-n0001.pt"]
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    e = Entry(root, digest, {}, chunk=1)
    payload = e.read(shards[0])
    assert payload is not None and torch.equal(payload["logits"], x)
    del payload, x

    # The killed write left its temporary file, half written: not readable as a shard.
    tmps = _tmps(d)
    assert tmps == [half]
    copy = d / "e0009-c0000-n0001.pt"
    shutil.copyfile(half, copy)
    assert e.read(copy) is None and not copy.exists()
    assert f"{socket.gethostname()}_{p.pid}_" in half.name  # its writer's liveness tag
    assert stale_tmp(root) == tmps                           # its owner is dead (fresh file)

    r = _cli("gc", "--store", root)
    assert r.returncode == 0, r.stderr
    assert "removed 1 stale temporary file" in r.stdout
    assert _tmps(d) == [] and stale_tmp(root) == []
    assert [s.name for s in d.glob("e*.pt")] == ["e0000-c0000-n0001.pt"]
    shutil.rmtree(root)  # 150 MB: not kept in pytest's tmp dirs


def test_stale_tmp_spares_a_live_writer_and_takes_old_files(tmp_path):
    root = tmp_path / "store"
    e = _entry(root, "t")
    mine = e.path / f".tmp-{socket.gethostname()}_{os.getpid()}_x-0123abcd"  # a live owner
    other = e.path / ".tmp-otherhost_12_34-0123abcd"                           # unknown: by age
    nameless = e.path / ".tmp-0123456789abcdef"
    for f in (mine, other, nameless):
        f.write_bytes(b"partial")
    assert stale_tmp(root) == []
    old = time.time() - 7200
    os.utime(other, (old, old))
    os.utime(nameless, (old, old))
    assert sorted(stale_tmp(root)) == sorted([other, nameless])


# --------------------------------------------------------------------------- corrupt shards
def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _stale_checksum(path: Path) -> None:  # a well-formed file whose tensors changed
    p = torch.load(path, weights_only=True)
    p["logits"][3, 7] += 1.0
    torch.save(p, path)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_flip_middle, _truncate, _stale_checksum, _empty],
                         ids=["flipped", "truncated", "stale-checksum", "empty"])
def test_a_corrupt_shard_is_detected_said_and_removed(tmp_path, caplog, damage):
    e = _entry(tmp_path / "store", "t")
    [(n, shard)] = e.shards(0).values()
    assert n == 1 and e.read(shard) is not None
    damage(shard)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert e.read(shard) is None
    said = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(said) == 1 and str(shard) in said[0].getMessage()
    assert "corrupt" in said[0].getMessage()
    assert not shard.exists() and e.shards(0) == {}
    # computed again and written again: whole
    assert e.write(0, 0, _payload(seed=0))
    assert torch.equal(e.read(shard)["logits"], _payload(seed=0)["logits"])


# ---------------------------------------------------------------------------- concurrency
RACER = r"""
import json, sys, time, torch
from pathlib import Path
from kdsweep.store import Entry
root, digest, role, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
def payload(c):
    g = torch.Generator().manual_seed(c)
    return {"batches": 4, "sizes": torch.full((4,), 16), "logits": torch.randn(64, 4000, generator=g)}
e = Entry(root, digest, {"teacher": {"arch": "race"}}, chunk=4)
want = {c: payload(c)["logits"] for c in range(3)}
print("ready", flush=True)
while not (root / "go").exists():
    time.sleep(0.005)
end, n, bad = time.monotonic() + seconds, 0, 0
while time.monotonic() < end:
    for c in range(3):
        if role == "writer":
            assert e.write(0, c, payload(c))
            n += 1
        else:
            path = e.path / f"e0000-c{c:04d}-n0004.pt"
            if path.exists():
                p = e.read(path)
                n += 1
                bad += p is None or not torch.equal(p["logits"], want[c])
print(json.dumps({"role": role, "n": n, "bad": bad}), flush=True)
"""


def test_concurrent_writers_and_a_reader_never_see_a_partial_or_corrupt_shard(tmp_path):
    root, digest, seconds = tmp_path / "store", "b" * 24, 2.5
    root.mkdir()
    procs = [_py(RACER, root, digest, role, seconds)
             for role in ("writer", "writer", "reader")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        (root / "go").touch()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert "corrupt" not in err, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    writes = [r["n"] for r in results if r["role"] == "writer"]
    [reader] = [r for r in results if r["role"] == "reader"]
    assert min(writes) >= 3, results            # every writer wrote each shard at least once
    assert reader["n"] >= 10, results           # and the reader read while they wrote
    assert reader["bad"] == 0, results
    e = Entry(root, digest, {}, chunk=4)
    assert sorted(p.name for p in e.path.glob("e*.pt")) == [
        f"e0000-c{c:04d}-n0004.pt" for c in range(3)]
    for c in range(3):
        g = torch.Generator().manual_seed(c)
        got = e.read(e.path / f"e0000-c{c:04d}-n0004.pt")
        assert got is not None and torch.equal(got["logits"], torch.randn(64, 4000, generator=g))
    assert _tmps(e.path) == []
    [info] = entries(root)
    assert info.shards == 3 and info.parts["teacher"]["arch"] == "race"


# ------------------------------------------------------------------------------ disk full
DISK_FULL = r"""
import json, logging, resource, signal, sys, torch
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
from kdsweep.store import Entry
e = Entry(Path(sys.argv[1]), sys.argv[2], {"teacher": {"arch": "full"}}, chunk=1)
e.open()
def shard(n):
    return {"batches": 1, "sizes": torch.tensor([1]), "logits": torch.ones(n)}
small = e.write(0, 0, shard(256))
big = e.write(0, 1, shard(2 << 20))       # 8 MB > the 4 MB limit
again = e.write(0, 2, shard(256))
w = torch.ones(3, requires_grad=True)      # training goes on
(w * 2).sum().backward()
print(json.dumps({"small": small, "big": big, "again": again, "writable": e.writable,
                  "grad": w.grad.tolist()}))
"""


def test_disk_full_stops_writing_with_one_warning_and_training_goes_on(tmp_path):
    root, digest = tmp_path / "store", "c" * 24
    p = _py(DISK_FULL, root, digest)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"small": True, "big": False, "again": False, "writable": False,
                   "grad": [2.0, 2.0, 2.0]}, err
    said = [line for line in err.splitlines() if line.startswith(f"{LOGGER} WARNING")]
    assert len(said) == 1 and "no space left" in said[0], err
    assert "File too large" in said[0] and str(root / digest) in said[0]
    d = root / digest
    assert sorted(f.name for f in d.glob("e*.pt")) == ["e0000-c0000-n0001.pt"]
    assert _tmps(d) == [] and stale_tmp(root) == []
    got = Entry(root, digest, {}, chunk=1).read(d / "e0000-c0000-n0001.pt")
    assert got is not None and torch.equal(got["logits"], torch.ones(256))


# ------------------------------------------------------------------------------- eviction
def test_evict_removes_least_recently_used_first_and_never_keep(tmp_path):
    root, now = tmp_path / "store", time.time()
    a = _entry(root, "a", used=now - 3000)
    b = _entry(root, "b", used=now - 2000)
    c = _entry(root, "c", used=now - 1000)
    found = entries(root)
    assert [e.digest for e in found] == [a.digest, b.digest, c.digest]
    size = {e.digest: e.bytes for e in found}
    total = sum(size.values())
    assert evict(root, total) == []                             # under the limit: nothing
    assert evict(root, total - 1) == [a.digest]                 # the oldest only
    assert not a.path.exists() and b.path.exists() and c.path.exists()
    assert evict(root, 0, keep=b.digest) == [c.digest]          # b is kept, though older
    assert [e.digest for e in entries(root)] == [b.digest]
    # a use makes an entry the most recent
    d = _entry(root, "d", used=now - 5000)
    b.touch()
    assert evict(root, size[b.digest]) == [d.digest]


def test_a_writer_whose_entry_was_evicted_makes_it_visible_again(tmp_path):
    root = tmp_path / "store"
    e = _entry(root, "a")
    assert evict(root, 0) == [e.digest] and not e.path.exists()
    assert e.write(1, 0, _payload())  # the run goes on writing its next epoch
    [info] = entries(root)            # counted by the size limit and the command line again
    assert info.digest == e.digest and info.shards == 1
    assert info.parts["teacher"]["arch"] == "a"


# ---------------------------------------------------------------------------- command line
@pytest.fixture
def store(tmp_path):
    root, now = tmp_path / "store", time.time()
    es = [_entry(root, "resnet32x4", batch=64, used=now - 10 * 86400),
          _entry(root, "wrn_40_2", batch=128, shards=2, precision="bf16", used=now - 3 * 86400),
          _entry(root, "ResNet50", data="imagenet", batch=256, used=now - 60)]
    return root, es


def _run(capsys, *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_list_and_size(store, capsys):
    root, es = store
    rc, out, err = _run(capsys, "list", "--store", root)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["digest", "size", "shards", "last", "used", "teacher", "data",
                                "batch", "precision", "form"]
    rows = [line.split() for line in lines[1:-1]]
    assert [r[0] for r in rows] == [e.digest for e in es]       # least recently used first
    assert [r[6:] for r in rows] == [["resnet32x4", "cifar100", "64", "fp32", "dense"],
                                     ["wrn_40_2", "cifar100", "128", "bf16", "dense"],
                                     ["ResNet50", "imagenet", "256", "fp32", "dense"]]
    assert [r[3] for r in rows] == ["1", "2", "1"]
    used = entries(root)[0].used
    assert " ".join(rows[0][4:6]) == time.strftime("%Y-%m-%d %H:%M", time.localtime(used))
    total = sum(e.bytes for e in entries(root))
    assert lines[-1] == f"total: 3 entries, {human(total)}, 4 shards in {root}"

    rc, out, _ = _run(capsys, "--store", root, "size")          # --store before the command
    assert rc == 0 and out.strip() == f"{human(total)} ({total} bytes) in 3 entries at {root}"


def test_cli_default_store_is_the_environment_variable(tmp_path, store, capsys, monkeypatch):
    root, es = store
    monkeypatch.setenv("KDSWEEP_TEACHER_STORE", str(root))
    rc, out, _ = _run(capsys, "size")
    assert rc == 0 and out.strip().endswith(f"in 3 entries at {root}")
    monkeypatch.setenv("KDSWEEP_TEACHER_STORE", str(tmp_path / "not-yet"))  # empty, not an error
    assert _run(capsys, "list")[:2] == (0, f"no entries in {tmp_path / 'not-yet'}\n")
    assert _run(capsys, "size")[1].startswith("0 B (0 bytes) in 0 entries")


def test_cli_clear_one_old_and_all(store, capsys):
    root, (old, mid, new) = store
    rc, out, _ = _run(capsys, "clear", "--store", root, "--digest", mid.digest[:8])
    assert rc == 0 and "removed 1 entry" in out and "2 left" in out
    assert not mid.path.exists() and old.path.exists()

    rc, out, _ = _run(capsys, "clear", "--store", root, "--older-than", "7")
    assert rc == 0 and "removed 1 entry" in out
    assert [e.digest for e in entries(root)] == [new.digest]

    stale = new.path / ".tmp-otherhost_1_2-0123abcd"            # a killed writer's, 2 hours old
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 7200,) * 2)
    rc, out, _ = _run(capsys, "clear", "--store", root, "--older-than", "1")
    assert rc == 0 and "removed 0 entries" in out and "removed 1 stale temporary file" in out
    assert not stale.exists() and new.path.exists()

    rc, out, _ = _run(capsys, "clear", "--store", root)
    assert rc == 0 and "removed 1 entry" in out and "0 left" in out
    assert entries(root) == [] and list(root.iterdir()) == []


def test_cli_gc_removes_stale_temp_files_and_evicts_to_max_gb(store, capsys):
    root, (old, mid, new) = store
    stale = mid.path / ".tmp-otherhost_1_2-0123abcd"
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 7200,) * 2)
    live = mid.path / f".tmp-{socket.gethostname()}_{os.getpid()}_x-0123abcd"  # a live writer
    live.write_bytes(b"x")
    rc, out, _ = _run(capsys, "gc", "--store", root)
    assert rc == 0 and "removed 1 stale temporary file" in out
    assert not stale.exists() and live.exists() and len(entries(root)) == 3
    live.unlink()

    rc, out, _ = _run(capsys, "gc", "--store", root)
    assert rc == 0 and "nothing to collect" in out

    sizes = {e.digest: e.bytes for e in entries(root)}
    limit = (sizes[new.digest] + sizes[mid.digest]) / 1e9
    rc, out, _ = _run(capsys, "gc", "--store", root, "--max-gb", f"{limit:.9f}")
    assert rc == 0 and "removed 1 least recently used entry" in out
    assert [e.digest for e in entries(root)] == [mid.digest, new.digest]
    rc, out, _ = _run(capsys, "gc", "--store", root, "--max-gb", "0")
    assert rc == 0 and "removed 2 least recently used entries" in out and entries(root) == []


def test_cli_bad_input_is_one_line_and_exit_2(store, tmp_path, capsys):
    root, (old, _, _) = store
    for argv, said in [
        (["list", "--store", tmp_path / "missing"], "does not exist"),
        (["clear", "--store", root, "--digest", "ffffffff"], "no entry"),
        (["clear", "--store", root, "--digest", ""], "no entry"),
        (["clear", "--store", root, "--digest", old.digest, "--older-than", "1"],
         "not allowed with"),
        (["gc", "--store", root, "--max-gb", "-1"], "must be >= 0"),
        (["clear", "--store", root, "--older-than", "soon"], "not a number"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ]:
        rc, out, err = _run(capsys, *argv)
        assert (rc, out) == (2, ""), argv
        assert len(err.splitlines()) == 1 and said in err, (argv, err)
        assert err.startswith("python -m kdsweep.store: error: ")
    assert len(entries(root)) == 3                            # nothing was removed

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = _cli("list", "--store", not_a_dir)                    # the real command, its exit status
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"python -m kdsweep.store: error: store {not_a_dir} is not "
                                     "a directory"]
