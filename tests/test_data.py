"""Tests of kdsweep.data: the embedded set, the tensor loader, data sources and their errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from kdsweep.data import EMBEDDED_PATH, TensorLoader, build_data, load_embedded, parse_config
from kdsweep.data.datasets import channel_stats
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
