"""Build the embedded default data set shipped in ``kdsweep/data/embedded/cifar10_subset.npz``.

Usage (from the repository root)::

    python tools/build_embedded.py --source ../shared/data/cifar10-jpg \
        --out kdsweep/data/embedded/cifar10_subset.npz [--train-per-class 500 --test-per-class 100 --seed 0]

Selection: classes are the sorted sub-directories of ``SOURCE/train``. For split ``s`` (0 = train,
1 = test) and class number ``c``, the files of ``SOURCE/<split>/<class>/`` are sorted by name and
``numpy.random.default_rng([seed, s, c]).choice(n_files, k, replace=False)`` picks ``k`` of them;
the picked positions are sorted again, so the subset is in file-name order within each class and
classes follow each other in class order. The original JPEG bytes are stored as they are (never
re-encoded), concatenated into one uint8 array with int64 offsets.

The ``.npz`` is written byte-for-byte reproducibly (fixed zip timestamps, stored uncompressed), so
rebuilding with the same arguments from the same tree gives the same SHA-256.

Keys: ``train_jpeg``/``test_jpeg`` (uint8, concatenated JPEG files), ``train_offsets``/
``test_offsets`` (int64, length n+1), ``train_labels``/``test_labels`` (int64), ``train_files``/
``test_files`` (relative source paths as ASCII bytes, for provenance), ``classes`` (str), ``mean``/``std``
(float64, per RGB channel, pixels scaled to [0, 1], over the decoded train subset), ``meta`` (str).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from kdsweep.errors import DataError

IMG_SUFFIXES = (".jpg", ".jpeg")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def select_files(source: Path, split: str, split_id: int, classes: list[str], per_class: int,
                 seed: int) -> tuple[list[Path], list[int]]:
    """Seeded, class-balanced choice of ``per_class`` files per class (see the module docstring)."""
    files: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        folder = source / split / name
        if not folder.is_dir():
            raise DataError(f"missing class folder {folder} (expected {source}/{split}/<class>/*.jpg)")
        pool = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_SUFFIXES)
        if len(pool) < per_class:
            raise DataError(f"{folder} has {len(pool)} JPEG files, need at least {per_class}")
        pick = np.sort(np.random.default_rng([seed, split_id, c]).choice(len(pool), per_class,
                                                                           replace=False))
        files += [pool[i] for i in pick]
        labels += [c] * per_class
    return files, labels


def pack(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the raw bytes of ``files``; returns (uint8 data, int64 offsets of length n+1)."""
    blobs = [f.read_bytes() for f in files]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), offsets


def channel_stats(jpeg: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (pixels in [0, 1]) of the decoded JPEGs, in float64."""
    from kdsweep.data.embedded_io import decode_packed

    x = decode_packed(jpeg, offsets).double().div_(255.0)  # N, 3, H, W
    return x.mean(dim=(0, 2, 3)).numpy(), x.std(dim=(0, 2, 3)).numpy()


def save_npz_reproducible(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``np.load``-compatible ``.npz`` whose bytes depend only on the arrays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    tmp.replace(path)


def build(source: Path, out: Path, train_per_class: int = 500, test_per_class: int = 100,
          seed: int = 0) -> dict[str, np.ndarray]:
    source = Path(source)
    if not (source / "train").is_dir() or not (source / "test").is_dir():
        raise DataError(f"--source {source} must contain train/<class>/*.jpg and test/<class>/*.jpg")
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    arrays: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split_id, split in enumerate(("train", "test")):
        per_class = train_per_class if split == "train" else test_per_class
        files, labels = select_files(source, split, split_id, classes, per_class, seed)
        arrays[f"{split}_jpeg"], arrays[f"{split}_offsets"] = pack(files)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)
        arrays[f"{split}_files"] = np.array([str(f.relative_to(source)).encode() for f in files])
    arrays["mean"], arrays["std"] = channel_stats(arrays["train_jpeg"], arrays["train_offsets"])
    arrays["meta"] = np.array(
        f"CIFAR-10 JPEG subset: {train_per_class} train + {test_per_class} test per class, "
        f"seed {seed}, built by kdsweep.data.build_embedded from a cifar10-jpg ImageFolder tree")
    save_npz_reproducible(Path(out), arrays)
    return arrays


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="cifar10-jpg tree (train/ + test/)")
    ap.add_argument("--out", type=Path, required=True, help="output .npz path")
    ap.add_argument("--train-per-class", type=int, default=500)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    arrays = build(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {args.out.stat().st_size} bytes, sha256 {digest}")
    print(f"train {len(arrays['train_labels'])} / test {len(arrays['test_labels'])} images, "
          f"{len(arrays['classes'])} classes")
    print("mean", np.round(arrays["mean"], 4).tolist(), "std", np.round(arrays["std"], 4).tolist())


if __name__ == "__main__":
    main()
