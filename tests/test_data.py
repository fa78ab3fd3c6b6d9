"""Tests of kdsweep.data: embedded set, tensor loader, data sources and their errors."""

from __future__ import annotations

import torch

from kdsweep.data import EMBEDDED_PATH, build_data, load_embedded


def test_embedded_loads_balanced():
    assert EMBEDDED_PATH.stat().st_size < 8 * 1024 * 1024
    d = load_embedded()
    assert d.train_x.shape == (5000, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (1000, 3, 32, 32) and d.test_x.dtype == torch.uint8
    assert len(d.classes) == 10
    assert torch.bincount(d.train_y).tolist() == [500] * 10
    assert torch.bincount(d.test_y).tolist() == [100] * 10


def test_build_data_embedded():
    b = build_data({"name": "embedded"}, batch_size=128, eval_batch_size=256)
    assert (b.num_train, b.num_val, b.num_classes, b.image_size) == (5000, 1000, 10, 32)
    x, y, idx = next(iter(b.train))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and idx.dtype == torch.int64
