"""GPU checks, skipped without CUDA. On a machine with a GPU, one command verifies it:

    pytest -n0 tests/test_cuda.py -v

- the default job (``python run.py``) picks the GPU by itself (``device=auto``) with bf16 autocast
  where the GPU supports it, and is tracked like any run;
- a fused cohort on the GPU gives each member what its solo run gives, within noise (bf16 and
  cuDNN's kernel choice make GPU runs equal within tolerance, not bit for bit), with the members
  stepped one by one and stacked (``train.horizontal=true``);
- bf16 and fp32 both learn, to accuracies within noise of each other;
- a torchrun DDP run with NCCL on two GPUs records one run (skipped with fewer GPUs).

The CPU suite covers the same code paths on the CPU (test_cohort, test_distributed with gloo);
this file is what a lent GPU machine runs. Timings belong in benchmarks/, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsweep.engine import DONE
from kdsweep.run import Job, run, run_cohort

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["schedule.epochs=2", "train.limit_train_batches=20", "train.limit_val_batches=2",
         "schedule.eval_batch_size=500", "train.progress=false"]


def _bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _env(uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_default_job_runs_on_the_gpu(tmp_path, mlflow_uri):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), "schedule.epochs=2",
                        "train.progress=false"], cwd=tmp_path, env=_env(mlflow_uri),
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = MlflowClient(mlflow_uri).search_runs(["1"])
    assert {r.data.tags["method"] for r in runs} == {"ce", "kd"}  # the teacher, then the student
    for r in runs:
        assert r.info.status == "FINISHED"
        assert "cuda" in r.data.tags["device"].lower(), r.data.tags["device"]
        assert r.data.tags["precision"] == ("bf16" if _bf16() else "fp16")
        assert r.data.metrics["best_val_acc"] > 15.0  # learned: chance is 10 %


@pytest.mark.parametrize("horizontal", [False, True])
def test_fused_members_match_their_solo_runs_on_the_gpu(compose, mlflow_uri, tmp_path,
                                                        resnet14_teacher, horizontal):
    alphas = (0.2, 0.9)
    cfgs = [compose(["method=kd", "teacher=resnet14", f"teacher.checkpoint={resnet14_teacher}",
                     "student=resnet8", "device=cuda", f"method.alpha={a}", *SHORT])
            for a in alphas]
    solo = [run(c, output_dir=tmp_path / f"solo{i}") for i, c in enumerate(cfgs)]
    for c in cfgs:
        c.train.horizontal = horizontal
    fused = run_cohort([Job(c, tmp_path / f"fused{i}") for i, c in enumerate(cfgs)])
    client = MlflowClient(mlflow_uri)
    for s, f in zip(solo, fused, strict=True):
        assert s.status == f.status == DONE
        assert abs(s.final_val_acc - f.final_val_acc) <= 3.0, (s.final_val_acc, f.final_val_acc)
        ls = [m.value for m in client.get_metric_history(s.run_id, "loss/train")]
        lf = [m.value for m in client.get_metric_history(f.run_id, "loss/train")]
        assert ls == pytest.approx(lf, rel=0.05)


def test_bf16_and_fp32_both_learn_within_noise(compose, mlflow_uri, tmp_path):
    if not _bf16():
        pytest.skip("this GPU has no bf16")
    acc = {}
    for precision in ("fp32", "bf16"):
        cfg = compose(["method=ce", "student=resnet8", "device=cuda", f"precision={precision}",
                       "seed=0", *SHORT])
        res = run(cfg, output_dir=tmp_path / precision)
        tags = MlflowClient(mlflow_uri).get_run(res.run_id).data.tags
        assert res.status == DONE and tags["precision"] == precision
        acc[precision] = res.final_val_acc
    assert min(acc.values()) > 15.0, acc
    assert abs(acc["bf16"] - acc["fp32"]) <= 5.0, acc


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ddp_with_nccl_records_one_run(tmp_path, mlflow_uri, resnet14_teacher):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "run.py"), "method=kd", "teacher=resnet14", f"teacher.checkpoint={resnet14_teacher}",
           "student=resnet8", *SHORT, f"hydra.run.dir={tmp_path / 'ddp'}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(mlflow_uri), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [r for r in MlflowClient(mlflow_uri).search_runs(["1"])
            if r.data.tags.get("method") == "kd"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 records, rank 1 not
