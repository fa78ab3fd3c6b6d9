"""The cohort engine: members trained together compute exactly what they compute alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsweep.engine import load_checkpoint
from kdsweep.models import create_model
from kdsweep.run import Job, run, run_cohort

TINY = ["schedule.epochs=2", "train.limit_train_batches=3", "train.limit_val_batches=1",
        "schedule.eval_batch_size=200", "train.progress=false", "precision=fp32"]
MEMBERS = [
    ["method=kd", "method.alpha=0.5", "method.T=2"],
    ["method=kd", "method.alpha=0.9", "method.T=8", "schedule.lr=0.1"],
    ["method=at", "student=resnet14"],                  # features, another student
    ["method=ce"],                                      # no teacher at all
    ["method=kd", "schedule.optimizer=dot"],            # DOT: two momenta, two backward passes
]
KEYS = ("loss/train", "acc/train", "loss/val", "acc/val", "opt/lr")


def history(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    metrics = client.get_run(run_id).data.metrics
    keys = [k for k in metrics if k in KEYS or k.startswith("loss/") and k not in ("loss/train", "loss/val")]
    return {k: [m.value for m in sorted(client.get_metric_history(run_id, k), key=lambda m: m.step)]
            for k in keys}


def weights(result) -> dict[str, torch.Tensor]:
    return load_checkpoint(result.checkpoint.parent / "last.pt")["trainer"]["model"]


#: The methods of RepDistiller's and mdistiller's zoo added later: without and with a pre-stage.
ZOO = [["method=cc"], ["method=vid"], ["method=nst"], ["method=kdsvd"], ["method=reviewkd"]]
# Trials that differ in main-stage weights only train their pre-stage once (the second ab and ft).
PRESTAGE = [["method=ab", "method.init_epochs=1"], ["method=ft", "method.init_epochs=1"],
            ["method=fsp", "method.init_epochs=1"],
            ["method=ab", "method.init_epochs=1", "method.kd_weight=1"],
            ["method=ft", "method.init_epochs=1", "method.feat_weight=100"]]


# The logit methods of 2022-2024 and logit standardization (a learned temperature included).
LOGITS = [["method=dist"], ["method=wttm"], ["method=ctkd"], ["method=ctkd", "method.mode=instance"],
          ["method=kd", "method.logit_stand=true", "method.T=2", "method.kd_weight=9"],
          ["method=dkd", "method.logit_stand=true", "method.T=2", "method.dkd_weight=9"],
          ["method=mlkd"], ["method=mlkd", "method.logit_stand=true", "method.T=2",
                            "method.kd_weight=9"],
          ["method=ctkd", "method.logit_stand=true", "method.kd_weight=9"]]


@pytest.mark.parametrize("MEMBERS", [
    MEMBERS,
    pytest.param(ZOO, marks=pytest.mark.slow),
    pytest.param(PRESTAGE, marks=pytest.mark.slow),
    pytest.param(LOGITS, marks=pytest.mark.slow),
], ids=["core", "zoo", "prestage", "logits"])
def test_members_match_their_solo_runs_bit_for_bit(
        compose, resnet14_teacher, tmp_path, monkeypatch, MEMBERS, caplog):
    base = [*TINY, "teacher=resnet14", "student=resnet8", f"teacher.checkpoint={resnet14_teacher}"]
    cfgs = [compose([*base, *m]) for m in MEMBERS]
    monkeypatch.chdir(tmp_path)
    solo_uri = f"sqlite:///{tmp_path / 'solo.db'}"
    solo = []
    for i, m in enumerate(MEMBERS):
        cfg = compose([*base, *m, f"tracking.uri={solo_uri}"])
        solo.append(run(cfg, output_dir=tmp_path / f"solo{i}"))
    fused_uri = f"sqlite:///{tmp_path / 'fused.db'}"
    jobs = [Job(compose([*base, *m, f"tracking.uri={fused_uri}"]), tmp_path / f"fused{i}", m)
            for i, m in enumerate(MEMBERS)]
    with caplog.at_level("INFO", logger="kdsweep.engine.cohort"):
        fused = run_cohort(jobs)
    assert len(cfgs) == len(fused) and all(r.status == "done" for r in fused)
    if MEMBERS is PRESTAGE:
        assert "pre-stage: 3 of 5 runs train it" in caplog.text
    cs, cf = MlflowClient(solo_uri), MlflowClient(fused_uri)
    for s, f in zip(solo, fused, strict=True):
        hs, hf = history(cs, s.run_id), history(cf, f.run_id)
        assert hs.keys() == hf.keys() and hs  # loss terms included
        assert hs == hf  # bit for bit: == on floats
        assert s.best_val_acc == f.best_val_acc
        ws, wf = weights(s), weights(f)
        assert ws.keys() == wf.keys() and all(torch.equal(ws[k], wf[k]) for k in ws)
    sizes = {cf.get_run(f.run_id).data.params["cohort_size"] for f in fused}
    assert sizes == {str(len(MEMBERS))}


def test_a_diverging_member_leaves_and_the_others_finish(
        compose, resnet14_teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [*TINY, "teacher=resnet14", "student=resnet8", f"teacher.checkpoint={resnet14_teacher}",
            f"tracking.uri={uri}"]
    jobs = [Job(compose([*base, "method=kd"]), tmp_path / "a"),
            Job(compose([*base, "method=kd", "schedule.lr=1e30", "schedule.warmup_epochs=0"]),
                tmp_path / "b")]
    ok, bad = run_cohort(jobs)
    assert ok.status == "done" and bad.status == "diverged"
    assert "non-finite" in str(bad.error)
    client = MlflowClient(uri)
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    r = client.get_run(bad.run_id)
    assert r.info.status == "FAILED" and "non-finite" in r.data.tags["kdsweep.error"]


def test_memory_estimate_scales_with_the_batch():
    from kdsweep.engine import budget

    student = create_model("resnet8", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    small = budget.member_bytes(student, 0, "sgd", 64, student, x)
    large = budget.member_bytes(student, 0, "sgd", 128, student, x)
    weights = sum(p.numel() for p in student.parameters()) * 4 * 3
    assert weights < small < large and large - weights == pytest.approx(2 * (small - weights), rel=1e-6)
    assert budget.fit_count([5, 5, 5], 11) == 2 and budget.fit_count([50], 10) == 1


@pytest.mark.parametrize("policy", ["refuse", "split"])
def test_a_cohort_too_big_for_memory_is_refused_or_split(
        compose, resnet14_teacher, tmp_path, monkeypatch, policy, capsys):
    from kdsweep.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSWEEP_MEMORY_LIMIT", "180M")  # two resnet8 members (50 MiB each)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = [*TINY, "teacher=resnet14", "student=resnet8", f"teacher.checkpoint={resnet14_teacher}",
            f"tracking.uri={uri}", f"train.fuse_memory={policy}", "train.limit_train_batches=1",
            "schedule.epochs=1"]
    jobs = [Job(compose([*base, f"method.alpha={a}"]), tmp_path / str(i))
            for i, a in enumerate((0.1, 0.3, 0.5, 0.7, 0.9))]
    if policy == "refuse":
        with pytest.raises(ConfigError, match=r"a cohort of 5 members needs about .* at most \d fit"):
            run_cohort(jobs)
        assert not MlflowClient(uri).search_runs(["1"]) if (tmp_path / "mlflow.db").exists() else True
        return
    results = run_cohort(jobs)
    assert [r.status for r in results] == ["done"] * 5
    assert "do not fit in memory at once" in capsys.readouterr().out


def test_a_job_takes_its_output_dir_as_a_str_too(compose):
    """``run(output_dir=...)`` and ``Job`` accept a str or a Path alike (the Python API)."""
    job = Job(compose([]), "out/trial")
    assert isinstance(job.output_dir, Path) and job.output_dir / "checkpoints" == Path("out/trial/checkpoints")
