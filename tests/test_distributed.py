"""Data-parallel runs (torchrun): two CPU processes with gloo reach what one process reaches with
the same global batch, within BatchNorm's per-process statistics; only rank 0 records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsweep.data import build_data
from kdsweep.engine import load_checkpoint, save_checkpoint
from kdsweep.models import create_model

pytestmark = pytest.mark.slow  # end-to-end runs in subprocesses: the full tier (pytest -q)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["method=kd", "teacher=resnet14", "student=resnet8", "schedule.epochs=2",
        "train.limit_train_batches=3", "train.limit_val_batches=1", "schedule.eval_batch_size=200",
        "train.progress=false", "cpu_threads=1", "precision=fp32"]


def test_shards_of_a_batch_are_the_batch():
    """Each process gets a contiguous part of every global batch: same order, same crops."""
    cfg = {"name": "embedded"}
    whole = build_data(cfg, batch_size=64, eval_batch_size=100)
    parts = [build_data(cfg, batch_size=64, eval_batch_size=100) for _ in range(2)]
    for r, d in enumerate(parts):
        d.train.shard(r, 2)
    for loader in (whole.train, *(d.train for d in parts)):
        loader.set_epoch(3)
    (xw, yw, iw), = [b for _, b in zip(range(1), whole.train, strict=False)]
    halves = [next(iter(d.train)) for d in parts]
    assert torch.equal(torch.cat([h[0] for h in halves]), xw)
    assert torch.equal(torch.cat([h[2] for h in halves]), iw)
    assert len(parts[0].train) == len(whole.train)


def run(tmp_path: Path, name: str, launcher: list[str]) -> tuple[MlflowClient, list, str]:
    uri = f"sqlite:///{tmp_path / name}.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*launcher, str(ROOT / "run.py"), *ARGS, f"teacher.checkpoint={tmp_path}/t.pt",
                        f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/{name}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    client = MlflowClient(uri)
    kd = [r for r in client.search_runs(["1"]) if r.data.tags.get("method") == "kd"]
    return client, kd, p.stdout + p.stderr


def losses(client: MlflowClient, run) -> list[float]:
    hist = client.get_metric_history(run.info.run_id, "loss/train")
    return [m.value for m in sorted(hist, key=lambda m: m.step)]


def test_two_gloo_processes_match_one_process(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "t.pt", {"arch": "resnet14", "num_classes": 10,
                                        "model": create_model("resnet14", num_classes=10).state_dict()})
    c1, single, _ = run(tmp_path, "single", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    c2, ddp, out = run(tmp_path, "ddp", torchrun)
    assert len(single) == 1 and len(ddp) == 1, "rank 1 must not record a run"
    assert out.count(" 1/2: loss ") == 1, out[-3000:]       # rank 0 alone prints the epoch line
    a, b = losses(c1, single[0]), losses(c2, ddp[0])
    assert len(a) == len(b) == 2
    assert a == pytest.approx(b, rel=0.02)  # BatchNorm sees 32 images per process, not 64
    wa = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["trainer"]["model"]
    wb = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["trainer"]["model"]
    diff = sum(float((wa[k] - wb[k]).norm() ** 2) for k in wa if wa[k].is_floating_point()) ** 0.5
    norm = sum(float(wa[k].norm() ** 2) for k in wa if wa[k].is_floating_point()) ** 0.5
    assert diff / norm < 0.02


@pytest.mark.parametrize("per_rank,global_batch", [(False, 64), (True, 128)])
def test_global_batch_with_and_without_batch_per_rank(compose, per_rank, global_batch):
    """schedule.batch_size is the global batch; with train.batch_per_rank each of the 2 processes
    takes that many, so the loader's (global) batch doubles; a process always gets 1/world of it."""
    from kdsweep.engine.distributed import DistEnv
    from kdsweep.run.pipeline import Runtime, _global_batch

    cfg = compose(["schedule.batch_size=64", f"train.batch_per_rank={str(per_rank).lower()}"])
    rt = Runtime(torch.device("cpu"), None, "", DistEnv(rank=1, world=2))
    assert _global_batch(cfg, rt) == global_batch


COHORT_SCRIPT = """
import sys
from hydra import compose, initialize_config_dir
from kdsweep.config import register_configs
from kdsweep.run import Job, run_cohort

root, base, members = sys.argv[1], sys.argv[2].split(), [m.split() for m in sys.argv[3:]]
register_configs()
with initialize_config_dir(config_dir=root + "/conf", version_base="1.3"):
    jobs = [Job(compose("config", overrides=[*base, *m]), f"out{i}", m)
            for i, m in enumerate(members)]
results = run_cohort(jobs)
assert all(r.status == "done" for r in results), [(r.status, r.error) for r in results]
"""


@pytest.mark.parametrize("members", [
    ["method=cc", "method=vid", "method=nst", "method=kdsvd", "method=reviewkd"],
    ["method=ab method.init_epochs=1", "method=ft method.init_epochs=1",
     "method=fsp method.init_epochs=1"],  # one pre-stage epoch, then the main schedule
    ["method=kd schedule.optimizer=dot"],
    ["method=dist", "method=wttm", "method=ctkd", "method=mlkd",
     "method=kd method.logit_stand=true method.T=2 method.kd_weight=9 schedule.optimizer=dot"],
], ids=["zoo", "prestage", "kd+dot", "logits"])
def test_the_newer_methods_train_under_torchrun(tmp_path, members):
    """RepDistiller's and mdistiller's later methods (and DOT) train with two gloo processes, as
    one fused cohort: each member one recorded run, every epoch logged, finite losses."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "t.pt", {"arch": "resnet14", "num_classes": 10,
                                        "model": create_model("resnet14", num_classes=10).state_dict()})
    uri = f"sqlite:///{tmp_path / 'ddp'}.db"
    base = [*ARGS[1:], "schedule.epochs=1", f"teacher.checkpoint={tmp_path}/t.pt",
            f"tracking.uri={uri}"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    (tmp_path / "cohort.py").write_text(COHORT_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    p = subprocess.run([*torchrun, str(tmp_path / "cohort.py"), str(ROOT), " ".join(base),
                        *members], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    client = MlflowClient(uri)
    for m in members:
        method = m.split()[0].split("=")[1]
        runs = [r for r in client.search_runs(["1"]) if r.data.tags.get("method") == method]
        assert len(runs) == 1 and runs[0].info.status == "FINISHED", (m, "rank 1 must not record")
        hist = losses(client, runs[0])
        epochs = 2 if "init_epochs=1" in m else 1
        assert len(hist) == epochs and all(torch.isfinite(torch.tensor(hist))), (m, hist)
