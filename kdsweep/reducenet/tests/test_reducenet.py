"""ReduceNet: the block, LoRA fusion with LambdaReLU, and the three stages as one command."""

from __future__ import annotations

import re
import socket
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import numeric_keys, probe_range
from kdsweep.engine import load_checkpoint, load_model_weights
from kdsweep.errors import ConfigError
from kdsweep.models import FeatureTap, count_macs, count_parameters, create_model
from kdsweep.reducenet import stages
from kdsweep.reducenet.lora import FuseError, attach_lora, fuse_lora, lora_of
from kdsweep.reducenet.stages import run_reducenet
from kdsweep.run.resume import OWNER_TAG

TINY = ["schedule.epochs=1", "schedule.batch_size=16", "train.limit_train_batches=2",
        "train.limit_val_batches=1", "schedule.eval_batch_size=50", "train.progress=false",
        "precision=fp32", "schedule.warmup_epochs=0"]


@pytest.fixture(scope="module")
def data():
    """The embedded set at TINY's batch sizes, decoded once for every run of this module."""
    from kdsweep.data import build_data
    from kdsweep.data.build import DatasetConf

    return build_data(asdict(DatasetConf(name="embedded", source="embedded")), batch_size=16,
                      eval_batch_size=50, device=torch.device("cpu"), seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for this module's runs (creating one takes seconds); each test records in
    its own experiment and launches from its own directory."""
    return f"sqlite:///{tmp_path_factory.mktemp('reducenet-store') / 'mlflow.db'}"


@pytest.fixture
def experiment(store, tmp_path, monkeypatch, request) -> list[str]:
    """Overrides recording into this test's experiment of the shared store."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    return [f"tracking.uri={store}", f"tracking.experiment={request.node.name}"]


def runs_in(client: MlflowClient, experiment: list[str]) -> list:
    exp = client.get_experiment_by_name(experiment[1].split("=", 1)[1])
    return client.search_runs([exp.experiment_id])


def stage_runs(client: MlflowClient, experiment: list[str]) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in runs_in(client, experiment):
        out.setdefault(r.data.tags.get(stages.STAGE_TAG, "?"), []).append(r)
    return out


# ------------------------------------------------------------------------------ the block
#: Measured when the networks were written (100 classes), kept as regression values.
PARAMS_C100 = {"reduce8": 115_060, "reduce8_e2": 146_004, "reduce8_e4": 207_892,
               "reduce20": 417_908, "reduce20_e2": 556_820, "reduce20_e4": 834_644,
               "reduce56": 1_326_452, "reduce56_e2": 1_789_268, "reduce56_e4": 2_714_900}


def test_the_extension_registers_its_networks_nodes_and_presets(compose):
    from kdsweep.models import get_spec, list_models

    assert {n for n in list_models() if get_spec(n).family == "reducenet"} == set(PARAMS_C100)
    for name, n in PARAMS_C100.items():
        assert count_parameters(create_model(name, 100)) == n, name
    cfg = compose(["experiment=reducenet"])  # a preset of this folder, a node of its schema
    assert cfg.reducenet.rank == 4 and cfg.student.adapt.lora_rank == 0
    assert compose([]).reducenet is None


#: Which probes (conftest.PROBES) each numeric option of the extension's nodes accepts.
ACCEPTS = {"student.adapt.lora_rank": {"zero"}, "student.adapt.anneal": set(),
           "reducenet.expansion": set(), "reducenet.small_epochs": set(),
           "reducenet.grow_epochs": set(), "reducenet.anneal": set(),
           "reducenet.rank": set()}  # 0 is refused by the preset's lambda_relu=true (needs LoRA)


def _numeric_keys() -> list[tuple[str, bool]]:
    from kdsweep.config.schema import RunConfig
    from kdsweep.reducenet.schema import ReduceNetConf

    return [kv for kv in numeric_keys(RunConfig) if kv[0].startswith("student.adapt.")] + \
        numeric_keys(ReduceNetConf, "reducenet.")


def test_every_numeric_option_has_a_decision():
    assert sorted(k for k, _ in _numeric_keys()) == sorted(ACCEPTS)


@pytest.mark.parametrize("key,is_list", _numeric_keys(), ids=[k for k, _ in _numeric_keys()])
def test_nonsense_values_are_refused_in_one_line(compose, key, is_list):
    base = ["experiment=reducenet", "student=reduce8"] if key.startswith("reducenet.") else []
    probe_range(compose, key, is_list, ACCEPTS[key], base)


def test_reduce20_is_resnet20_plus_bottleneck_branches():
    torch.manual_seed(0)
    teacher, student = create_model("reduce20", 10), create_model("resnet20", 10)
    t, s = teacher.state_dict(), student.state_dict()
    assert s.keys() <= t.keys() and all(t[k].shape == s[k].shape for k in s)
    assert all(".bottleneck." in k for k in t.keys() - s.keys())
    block = teacher.layer2[0]  # stride 2, 16 -> 32 channels
    assert [type(m).__name__ for m in block.bottleneck] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    assert block.bottleneck[0].stride == (2, 2) and block.bottleneck[3].kernel_size == (1, 1)
    assert create_model("reduce20_e4", 10).layer2[0].bottleneck[0].out_channels == 4 * 32
    # A bottleneck whose last BN outputs 0 contributes nothing: reduce20 is then resnet20.
    student.load_state_dict({k: t[k] for k in s})
    for m in teacher.modules():
        if hasattr(m, "bottleneck"):
            torch.nn.init.zeros_(m.bottleneck[4].weight)
            torch.nn.init.zeros_(m.bottleneck[4].bias)
    x = torch.randn(2, 3, 32, 32)
    teacher.eval(), student.eval()
    with torch.no_grad(), FeatureTap(teacher, "reduce20") as tap_t, FeatureTap(student, "resnet20") as tap_s:
        ot, os_ = tap_t(x), tap_s(x)
    assert torch.allclose(ot.logits, os_.logits, atol=1e-5)
    assert [f.shape[1:] for f in ot.feats] == [f.shape[1:] for f in os_.feats] == [
        (16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert torch.equal(F.relu(ot.preact_feats[3]), ot.feats[3]) and ot.pooled.shape == (2, 64)


# ------------------------------------------------------------------------------- LoRA
def _train(model: torch.nn.Module, steps: int) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_fused_student_equals_unfused_and_costs_the_plain_student():
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    plain = (count_parameters(model), count_macs(model, 32), {k: v.shape for k, v in model.state_dict().items()})
    lora = attach_lora(model, 4, lambda_relu=True, anneal_steps=3)
    assert len(lora.names) == 21 and lora.extra_parameters() > 0  # every conv: stem, 2 x 9 blocks, 2 shortcuts
    assert count_macs(model, 32) > plain[1]
    _train(model, 4)  # lambda 0, 1/3, 2/3, 1: the branch ends linear
    assert all(b.up.weight.abs().sum() > 0 for b in lora.branches.values())
    x = torch.randn(16, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
        assert fuse_lora(model) == 21
        after = model(x)
    assert (after - before).abs().max() < 1e-4
    assert lora_of(model) is None and not model._forward_pre_hooks
    assert count_parameters(model) == plain[0] and count_macs(model, 32) == plain[1]
    assert {k: v.shape for k, v in model.state_dict().items()} == plain[2]
    clone = create_model("resnet20", 10)  # the deployed student loads into the plain architecture
    clone.load_state_dict(model.state_dict(), strict=True)


def test_fusing_is_refused_until_lambda_relu_is_the_identity():
    torch.manual_seed(0)
    model = create_model("resnet20", 10)
    attach_lora(model, 2, lambda_relu=True, anneal_steps=4)
    _train(model, 2)
    with pytest.raises(FuseError, match=r"lambda=0\.500, not the identity.*after 4 training steps"):
        fuse_lora(model)
    assert lora_of(model) is not None  # nothing changed
    _train(model, 2)
    assert fuse_lora(model) == 21
    linear = create_model("resnet20", 10)
    attach_lora(linear, 2)  # no LambdaReLU: linear from the start
    assert fuse_lora(linear) == 21


def test_student_init_grows_shrinks_and_refuses_what_does_not_fit(tmp_path):
    from kdsweep.engine import save_checkpoint
    from kdsweep.errors import CheckpointError
    from kdsweep.run.student_init import load_init

    torch.manual_seed(0)
    small = create_model("resnet20", 10)
    path = save_checkpoint(tmp_path / "s.pt", {"arch": "resnet20", "num_classes": 10,
                                               "model": small.state_dict()})
    grown = create_model("reduce20", 10)
    counts = load_init(grown, path, arch="reduce20", num_classes=10)
    assert counts == {"init.tensors_loaded": 128, "init.tensors_fresh": 108,
                      "init.tensors_dropped": 0}
    assert torch.equal(grown.layer3[2].conv2.weight, small.layer3[2].conv2.weight)
    with pytest.raises(CheckpointError, match="has 10 classes but the data set has 100"):
        load_init(create_model("reduce20", 100), path, arch="reduce20", num_classes=100)
    with pytest.raises(CheckpointError, match=r"does not fit 'reduce20_e2'|shares no tensor"):
        wide = save_checkpoint(tmp_path / "w.pt", {"arch": "reduce20_e4", "num_classes": 10,
                                                   "model": create_model("reduce20_e4", 10).state_dict()})
        load_init(create_model("reduce20_e2", 10), wide, arch="reduce20_e2", num_classes=10)
    with pytest.raises(CheckpointError, match="shares no tensor name"):
        vgg = save_checkpoint(tmp_path / "v.pt", {"model": create_model("vgg8", 10).state_dict()})
        load_init(create_model("resnet20", 10), vgg, arch="resnet20", num_classes=10)


# ----------------------------------------------------------------------- three stages
def test_three_stages_run_linked_fused_and_rerun_reuses_them(compose, experiment, tmp_path, capsys,
                                                            data):
    cfg = compose(["experiment=reducenet", "student=reduce8", *TINY, *experiment, "reducenet.rank=2"])
    res = run_reducenet(cfg, output_dir=tmp_path / "a", data=data)
    out = capsys.readouterr().out
    client = MlflowClient()
    runs = stage_runs(client, experiment)
    assert sorted(runs) == ["grow", "shrink", "small"] and all(len(v) == 1 for v in runs.values())
    small, grow, shrink = (runs[k][0] for k in ("small", "grow", "shrink"))
    assert all(r.info.status == "FINISHED" for r in (small, grow, shrink))
    assert (small.data.tags["student"], grow.data.tags["student"], shrink.data.tags["student"]) == (
        "resnet8", "reduce8", "resnet8")
    assert grow.data.tags[stages.PARENT_TAG] == small.info.run_id
    assert shrink.data.tags[stages.PARENT_TAG] == grow.info.run_id
    assert shrink.data.tags["reducenet.small_run_id"] == small.info.run_id
    assert shrink.data.tags["teacher"] == "reduce8" and shrink.data.tags["method"] == "kd"
    assert shrink.data.params["student.adapt.freeze"] in ("['fc']", "[fc]", '["fc"]')
    assert small.info.run_name.startswith("reducenet 1/3 small")
    # stage 2 grew from stage 1 (bottlenecks fresh); stage 3 shrank from stage 2 (dropped)
    gp, sp = grow.data.params, shrink.data.params
    assert (gp["init.tensors_fresh"], gp["init.tensors_dropped"]) == ("36", "0")
    assert (sp["init.tensors_dropped"], sp["init.tensors_fresh"]) == ("36", "0")
    m = shrink.data.metrics
    plain = create_model("resnet8", 10)
    assert int(sp["cost.student_params"]) == count_parameters(plain) == m["reducenet.student_params"]
    assert int(sp["cost.student_macs"]) == count_macs(plain, 32) == m["reducenet.student_macs"]
    assert m["reducenet.teacher_params"] == int(gp["cost.student_params"]) > count_parameters(plain)
    assert m["fuse_max_abs_diff"] < 1e-4 and m["best_val_acc"] == m["fused_val_acc"] == res.best_val_acc
    assert m["reducenet.student_minus_teacher"] == pytest.approx(
        m["best_val_acc"] - grow.data.metrics["best_val_acc"])
    # the run's checkpoint is the fused student: the plain architecture, strictly
    ckpt = load_checkpoint(res.checkpoint)
    assert ckpt["fused"] and ckpt["arch"] == "resnet8"
    load_model_weights(plain, ckpt, arch="resnet8", num_classes=10, source="best.pt")
    # the classifier stayed the teacher's
    teacher_fc = load_checkpoint(tmp_path / ".kdsweep" / "reducenet" / f"{grow.info.run_id}.pt")
    assert torch.equal(ckpt["model"]["fc.weight"], teacher_fc["model"]["fc.weight"])
    assert "stage 3 shrink" in out and "vs teacher" in out

    again = run_reducenet(compose(["experiment=reducenet", "student=reduce8", *TINY, *experiment, "reducenet.rank=2"]),
                          output_dir=tmp_path / "b", data=data)
    assert capsys.readouterr().out.count("(reused)") == 3
    assert {k: len(v) for k, v in stage_runs(client, experiment).items()} == {"small": 1, "grow": 1, "shrink": 1}
    assert again.run_id == res.run_id and again.best_val_acc == res.best_val_acc

    # another stage-3 setting reuses stages 1-2 and trains only a new stage 3
    run_reducenet(compose(["experiment=reducenet", "student=reduce8", *TINY, *experiment, "reducenet.rank=0",
                           "reducenet.lambda_relu=false", "method=ce"]), output_dir=tmp_path / "c", data=data)
    counts = {k: len(v) for k, v in stage_runs(client, experiment).items()}
    assert counts == {"small": 1, "grow": 1, "shrink": 2}


def test_an_unfinished_stage_is_resumed_in_its_run(compose, experiment, tmp_path, monkeypatch, capsys,
                                                   data):
    from kdsweep.run import callbacks

    original = callbacks.EpochMetrics.on_epoch_end

    def crash_in_grow(self, member, epoch, metrics, is_best):
        original(self, member, epoch, metrics, is_best)
        if member.arch == "reduce8" and epoch == 0:
            raise KeyboardInterrupt  # as a killed process: the run stays RUNNING with last.pt

    monkeypatch.setattr(callbacks.EpochMetrics, "on_epoch_end", crash_in_grow)
    args = ["experiment=reducenet", "student=reduce8", *TINY, *experiment, "reducenet.small=false",
            "reducenet.grow_epochs=2", "method=ce", "reducenet.rank=0", "reducenet.lambda_relu=false"]
    with pytest.raises(KeyboardInterrupt):
        run_reducenet(compose(args), output_dir=tmp_path / "a", data=data)
    client = MlflowClient()
    [grow] = runs_in(client, experiment)
    assert grow.info.status == "RUNNING"
    client.set_tag(grow.info.run_id, OWNER_TAG, f"{socket.gethostname()}:999999999:0")  # its process died
    monkeypatch.setattr(callbacks.EpochMetrics, "on_epoch_end", original)
    capsys.readouterr()
    run_reducenet(compose(args), output_dir=tmp_path / "b", data=data)
    assert f"resuming MLflow run {grow.info.run_id} after epoch 1" in capsys.readouterr().out
    runs = stage_runs(client, experiment)
    assert "small" not in runs and [r.info.run_id for r in runs["grow"]] == [grow.info.run_id]
    assert all(r.info.status == "FINISHED" for v in runs.values() for r in v)


@pytest.mark.parametrize("preset,student,dataset,method,small,rank", [
    ("reducenet", "reduce20", "embedded", "kd", True, 4),
    ("reducenet_cifar10", "reduce20", "cifar10", "ce", False, 0),  # the README's recipe
])
def test_presets_compose_and_debug_smoke_runs_reducenet8(compose, capsys, tmp_path, preset, student,
                                                         dataset, method, small, rank):
    root = []
    if dataset == "cifar10":  # the check before any work looks for the data set's files
        (tmp_path / "cifar-10-batches-py").mkdir()
        root = [f"dataset.root={tmp_path}"]
    cfg = compose([f"experiment={preset}", *root])
    assert (cfg.student.name, cfg.dataset.name, cfg.method.name) == (student, dataset, method)
    assert (cfg.reducenet.small, cfg.reducenet.rank, cfg.reducenet.expansion) == (small, rank, 1)
    assert OmegaConf.is_missing(cfg.teacher, "name")
    assert stages.check(cfg).teacher == "reduce20"
    if preset == "reducenet_cifar10":
        s = cfg.schedule
        assert (s.epochs, s.lr, s.nesterov, s.weight_decay, s.batch_size) == (200, 0.1, True, 1e-4, 128)
    # debug=smoke's small models (resnet14 -> resnet8) become ReduceNet-8
    net = stages.check(compose([f"experiment={preset}", "debug=smoke", *root]))
    assert (net.teacher, net.student) == ("reduce8", "resnet8")
    assert "teacher resnet14 (set by a preset or overlay) is replaced" in capsys.readouterr().out


@pytest.mark.parametrize("overrides,message", [
    (["method=modreduce", "student.adapt.lora_rank=2"], "does not apply to method=modreduce"),
    (["train.compile=true", "student.adapt.lora_rank=2"], "needs train.compile=false"),
    (["student.adapt.lora_rank=2", "student.adapt.anneal=2"], "student.adapt.anneal=2"),
    (["student.adapt.lambda_relu=true"], "needs LoRA branches"),
    (["student.adapt.freeze=[classifier]"], "resnet8 has no module 'classifier'"),
    (["student.init=missing.pt"], "does not exist"),
])
def test_student_adapt_is_checked_before_any_work(compose, mlflow_uri, tmp_path, overrides, message):
    from kdsweep.errors import KDSweepError
    from kdsweep.run import run

    with pytest.raises(KDSweepError, match=re.escape(message)):
        run(compose(["method=ce", *TINY, *overrides]), output_dir=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("override,message", [
    ("reducenet.expansion=3", "reducenet.expansion=3 is not available; valid: 1, 2, 4"),
    ("student=resnet14", "student=resnet14 is not a ReduceNet"),
    ("student=reduce20_e2", "use student=reduce20 reducenet.expansion=2"),
    ("teacher=resnet56", "the teacher is stage 2's network, reduce20"),
    ("method.alpha=1.5", "method.alpha=1.5 is out of range"),
    ("reducenet.anneal=0", "reducenet.anneal=0.0 must be in (0, 1]"),
    ("reducenet.rank=0", "reducenet.lambda_relu=true needs LoRA branches"),
    ("+reducenet.teacher_schedule.lrr=1", "reducenet.teacher_schedule has no key 'lrr'"),
])
def test_bad_settings_are_refused_before_any_work(compose, mlflow_uri, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        run_reducenet(compose(["experiment=reducenet", *TINY, override]), output_dir=tmp_path,
                      overrides=[override])
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "mlflow.db").exists()


def test_a_reducenet_key_without_its_preset_names_the_presets():
    from pathlib import Path

    from kdsweep.config.cli import check

    conf = Path(__file__).resolve().parents[3] / "conf"
    assert check(["reducenet.rank=3"], conf) == (
        "reducenet.rank: reducenet is null unless a preset sets it; valid: "
        "experiment=reducenet, experiment=reducenet_cifar10")
    assert check(["experiment=reducenet", "reducenet.rank=3", "--cfg", "job"], conf) is None
