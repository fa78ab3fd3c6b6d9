"""MLflow tracking: one MLflow run per kdsweep run, with everything needed to reproduce it.

Default store: ``sqlite:///mlflow.db`` in the launch directory; ``MLFLOW_TRACKING_URI`` (or
``tracking.uri=...``) overrides it, e.g. ``postgresql://user@host/db`` shared by several machines.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
T = TypeVar("T")

PACKAGES = ("kdsweep", "torch", "torchvision", "hydra-core", "omegaconf", "mlflow", "optuna", "numpy")


def retry(fn: Callable[..., T], *args: Any, attempts: int = 8, **kwargs: Any) -> T:
    """Call ``fn``, retrying with backoff while SQLite says "database is locked".

    MLflow already waits 20 s on a locked SQLite file; several parallel runs logging every epoch
    can still exceed that on a slow disk, and losing a run's metrics for it would be worse.
    """
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if "database is locked" not in str(e) or i == attempts - 1:
                raise
            delay = min(30.0, 0.5 * 2**i) * (0.5 + random.random())
            log.warning("MLflow store is locked; retrying in %.1f s (%d/%d)", delay, i + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


def setup(uri: str, experiment: str) -> str:
    """Point MLflow at ``uri`` and select (or create) ``experiment``; returns its id."""
    mlflow.set_tracking_uri(uri)
    return retry(mlflow.set_experiment, experiment).experiment_id


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    retry(mlflow.log_metrics, {k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    retry(mlflow.set_tags, dict(tags))


def mask_secrets(value: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@\s]+):[^@/\s]+@", r"\1:***@", value)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"method.alpha": "0.9", ...}`` (lists kept whole, as MLflow params)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = mask_secrets(str(value))
    return out


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    import torch  # the build string (+cu130, +cpu) and CUDA version matter for reproduction

    versions["torch"] = torch.__version__
    versions["cuda"] = str(torch.version.cuda)
    return versions


def log_params(params: Mapping[str, Any]) -> None:
    """Log params in batches (MLflow takes at most 100 per request)."""
    items = list(params.items())
    for i in range(0, len(items), 100):
        retry(mlflow.log_params, dict(items[i:i + 100]))


def find_best_run(experiment_id: str, filters: Mapping[str, str], metric: str) -> Run | None:
    """The finished run whose tags equal ``filters`` with the highest ``metric``, or None."""
    clauses = [f"tags.`{k}` = '{v}'" for k, v in filters.items()]
    clauses.append("attributes.status = 'FINISHED'")
    runs = MlflowClient().search_runs(
        [experiment_id], " and ".join(clauses), order_by=[f"metrics.`{metric}` DESC"], max_results=1
    )
    return runs[0] if runs else None


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store, bound to the loopback interface only."""
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 --workers 1"
