"""Shared fixtures: real Hydra composition of conf/, a temp MLflow store per test."""

from __future__ import annotations

import os
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("KDSWEEP_LOG_MODEL", "false")  # seconds per run; tests/test_run.py checks it
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
if "KDSWEEP_TEACHER_STORE" not in os.environ:  # tests never fill the user's cache
    import atexit
    import shutil
    import tempfile

    _store = tempfile.mkdtemp(prefix="kdsweep-teacher-store-")
    os.environ["KDSWEEP_TEACHER_STORE"] = _store
    atexit.register(shutil.rmtree, _store, ignore_errors=True)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One OpenMP thread per pytest-xdist worker (and per process it starts): workers x threads
    # must not exceed the cores, or spin-waiting OpenMP threads slow everything ~10x.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10-jpg"


@pytest.fixture
def compose():
    """compose(overrides) -> the composed DictConfig, exactly as run.py would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from kdsweep.config import register_configs

    register_configs()

    def _compose(overrides: list[str] | None = None, return_hydra_config: bool = False):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=overrides or [],
                                 return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store in a temp launch directory (the test runs from there)."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    # The env var alone loses to a URI an earlier test set with mlflow.set_tracking_uri().
    mlflow.set_tracking_uri(uri)
    yield uri

    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def teacher(tmp_path: Path) -> str:
    """A resnet8 teacher checkpoint (random weights): distillation runs without training one."""
    from kdsweep.engine import save_checkpoint
    from kdsweep.models import create_model

    path = tmp_path / "teacher.pt"
    save_checkpoint(path, {"arch": "resnet8", "num_classes": 10,
                           "model": create_model("resnet8", num_classes=10).state_dict()})
    return str(path)


@pytest.fixture
def resnet14_teacher(tmp_path: Path) -> str:
    """A resnet14 teacher checkpoint (random weights, seed 1): cohorts of resnet8 students."""
    import torch

    from kdsweep.engine import save_checkpoint
    from kdsweep.models import create_model

    torch.manual_seed(1)
    path = tmp_path / "resnet14.pt"
    save_checkpoint(path, {"arch": "resnet14", "num_classes": 10,
                           "model": create_model("resnet14", num_classes=10).state_dict()})
    return str(path)


# ------------------------------------------------------------------ range probes (test_ranges.py)
PROBES = {"neg": "-1", "zero": "0", "huge": "1000000000000", "inf": "inf", "nan": "nan"}


def numeric_keys(schema: type, prefix: str = "") -> list[tuple[str, bool]]:
    """(key, is_list) of every int/float option of ``schema``, nested schemas included."""
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, bool]] = []
    for f in fields(schema):
        sub = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(sub):
            out += numeric_keys(type(sub), f"{prefix}{f.name}.")
            continue
        t = hints[f.name]
        args = typing.get_args(t) or (t,)
        is_list = typing.get_origin(t) is list
        if is_list:
            args = typing.get_args(t)
        if any(a in (int, float) for a in args):
            out.append((f"{prefix}{f.name}", is_list))
    return out


def extension_keys(key: str) -> bool:
    """Whether ``key`` is an option of a config node an extension adds (kdsweep/extensions.py)."""
    from kdsweep import extensions

    return any(key == n or key.startswith(f"{n}.") for n in extensions.nodes())


def probe_range(compose, key: str, is_list: bool, accepts: set[str], base: list[str] = ()) -> None:
    """Each of :data:`PROBES` as ``key``'s value is refused in one line naming the key (at
    composition or by the checks before any work), unless it is in ``accepts``."""
    from omegaconf import OmegaConf

    from kdsweep.errors import KDSweepError
    from kdsweep.run.job import check

    for probe, text in PROBES.items():
        override = f"{key}=[{text}]" if is_list else f"{key}={text}"
        try:
            cfg = compose([*base, override])
        except Exception as e:  # Hydra refuses the type (an int option given inf or nan)
            assert probe not in accepts, (override, e)
            continue
        plain = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg).items()})
        try:
            check(plain, [*base, override], reach=False)
        except KDSweepError as e:
            message = str(e)
            assert probe not in accepts, (override, message)
            assert "\n" not in message and key.rsplit(".", 1)[-1] in message, (override, message)
        else:
            assert probe in accepts, f"{override} was accepted"
