"""What a finished run adds to MLflow beyond metrics: its data set as a dataset input, and its
best checkpoint as an MLflow *logged model* (with an input example and a signature), so that
the UI's "Logged models" page and the model registry work and ``mlflow.pytorch.load_model``
gives the student back.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from kdsweep.data import DataBundle
from kdsweep.engine import load_checkpoint, load_model_weights
from kdsweep.models import create_model
from kdsweep.tracking import RunRecorder, retry

log = logging.getLogger(__name__)


def data_digest(data: DataBundle) -> str:
    """A short fingerprint of the data set as the run saw it (name, sizes, classes, stats)."""
    blob = "|".join(map(str, (data.name, data.num_train, data.num_val, data.num_classes,
                              data.image_size, data.classes, data.mean, data.std)))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def log_dataset(rec: RunRecorder, data: DataBundle, source: str) -> None:
    """The training set as an MLflow dataset input (name, digest, source) of the run."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    try:
        with warnings.catch_warnings():  # MLflow warns about its own resolver's future
            warnings.simplefilter("ignore")
            src = resolve_dataset_source(source)
        ds = MetaDataset(src, name=data.name, digest=data_digest(data))
        retry(rec.client.log_inputs, rec.run_id, datasets=[DatasetInput(
            ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])])
    except Exception as e:  # a missing dataset input must not fail the run
        log.warning("could not log the dataset input: %s", e)


def log_best_model(rec: RunRecorder, uri: str, checkpoint: Path, data: DataBundle) -> None:
    """``best.pt`` as the run's logged model ``model`` (load: ``mlflow.pytorch.load_model``)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    ckpt = load_checkpoint(checkpoint)
    model = create_model(str(ckpt["arch"]), num_classes=int(ckpt["num_classes"]))
    load_model_weights(model, ckpt, arch=str(ckpt["arch"]), num_classes=int(ckpt["num_classes"]),
                       source=str(checkpoint))
    model.eval()
    x = next(iter(data.val))[0][:2].float().cpu().contiguous()
    with torch.no_grad():
        y = model(x)
    example = x.numpy()
    signature = infer_signature(example, y.numpy())
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=rec.run_id):
        mlflow.pytorch.log_model(model, name="model", input_example=example, signature=signature,
                                 pip_requirements=_requirements())


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference would import and run the model in a subprocess."""
    import importlib.metadata

    reqs = []
    for pkg in ("torch", "torchvision", "kdsweep"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            reqs.append(f"{pkg}=={importlib.metadata.version(pkg).split('+')[0]}")
    return reqs


def dataset_source(cfg: Any) -> str:
    """Where the data set came from, as a URI or path (for the dataset input)."""
    root = cfg.get("root")
    if root:
        return str(Path(str(root)).expanduser())
    from kdsweep.data import get_source

    location = get_source(str(cfg.get("source") or cfg.get("name"))).location
    return location or str(Path("data").resolve())
