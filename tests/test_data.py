"""Tests of kdsweep.data: the embedded set, the tensor loader, data sources and their errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from kdsweep.data import EMBEDDED_PATH, TensorLoader, build_data, load_embedded, parse_config
from kdsweep.data.bundle import channel_stats
from kdsweep.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
CIFAR_JPG = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg"
needs_tree = pytest.mark.skipif(not (CIFAR_JPG / "train").is_dir(),
                                reason=f"shared CIFAR-10 JPEG tree {CIFAR_JPG} is absent")


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def _raw_loader(x, y, **kw):
    """Tensor loader whose output equals the uint8 pixel values (mean 0, std 1/255)."""
    return TensorLoader(x, y, mean=(0.0,) * 3, std=(1 / 255,) * 3, **kw)


# ---------------------------------------------------------------- embedded set


def test_embedded_file_is_small_balanced_and_decodes():
    assert EMBEDDED_PATH.stat().st_size < 8 * 1024 * 1024
    d = load_embedded()
    assert d.train_x.shape == (5000, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (1000, 3, 32, 32) and d.test_x.dtype == torch.uint8
    assert d.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                         "ship", "truck"]
    assert torch.bincount(d.train_y).tolist() == [500] * 10
    assert torch.bincount(d.test_y).tolist() == [100] * 10
    assert d.train_x.float().std() > 30  # real images, not blank
    mean, std = channel_stats(d.train_x)
    assert mean == pytest.approx(d.mean, abs=1e-6) and std == pytest.approx(d.std, abs=1e-6)


def test_build_data_embedded_bundle():
    b = build_data({"name": "embedded"}, batch_size=128, eval_batch_size=256, seed=0)
    assert (b.name, b.num_train, b.num_val, b.num_classes, b.image_size) == \
        ("embedded", 5000, 1000, 10, 32)
    assert len(b.classes) == 10 and len(b.train) == 40 and len(b.val) == 4
    x, y, idx = next(iter(b.train))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and idx.dtype == torch.int64
    assert torch.equal(y, b.train_labels[idx])


# ---------------------------------------------------------------- tensor loader


def test_tensor_loader_deterministic_per_seed_and_epoch():
    cfg = {"name": "embedded"}
    a = build_data(cfg, batch_size=500, eval_batch_size=500, seed=7).train
    b = build_data(cfg, batch_size=500, eval_batch_size=500, seed=7).train
    e3a, e3b = _epoch(a, 3), _epoch(b, 3)
    for (xa, ya, ia), (xb, yb, ib) in zip(e3a, e3b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    _epoch(b, 0)  # other epochs in between do not matter: epoch 3 depends on (seed, 3) only
    assert torch.equal(_epoch(b, 3)[0][0], e3a[0][0])
    e4 = _epoch(a, 4)
    assert not torch.equal(e4[0][2], e3a[0][2])
    other = build_data(cfg, batch_size=500, eval_batch_size=500, seed=8).train
    assert not torch.equal(_epoch(other, 3)[0][2], e3a[0][2])


def test_tensor_loader_covers_each_index_once_and_drops_single_tail():
    b = build_data({"name": "embedded"}, batch_size=128, eval_batch_size=300)
    idx = torch.cat([i for _, _, i in _epoch(b.train, 0)])
    assert torch.equal(idx.sort().values, torch.arange(5000))
    assert not torch.equal(idx, torch.arange(5000))  # shuffled
    val_idx = torch.cat([i for _, _, i in b.val])
    assert torch.equal(val_idx, torch.arange(1000)) and len(b.val) == 4  # in order, tail kept

    x, y = torch.zeros(11, 3, 4, 4, dtype=torch.uint8), torch.arange(11)
    train = _raw_loader(x, y, batch_size=5, train=True)
    assert len(train) == 2 and [len(i) for _, _, i in train] == [5, 5]  # tail of 1 dropped
    val = _raw_loader(x, y, batch_size=5, train=False)
    assert [len(i) for _, _, i in val] == [5, 5, 1]
    assert [len(i) for _, _, i in _raw_loader(x[:10], y[:10], batch_size=4, train=True)] == [4, 4, 2]


def test_crop_flip_is_a_padded_crop_or_its_mirror_and_keeps_labels():
    d = load_embedded()
    x, y = d.train_x[:256], d.train_y[:256]
    loader = _raw_loader(x, y, batch_size=256, train=True, augment="crop_flip", seed=3)
    out, labels, idx = next(iter(loader))
    assert out.shape == (256, 3, 32, 32)
    assert torch.equal(labels, y[idx])
    assert (out != x[idx].float()).flatten(1).any(1).float().mean() > 0.9  # pixels really move
    padded = torch.nn.functional.pad(x[idx], (4, 4, 4, 4)).float()
    flips = 0
    for j in range(24):  # every output is one of the 9x9x2 windows of the zero-padded image
        hits = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (0, 1)
                if torch.equal(out[j], padded[j, :, oy:oy + 32, ox:ox + 32].flip(-1) if f
                               else padded[j, :, oy:oy + 32, ox:ox + 32])]
        assert hits, f"sample {j} is not a padded crop"
        flips += hits[0][2]
    assert 0 < flips < 24
    val = _raw_loader(x, y, batch_size=256, train=False, augment="crop_flip")
    assert torch.equal(next(iter(val))[0], x.float())  # no augmentation on val


def test_resized_crop_flip_tensor_path():
    d = load_embedded()
    loader = _raw_loader(d.train_x[:64], d.train_y[:64], batch_size=32, train=True,
                         augment="resized_crop_flip")
    a, b = _epoch(loader, 1), _epoch(loader, 1)
    assert a[0][0].shape == (32, 3, 32, 32) and torch.equal(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], d.train_x[a[0][2]].float())


def test_normalisation_gives_zero_mean_unit_std():
    b = build_data({"name": "embedded", "augment": "none"}, batch_size=1000, eval_batch_size=1000)
    x = torch.cat([x for x, _, _ in b.train])
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    xv = torch.cat([x for x, _, _ in b.val])
    assert xv.mean(dim=(0, 2, 3)).abs().max() < 0.1


# ---------------------------------------------------------------- imagefolder


def _small_tree(dst: Path, per_class: int = 6, val_name: str = "test") -> Path:
    for split, n in (("train", per_class), (val_name, 2)):
        for cls in sorted(os.listdir(CIFAR_JPG / "train"))[:4]:
            (dst / split / cls).mkdir(parents=True)
            src = CIFAR_JPG / ("train" if split == "train" else "test") / cls
            for name in sorted(os.listdir(src))[:n]:
                os.symlink(src / name, dst / split / cls / name)
    return dst


@needs_tree
def test_imagefolder_in_memory_small_tree_and_cache(tmp_path):
    root = _small_tree(tmp_path / "tree")
    cfg = {"name": "tiny", "source": "imagefolder", "root": str(root), "in_memory": True,
           "num_workers": 0, "cache_dir": str(tmp_path / "cache")}
    b = build_data(cfg, batch_size=8, eval_batch_size=8)
    assert (b.num_train, b.num_val, b.num_classes, b.image_size) == (24, 8, 4, 32)
    assert b.classes == sorted(os.listdir(CIFAR_JPG / "train"))[:4]
    raw = build_data({**cfg, "mean": [0, 0, 0], "std": [1 / 255] * 3, "augment": "none"},
                     batch_size=8, eval_batch_size=8)
    x, y, idx = next(iter(raw.val))
    from torchvision.io import decode_jpeg, read_file

    first = decode_jpeg(read_file(str(root / "test" / b.classes[0] / "0000.jpg")))
    assert torch.equal(x[0], first.float()) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(list((tmp_path / "cache").glob("tiny-*.pt"))) == 2  # train and test cached
    again = build_data({**cfg, "mean": [0, 0, 0], "std": [1 / 255] * 3, "augment": "none"},
                       batch_size=8, eval_batch_size=8)
    assert torch.equal(next(iter(again.val))[0], x)


@needs_tree
def test_imagefolder_streaming_reads_real_tree():
    cfg = {"name": "cifar10_jpg", "source": "imagefolder", "root": str(CIFAR_JPG),
           "in_memory": False, "image_size": 32, "num_workers": 0,
           "mean": [0.485, 0.477, 0.439], "std": [0.246, 0.244, 0.260]}
    b = build_data(cfg, batch_size=16, eval_batch_size=16, seed=1)
    assert (b.num_train, b.num_val, b.num_classes) == (50000, 10000, 10)
    b.train.set_epoch(2)
    x, y, idx = next(iter(b.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and len(set(idx.tolist())) == 16
    assert torch.equal(y, b.train_labels[idx]) and -3 < x.mean() < 3
    b.train.set_epoch(2)
    x2, _, idx2 = next(iter(b.train))
    assert torch.equal(idx2, idx) and torch.equal(x2, x)
    xv, yv, iv = next(iter(b.val))
    assert iv.tolist() == list(range(16)) and (yv == 0).all()


@needs_tree
def test_streaming_same_batches_with_workers(tmp_path):
    root = _small_tree(tmp_path / "tree", per_class=8, val_name="val")
    cfg = {"name": "tiny", "source": "imagefolder", "root": str(root), "in_memory": False,
           "image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "augment": "crop_flip"}
    batches = []
    for nw in (0, 2):
        loader = build_data({**cfg, "num_workers": nw}, batch_size=8, eval_batch_size=8).train
        batches.append(_epoch(loader, 5))
    for (xa, ya, ia), (xb, yb, ib) in zip(*batches, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)


# ---------------------------------------------------------------- imagefolder cache, bad images


def _pil_tree(dst: Path, classes: int = 3, train: int = 8, val: int = 3, size: int = 12) -> Path:
    """A small ImageFolder tree of solid-colour JPEGs and PNGs made with PIL (no shared data)."""
    from PIL import Image

    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = dst / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                colour = (40 * c + 3 * i, 255 - 30 * c, 7 * i)
                ext = "png" if i % 4 == 3 else "jpg"
                Image.new("RGB", (size, size), colour).save(d / f"{i:03d}.{ext}")
    return dst


def _if_cfg(root: Path, cache: Path, **kw) -> dict:
    return {"name": "tiny", "source": "imagefolder", "root": str(root), "in_memory": True,
            "num_workers": 0, "cache_dir": str(cache), "mean": [0, 0, 0], "std": [1 / 255] * 3,
            "augment": "none", **kw}


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts calls of imagefolder.decode_split (one per split that is really decoded)."""
    from kdsweep.data import imagefolder

    calls: list[str] = []
    real = imagefolder.decode_split

    def counting(base, files, *a, **kw):
        calls.append(Path(base).name)
        return real(base, files, *a, **kw)

    monkeypatch.setattr(imagefolder, "decode_split", counting)
    return calls


def _all_val(b):
    return torch.cat([x for x, _, _ in b.val])


def test_imagefolder_cache_reused_then_invalidated(tmp_path, count_decodes, caplog):
    import logging

    root, cache = _pil_tree(tmp_path / "tree"), tmp_path / "cache"
    cfg = _if_cfg(root, cache)
    with caplog.at_level(logging.INFO, logger="kdsweep.data.imagefolder"):
        first = build_data(cfg, batch_size=4, eval_batch_size=4)
    assert count_decodes == ["train", "val"] and (first.num_train, first.num_val) == (24, 9)
    assert any("decoded 24 images" in r.getMessage() and " s (" in r.getMessage()
               for r in caplog.records)  # the final line says how long decoding took
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and all(f.startswith("tiny-") and f.endswith(".pt") for f in files)

    again = build_data(cfg, batch_size=4, eval_batch_size=4)
    assert count_decodes == ["train", "val"]  # both splits came from the cache
    assert torch.equal(_all_val(again), _all_val(first))

    # touching one file (new mtime) invalidates that split only; the stale cache file is removed
    f = root / "val" / "class1" / "000.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    build_data(cfg, batch_size=4, eval_batch_size=4)
    assert count_decodes == ["train", "val", "val"]
    assert len(list(cache.iterdir())) == 2

    # adding an image invalidates too, and the new image is in the data
    from PIL import Image

    Image.new("RGB", (12, 12), (1, 2, 3)).save(root / "train" / "class0" / "zzz.jpg")
    b = build_data(cfg, batch_size=4, eval_batch_size=4)
    assert count_decodes[-1] == "train" and b.num_train == 25
    assert len(list(cache.iterdir())) == 2


def test_imagefolder_truncated_cache_is_rebuilt(tmp_path, count_decodes):
    root, cache = _pil_tree(tmp_path / "tree"), tmp_path / "cache"
    cfg = _if_cfg(root, cache)
    ref = _all_val(build_data(cfg, batch_size=4, eval_batch_size=4))
    val_cache = next(cache.glob("tiny-val-*.pt"))
    data = val_cache.read_bytes()
    val_cache.write_bytes(data[: len(data) // 2])  # a half-written file (e.g. copied while killed)
    with pytest.warns(UserWarning, match="unreadable"):
        b = build_data(cfg, batch_size=4, eval_batch_size=4)
    assert count_decodes == ["train", "val", "val"] and torch.equal(_all_val(b), ref)
    assert val_cache.stat().st_size == len(data)  # rewritten whole
    build_data(cfg, batch_size=4, eval_batch_size=4)
    assert count_decodes == ["train", "val", "val"]  # and read from the cache again
    assert not list(cache.glob("*.tmp"))


def test_imagefolder_unwritable_cache_dir_degrades_to_no_cache(tmp_path, count_decodes):
    root = _pil_tree(tmp_path / "tree")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    cfg = _if_cfg(root, blocker / "cache")
    with pytest.warns(UserWarning, match="could not write the decoded-image cache"):
        b = build_data(cfg, batch_size=4, eval_batch_size=4)
    assert b.num_train == 24 and count_decodes == ["train", "val"]
    if os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.warns(UserWarning, match="continuing without a cache"):
                build_data(_if_cfg(root, ro), batch_size=4, eval_batch_size=4)
        finally:
            ro.chmod(0o700)
        assert not list(ro.iterdir())
    off = build_data({**cfg, "cache": False}, batch_size=4, eval_batch_size=4)
    assert off.num_train == 24


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_an_image"])
def test_imagefolder_bad_image_is_one_line_error_naming_it(tmp_path, kind):
    root = _pil_tree(tmp_path / "tree")
    bad = root / "train" / "class2" / "005.jpg"
    good = bad.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": good[: len(good) // 2],
                     "not_an_image": b"<html>not found</html>"}[kind])
    with pytest.raises(DataError) as err:
        build_data(_if_cfg(root, tmp_path / "cache"), batch_size=4, eval_batch_size=4)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg and "skip_bad_images=true" in msg, msg
    assert "Traceback" not in msg and "PIL" not in msg


def test_imagefolder_bad_image_error_with_workers_is_one_line(tmp_path):
    root = _pil_tree(tmp_path / "tree")
    bad = root / "val" / "class0" / "001.jpg"
    bad.write_bytes(b"")
    with pytest.raises(DataError) as err:
        build_data(_if_cfg(root, tmp_path / "cache", num_workers=2), batch_size=4,
                   eval_batch_size=4)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_imagefolder_skip_bad_images(tmp_path, count_decodes):
    root = _pil_tree(tmp_path / "tree")
    (root / "train" / "class1" / "002.jpg").write_bytes(b"")
    (root / "val" / "class2" / "000.jpg").write_bytes(b"\xff\xd8garbage")
    cfg = _if_cfg(root, tmp_path / "cache", skip_bad_images=True)
    with pytest.warns(UserWarning) as rec:
        b = build_data(cfg, batch_size=4, eval_batch_size=4)
    msgs = [str(w.message) for w in rec]
    assert any("skipping 1 unreadable image" in m and "class1/002.jpg: empty file" in m
               for m in msgs), msgs
    assert any("class2/000.jpg" in m for m in msgs), msgs
    assert (b.num_train, b.num_val) == (23, 8)
    assert torch.bincount(b.train_labels).tolist() == [8, 7, 8]
    y = torch.cat([y for _, y, _ in b.val])
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    # the cache remembers the bad files: same result without decoding, and the error without skip
    with pytest.warns(UserWarning) as rec:
        again = build_data(cfg, batch_size=4, eval_batch_size=4)
    assert sum("skipping" in str(w.message) for w in rec) == 2
    assert count_decodes == ["train", "val"] and torch.equal(_all_val(again), _all_val(b))
    with pytest.raises(DataError, match="class1/002.jpg: empty file"):
        build_data({**cfg, "skip_bad_images": False}, batch_size=4, eval_batch_size=4)
    with pytest.raises(ConfigError, match="skip_bad_images"):
        build_data({**cfg, "skip_bad_images": "yes"}, batch_size=4, eval_batch_size=4)


def test_streaming_bad_image_is_one_line_error(tmp_path):
    root = _pil_tree(tmp_path / "tree")
    bad = root / "val" / "class0" / "000.jpg"
    bad.write_bytes(b"")
    cfg = {"name": "tiny", "source": "imagefolder", "root": str(root), "in_memory": False,
           "image_size": 12, "mean": [0.5] * 3, "std": [0.25] * 3, "num_workers": 2}
    b = build_data(cfg, batch_size=4, eval_batch_size=4)
    with pytest.raises(DataError) as err:
        list(b.val)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- errors and presets


def test_cifar10_offline_error_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError) as err:
        build_data({"name": "cifar10", "root": str(tmp_path)}, batch_size=64, eval_batch_size=64)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path) in msg and "download=true" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("root", ["does/not/exist", "."])
def test_bad_imagefolder_root(tmp_path, root):
    with pytest.raises(DataError, match="expected ROOT/train/<class>") as err:
        build_data({"name": "imagefolder", "root": str(tmp_path / root)}, batch_size=4,
                   eval_batch_size=4)
    assert str(tmp_path) in str(err.value)


def test_batch_size_larger_than_data_set():
    with pytest.raises(ConfigError, match=r"schedule\.batch_size=6000 .* 5000"):
        build_data({"name": "embedded"}, batch_size=6000, eval_batch_size=64)


@pytest.mark.parametrize("bad", [{"augment": "mixup"}, {"name": "embeded"}, {"colour": 1},
                                 {"num_classes": 100}, {"image_size": 64}])
def test_bad_dataset_config(bad):
    with pytest.raises(ConfigError):
        build_data({"name": "embedded", **bad}, batch_size=64, eval_batch_size=64)


def test_every_preset_parses(tmp_path):
    from hydra import compose, initialize_config_dir

    shutil.copytree(REPO / "conf" / "dataset", tmp_path / "dataset")
    (tmp_path / "config.yaml").write_text("defaults:\n  - dataset: embedded\n  - _self_\n")
    names = sorted(p.stem for p in (tmp_path / "dataset").glob("*.yaml"))
    assert {"embedded", "cifar10", "cifar100", "imagefolder", "cinic10", "mini_imagenet",
            "imagenet", "cifar10_jpg"} <= set(names)
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        for name in names:
            c = parse_config(compose(config_name="config", overrides=[f"dataset={name}"]).dataset)
            assert c["name"] == name
