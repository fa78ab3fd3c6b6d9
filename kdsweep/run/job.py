"""What one Hydra job runs: a single run, or a fused sweep job training several trials at once.

A fused job (``sweep.members_file`` set by the kdsweep Optuna sweeper) reads the composed configs
of its member trials from that file, trains them as one cohort, and returns one outcome per trial
number: the objective, or ``{"pruned": epoch}``, or ``{"error": reason}``. A single job returns
its objective (best validation accuracy, %).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdsweep.engine import DONE, PRUNED
from kdsweep.errors import Pruned
from kdsweep.run.hooks import driver
from kdsweep.run.pipeline import run, run_cohort
from kdsweep.run.plan import Job
from kdsweep.run.preflight import check_run
from kdsweep.tracking import check_reachable, mask_files


def run_job(cfg: DictConfig, *, output_dir: str | Path, overrides: list[str]) -> float | dict:
    mask_files(Path(output_dir, ".hydra").glob("*.yaml"))  # Hydra wrote the command line there
    members_file = cfg.get("sweep", {}).get("members_file") if cfg.get("sweep") else None
    if members_file:
        return run_fused(Path(members_file), Path(output_dir), cfg)
    try:
        ext = driver(cfg)  # an extension's job (experiment=reducenet: three stages)
        if ext is not None:
            return ext.run_job(cfg, output_dir=output_dir, overrides=overrides,
                               label=_label(cfg, overrides)).best_val_acc
        return run(cfg, output_dir=output_dir, overrides=overrides,
                   label=_label(cfg, overrides)).best_val_acc
    except Pruned as e:
        import optuna  # the sweeper records a trial that raised TrialPruned as PRUNED

        raise optuna.TrialPruned(str(e)) from None


def check(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] = (),
          *, reach: bool = True) -> None:
    """Everything a job would refuse before its work: the checks of each run it makes
    (:func:`kdsweep.run.preflight.check_run`; an extension's job driver checks its own runs,
    e.g. each of ReduceNet's stages) and,
    with ``reach``, that a tracking server accepts connections. Raises a
    :class:`~kdsweep.errors.KDSweepError` (one line)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    ext = driver(cfg)
    if ext is not None:
        ext.check_job(cfg, overrides)
    else:
        check_run(cfg)
    if reach:
        check_reachable(str(cfg.tracking.uri))


#: The keys a sweep of Hydra's own sweepers varies (set by kdsweep.run.hydra_callback).
SWEPT_ENV = "KDSWEEP_SWEPT_KEYS"


def _label(cfg: DictConfig, overrides: Sequence[str] = ()) -> str | None:
    """What the run varies, for its name: the kdsweep sweeper's label, or, in a sweep of Hydra's
    own sweepers, this job's values of the swept keys (``alpha=0.4 T=8``)."""
    sweep = cfg.get("sweep") or {}
    if sweep.get("label"):
        return str(sweep["label"])
    n = sweep.get("trial_number")
    if n is not None:
        return f"t{int(n):02d}"
    swept = [k for k in os.environ.get(SWEPT_ENV, "").split(",") if k]
    values = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    point = " ".join(f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in swept if k in values)
    return point or None


def run_fused(members_file: Path, output_dir: Path, job_cfg: DictConfig) -> dict[int, Any]:
    """Train the member trials listed in ``members_file`` as one cohort."""
    spec = json.loads(members_file.read_text())
    jobs = []
    for m in spec["members"]:
        # The member's own composed config; where to record (which may hold credentials, masked
        # in the file) comes from this job's config.
        # The job's own sweep node names its first member: each member gets its own number and
        # label (they are part of the member's record: its tags and config.yaml).
        label = m.get("label") or f"t{int(m['number']):02d}"
        cfg = OmegaConf.create({**m["config"],
                                "tracking": OmegaConf.to_container(job_cfg.tracking),
                                "sweep": {**OmegaConf.to_container(job_cfg.sweep),
                                          "trial_number": int(m["number"]), "label": label,
                                          "members_file": None}})
        jobs.append(Job(cfg, output_dir.parent / str(m["number"]), list(m["overrides"]),
                        label=label))
    ext = driver(jobs[0].cfg)  # an extension's trials (ReduceNet's: their stages)
    results = ext.run_cohort(jobs) if ext is not None else run_cohort(jobs)
    out: dict[int, Any] = {}
    for m, r in zip(spec["members"], results, strict=True):
        if r.status == DONE:
            out[int(m["number"])] = r.best_val_acc
        elif r.status == PRUNED:
            out[int(m["number"])] = {"pruned": getattr(r.error, "epoch", None)}
        else:
            out[int(m["number"])] = {"error": f"{type(r.error).__name__}: {r.error}"}
    return out
