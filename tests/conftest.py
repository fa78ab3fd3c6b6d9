"""Shared fixtures: real Hydra composition of conf/, a temp MLflow store per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("KDSWEEP_LOG_MODEL", "false")  # seconds per run; tests/test_run.py checks it
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One OpenMP thread per pytest-xdist worker (and per process it starts): workers x threads
    # must not exceed the cores, or spin-waiting OpenMP threads slow everything ~10x.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
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
