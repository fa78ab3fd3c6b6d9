"""The data-source registry is the one place a ``dataset.source`` is declared: the choices a refused
source lists are the registry's, a source registered anywhere is accepted by every check and built,
and the entry point names no source."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import kdsweep.data
from kdsweep.data import (
    build_data,
    check_dataset,
    list_sources,
    parse_config,
    register_source,
    sources,
)
from kdsweep.data.bundle import TensorSplits, tensor_bundle
from kdsweep.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "kdsweep" / "data"


def test_the_built_in_sources_are_registered():
    assert {"embedded", "cifar10", "cifar100", "imagefolder"} <= set(list_sources())


def test_a_refused_source_lists_exactly_the_registered_ones():
    with pytest.raises(ConfigError) as err:
        parse_config({"name": "embeded"})
    msg = str(err.value)
    assert msg.startswith("dataset.source='embeded' (from dataset.name when unset) is not one of ")
    listed, hint = msg.rsplit("is not one of ", 1)[1].split("; ")
    assert ast.literal_eval(listed) == list_sources()
    assert hint == "did you mean 'embedded'?" and "\n" not in msg


def test_every_module_of_the_package_is_imported_with_it():
    """So a source in a new file of kdsweep/data registers itself with no other edit."""
    importlib.import_module("kdsweep.data")
    names = {m.name for m in pkgutil.iter_modules(kdsweep.data.__path__)}
    assert {n for n in names if not n.startswith("_")} <= {
        m.removeprefix("kdsweep.data.") for m in sys.modules if m.startswith("kdsweep.data.")}


@pytest.mark.parametrize("module", ["build.py", "bundle.py", "sources.py"])
def test_the_entry_point_names_no_source(module):
    """No ``if source == ...``: build, its helpers and the registry hold no source's name."""
    tree = ast.parse((DATA / module).read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr)}
    named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and id(n) not in docstrings and n.value in list_sources()}
    assert not named, f"{module} names sources {sorted(named)}: look them up in the registry"


def test_each_source_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        register_source("embedded", check=lambda c: None)(lambda c, **kw: None)


@pytest.fixture
def toy(monkeypatch):
    """A source ``toy`` declared outside kdsweep/data, as a new source file would declare it."""
    monkeypatch.setattr(sources, "_SOURCES", dict(sources._SOURCES))  # removed after the test
    calls: list[str] = []

    def check_toy(c):
        calls.append("check")
        if c["root"] == "bad":
            raise DataError("toy: dataset.root=bad is not a toy tree")

    @register_source("toy", check=check_toy)
    def build_toy(c, **common):
        """Forty random 8x8 images of four classes."""
        calls.append("build")
        x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
        y = torch.arange(40) % 4
        splits = TensorSplits(x[:32], y[:32], x[32:], y[32:], list("abcd"))
        return tensor_bundle(c, splits, where="the toy set", **common)

    return calls


def test_a_registered_source_is_accepted_checked_and_built(toy):
    assert "toy" in list_sources()
    assert sources.get_source("toy").description == "Forty random 8x8 images of four classes."
    assert parse_config({"name": "toy"})["source"] == "toy"
    check_dataset({"name": "toy"})
    assert toy == ["check"]
    with pytest.raises(DataError, match="dataset.root=bad is not a toy tree"):
        check_dataset({"name": "toy", "root": "bad"})
    data = build_data({"name": "toy", "padding": 2}, batch_size=8, eval_batch_size=8)
    assert toy[-2:] == ["check", "build"], "build_data runs the source's checks first"
    assert (data.num_train, data.num_val, data.num_classes, data.image_size) == (32, 8, 4, 8)
    x, y, idx = next(iter(data.train))
    assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32
    with pytest.raises(ConfigError, match=r"is not one of \[.*'toy'"):
        parse_config({"name": "toy2"})


def test_the_run_checks_reach_a_registered_source(toy, tmp_path, monkeypatch):
    """``run.py``'s check before Hydra starts (and each sweep value's) goes through the registry."""
    from kdsweep.config.cli import check
    from kdsweep.run.job import check as preflight

    monkeypatch.chdir(tmp_path)
    conf = ROOT / "conf"
    toy_set = ["dataset.name=toy", "dataset.source=toy", "dataset.padding=2"]
    assert "dataset.root=bad is not a toy tree" in check([*toy_set, "dataset.root=bad"], conf,
                                                         preflight=preflight)
    assert check(toy_set, conf, preflight=preflight) is None
    assert toy == ["check", "check"]
    assert "is not one of" in check(["dataset.source=nope"], conf, preflight=preflight)


def test_the_recorded_dataset_location_comes_from_the_registry(tmp_path):
    from pathlib import Path

    from kdsweep.data import EMBEDDED_PATH
    from kdsweep.run.artifacts import dataset_source

    assert dataset_source({"source": "embedded"}) == str(EMBEDDED_PATH)
    assert dataset_source({"source": "cifar10"}) == str(Path("data").resolve())
    assert dataset_source({"source": "embedded", "root": str(tmp_path)}) == str(tmp_path)
