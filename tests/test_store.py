"""The teacher-output store: a trial that reads it is bit for bit the trial with a live teacher;
every part of the key is a miss when it changes; fused and split cohorts; partial epochs; top-k."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_cohort import TINY, history, weights

from kdsweep.data.loaders import TensorLoader
from kdsweep.models import create_model
from kdsweep.run import Job, run_cohort
from kdsweep.store import Entry, digest_of, entries
from kdsweep.store.stream import dense, key_parts, sparse

STORE_LOG = "kdsweep.engine.cohort"


def _base(teacher: str, tmp_path: Path, store: Path, uri: str) -> list[str]:
    return [*TINY, "teacher=resnet14", "student=resnet8", f"teacher.checkpoint={teacher}",
            f"teacher.store={store}", f"tracking.uri={uri}"]


def _run(compose, tmp_path, base, members, tag):
    jobs = [Job(compose([*base, *m]), tmp_path / f"{tag}{i}", m) for i, m in enumerate(members)]
    return run_cohort(jobs)


def _same(uri_a, a, uri_b, b):
    ca, cb = MlflowClient(uri_a), MlflowClient(uri_b)
    for ra, rb in zip(a, b, strict=True):
        ha, hb = history(ca, ra.run_id), history(cb, rb.run_id)
        assert ha and ha == hb  # == on floats: bit for bit
        wa, wb = weights(ra), weights(rb)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("members", [
    [["method=kd"], ["method=dkd"]],                       # logits
    [["method=rkd"], ["method=kd", "method.T=2"]],         # logits and the pooled embedding
], ids=["logits", "pooled"])
def test_a_warm_store_trial_equals_the_live_teacher_trial_bit_for_bit(
        compose, resnet14_teacher, tmp_path, monkeypatch, caplog, members):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    live_uri, cold_uri, warm_uri = (f"sqlite:///{tmp_path / n}.db" for n in ("l", "c", "w"))
    live = _run(compose, tmp_path, [*_base(resnet14_teacher, tmp_path, store, live_uri)[:-2],
                                    "teacher.store=off", f"tracking.uri={live_uri}"], members, "l")
    assert not store.exists()
    with caplog.at_level(logging.INFO, logger=STORE_LOG):
        cold = _run(compose, tmp_path, _base(resnet14_teacher, tmp_path, store, cold_uri),
                    members, "c")
    assert "teacher store: 0 batches read, 6 computed" in caplog.text  # 2 epochs x 3 batches
    [entry] = entries(store)
    assert entry.shards == 2 and entry.parts["stores"] == (
        "logits+pooled" if "method=rkd" in members[0] else "logits")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=STORE_LOG):
        warm = _run(compose, tmp_path, _base(resnet14_teacher, tmp_path, store, warm_uri),
                    members, "w")
    assert "teacher store: 6 batches read, 0 computed" in caplog.text
    _same(live_uri, live, cold_uri, cold)
    _same(live_uri, live, warm_uri, warm)


def test_feature_methods_and_views_run_the_live_teacher(compose, resnet14_teacher, tmp_path,
                                                        monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'm.db'}"
    with caplog.at_level(logging.INFO, logger="kdsweep.store.stream"):
        _run(compose, tmp_path, [*_base(resnet14_teacher, tmp_path, store, uri),
                                 "schedule.epochs=1"], [["method=kd"], ["method=at"]], "f")
    assert "not used (a method reads the teacher's feature maps)" in caplog.text
    assert not entries(store)


def test_a_longer_or_shorter_trial_reads_what_is_stored_and_stays_exact(
        compose, resnet14_teacher, tmp_path, monkeypatch, caplog):
    """Epochs name shards, not keys: a 3-epoch trial reads a 2-epoch trial's epochs and computes
    the third; a trial with fewer batches per epoch reads a prefix; one with more writes a fuller
    shard beside the partial one, which readers then prefer."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    uri = f"sqlite:///{tmp_path / 's.db'}"
    base = _base(resnet14_teacher, tmp_path, store, uri)
    _run(compose, tmp_path, base, [["method=kd"]], "a")  # 2 epochs x 3 batches
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=STORE_LOG):
        longer = _run(compose, tmp_path, [*base, "schedule.epochs=3",
                                          "train.limit_train_batches=4"], [["method=kd"]], "b")
    assert "teacher store: 6 batches read, 6 computed" in caplog.text  # 2x3 read; 2x1 + 1x4
    [e] = entries(store)
    names = sorted(p.name for p in e.path.glob("e*.pt"))
    assert names == ["e0000-c0000-n0004.pt", "e0001-c0000-n0004.pt", "e0002-c0000-n0004.pt"]
    live_uri = f"sqlite:///{tmp_path / 'live.db'}"
    live = _run(compose, tmp_path, [*base[:-2], "teacher.store=off", f"tracking.uri={live_uri}",
                                    "schedule.epochs=3", "train.limit_train_batches=4"],
                [["method=kd"]], "c")
    _same(uri, longer, live_uri, live)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=STORE_LOG):
        _run(compose, tmp_path, [*base, "train.limit_train_batches=2"], [["method=kd"]], "d")
    assert "teacher store: 4 batches read, 0 computed" in caplog.text


def test_a_cohort_split_by_the_memory_check_computes_the_teacher_once(
        compose, resnet14_teacher, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSWEEP_MEMORY_LIMIT", "180M")  # 2 resnet8 members at a time
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'split.db'}"
    base = [*_base(resnet14_teacher, tmp_path, store, uri), "train.fuse_memory=split",
            "schedule.epochs=1"]
    members = [[f"method.alpha={a}"] for a in (0.1, 0.3, 0.5, 0.7, 0.9)]
    with caplog.at_level(logging.INFO, logger=STORE_LOG):
        results = _run(compose, tmp_path, base, members, "p")
    assert [r.status for r in results] == ["done"] * 5
    lines = [r.getMessage() for r in caplog.records if "teacher store:" in r.getMessage()]
    assert len(lines) >= 2  # one line per part
    assert lines[0].startswith("teacher store: 0 batches read, 3 computed")
    assert all(line.startswith("teacher store: 3 batches read, 0 computed") for line in lines[1:])


# ---------------------------------------------------------------------------------- the key
def _data(seed=0, bs=16, augment="crop_flip", padding=4, images=None):
    g = torch.Generator().manual_seed(0)
    imgs = images if images is not None else torch.randint(0, 256, (40, 3, 8, 8),
                                                             dtype=torch.uint8, generator=g)
    loader = TensorLoader(imgs, torch.arange(40) % 4, batch_size=bs, train=True, mean=[0.5] * 3,
                          std=[0.25] * 3, augment=augment, seed=seed, padding=padding)

    class Bundle:
        name, num_classes, num_train, train = "toy", 4, 40, loader
    return Bundle()


def _key(**change):
    torch.manual_seed(change.pop("teacher_seed", 0))
    teacher = create_model("resnet8", num_classes=4)
    data = change.pop("data", None) or _data()
    shard = change.pop("shard", None)
    if shard:
        data.train.shard(*shard)
    args = dict(teacher=teacher, teacher_arch="resnet8", data=data, precision="fp32",
                device=torch.device("cpu"), channels_last=True, compile=False, stores="logits",
                topk=None)
    args.update(change)
    return digest_of(key_parts(**args))


def test_every_part_of_the_key_changes_the_entry():
    base = _key()
    assert _key() == base  # the same inputs: the same entry
    g = torch.Generator().manual_seed(5)
    other_images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    changed = {
        "teacher weights": _key(teacher_seed=1),
        "teacher arch": _key(teacher_arch="resnet8_other"),
        "data content": _key(data=_data(images=other_images)),
        "transforms (augment)": _key(data=_data(augment="none")),
        "transforms (padding)": _key(data=_data(padding=2)),
        "data seed": _key(data=_data(seed=1)),
        "batch size": _key(data=_data(bs=8)),
        "process part (torchrun)": _key(shard=(0, 2)),
        "precision": _key(precision="bf16"),
        "device type": _key(device=torch.device("cuda")),
        "memory format": _key(channels_last=False),
        "compilation": _key(compile=True),
        "what is stored": _key(stores="logits+pooled"),
        "form": _key(topk=2),
    }
    assert all(v != base for v in changed.values()), [k for k, v in changed.items() if v == base]
    assert len(set(changed.values())) == len(changed)


def test_a_changed_part_is_a_miss_in_a_real_run(compose, resnet14_teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, uri = tmp_path / "store", f"sqlite:///{tmp_path / 'k.db'}"
    base = [*_base(resnet14_teacher, tmp_path, store, uri), "schedule.epochs=1"]
    for i, extra in enumerate([[], ["seed=1"], ["schedule.batch_size=32"],
                               ["train.channels_last=false"], ["dataset.augment=none"]]):
        _run(compose, tmp_path, [*base, *extra], [["method=kd"]], f"k{i}")
        assert len(entries(store)) == i + 1, extra


# ------------------------------------------------------------------------------ the shards
def test_top_k_keeps_the_top_classes_and_the_mass_exactly_at_t1():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 10, generator=g) * 3
    s = sparse(z, 3)
    back = dense(s["topk_values"], s["topk_index"], s["lse"], 10)
    p, q = torch.softmax(z, 1), torch.softmax(back, 1)
    top = z.topk(3, dim=1).indices
    torch.testing.assert_close(q.gather(1, top), p.gather(1, top), rtol=1e-5, atol=1e-6)
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    torch.testing.assert_close((q * rest).sum(1), (p * rest).sum(1), rtol=1e-5, atol=1e-6)
    assert torch.equal(back.topk(3, dim=1).indices.sort(1).values, top.sort(1).values)


def test_a_shard_round_trips_and_names_its_batches(tmp_path):
    e = Entry(tmp_path, "abc", {"x": 1}, chunk=4)
    e.open()
    payload = {"batches": 2, "sizes": torch.tensor([3, 2]), "logits": torch.randn(5, 4)}
    assert e.write(7, 1, payload)
    [(c, (n, path))] = e.shards(7).items()
    assert (c, n, path.name) == (1, 2, "e0007-c0001-n0002.pt")
    back = e.read(path)
    assert torch.equal(back["logits"], payload["logits"]) and back["batches"] == 2
    assert e.write(7, 1, {**payload, "batches": 3, "sizes": torch.tensor([3, 2, 1]),
                          "logits": torch.randn(6, 4)})
    assert [p.name for p in e.path.glob("e*.pt")] == ["e0007-c0001-n0003.pt"]  # the fuller one
    assert e.shards(6) == {}


def test_a_top_k_trial_sees_the_same_targets_whether_it_computes_or_reads(
        compose, resnet14_teacher, tmp_path, monkeypatch, caplog):
    """The top-k form is not exact, but it is one form: the trial that computes the teacher's
    outputs trains on their top-k reconstruction, as every later trial that reads them."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    runs = []
    for tag in ("a", "b", "off"):
        uri = f"sqlite:///{tmp_path / tag}.db"
        setting = "off" if tag == "off" else str(store)
        runs.append((uri, _run(compose, tmp_path, [
            *_base(resnet14_teacher, tmp_path, store, uri)[:-2], f"teacher.store={setting}",
            f"tracking.uri={uri}", "teacher.store_topk=2", "schedule.epochs=1"],
            [["method=kd"]], tag)))
    [e] = entries(store)
    assert e.parts["form"] == "top2"
    _same(runs[0][0], runs[0][1], runs[1][0], runs[1][1])  # computed == read, bit for bit
    ca, cb = MlflowClient(runs[0][0]), MlflowClient(runs[2][0])
    assert history(ca, runs[0][1][0].run_id)["loss/kd"] != history(cb, runs[2][1][0].run_id)["loss/kd"]
