"""The presets of the logit methods (issue 25): ``logit_stand_cifar100`` (the logit-standardization
README's CIFAR-100 tables), ``dist_cifar100`` (DIST's) and ``temperature_study`` (swept T, learned
T, LS's base T x weight on one pair). Composing, smoke schedules and the validity of every point
are checked with the other presets (tests/test_presets.py, whose helpers this file uses); here:
each method's recipe per point, the published numbers against the sources (transcribed here from
the READMEs, independently of kdsweep/report/published.py), and the report's learned temperature
on a real SQLite MLflow store (hand-made runs as the sweeper and the engine log them)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pandas as pd
from mlflow.entities import Metric
from omegaconf import OmegaConf
from test_presets import CONF, _method_cfg, _points, composed  # noqa: F401  (fixture)
from test_report import Store

from kdsweep.methods import create_method
from kdsweep.models import list_models
from kdsweep.report import write_report
from kdsweep.report.published import get_published
from kdsweep.sweep import space as _space

SMALL = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}


def _pair(p) -> str:
    return f"{p.values['teacher']} -> {p.values['student']}"


def _method_keys(p) -> dict:
    return {k: v for k, v in p.values.items() if k.startswith("method.")}


# ------------------------------------------------------------------ logit_stand_cifar100
# The README's tables, transcribed: two whole rows and single cells of the others.
README_MLKD_LS_SAME = {"resnet32x4 -> resnet8x4": 78.28, "vgg13 -> vgg8": 75.22,
                       "wrn_40_2 -> wrn_40_1": 75.56, "wrn_40_2 -> wrn_16_2": 76.95,
                       "resnet56 -> resnet20": 72.33, "resnet110 -> resnet32": 74.32,
                       "resnet110 -> resnet20": 72.27}
README_KD_LS_CROSS = {"resnet32x4 -> ShuffleV2": 75.56, "resnet32x4 -> wrn_16_2": 75.26,
                      "resnet32x4 -> wrn_40_2": 77.92, "wrn_40_2 -> resnet8x4": 77.11,
                      "wrn_40_2 -> MobileNetV2": 69.23, "vgg13 -> MobileNetV2": 68.61,
                      "ResNet50 -> MobileNetV2": 69.02}
README_CELLS = {("resnet32x4 -> resnet8x4", "kd"): 73.33, ("vgg13 -> vgg8", "ctkd"): 73.52,
                ("wrn_40_2 -> wrn_16_2", "ctkd+ls"): 76.08, ("resnet56 -> resnet20", "dkd"): 71.97,
                ("resnet110 -> resnet20", "dkd+ls"): 71.85, ("resnet110 -> resnet32", "mlkd"): 74.11,
                ("resnet32x4 -> ShuffleV2", "mlkd+ls"): 78.76,
                ("resnet32x4 -> wrn_40_2", "dkd+ls"): 78.95,
                ("wrn_40_2 -> resnet8x4", "ctkd"): 74.61,
                ("wrn_40_2 -> MobileNetV2", "ctkd+ls"): 69.53,
                ("vgg13 -> MobileNetV2", "mlkd"): 70.57, ("ResNet50 -> MobileNetV2", "dkd"): 70.35,
                ("resnet32x4 -> wrn_16_2", "kd"): 74.90, ("wrn_40_2 -> wrn_40_1", "kd+ls"): 74.37}
# KD+LS's (base temperature, KD weight) where the README links a log naming others.
README_KD_LS_LOGS = {"vgg13 -> vgg8": (3, 9), "resnet32x4 -> wrn_16_2": (3, 9),
                     "resnet32x4 -> wrn_40_2": (3, 9), "wrn_40_2 -> MobileNetV2": (3, 9),
                     "vgg13 -> MobileNetV2": (3, 9), "ResNet50 -> MobileNetV2": (3, 1)}
# MLKD's learning rate where configs/cifar100/mlkd/TEACHER_STUDENT.yaml is not at 0.025.
MLKD_LR = {"vgg13 -> MobileNetV2": 0.01, "ResNet50 -> MobileNetV2": 0.01,
           "wrn_40_2 -> MobileNetV2": 0.005, "resnet32x4 -> ShuffleV2": 0.01}


def test_logit_stand_points_are_the_generators():
    """conf/experiment/logit_stand_cifar100.yaml's points are written by
    tools/logit_stand_points.py."""
    tool = CONF.parents[1] / "tools" / "logit_stand_points.py"
    done = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_logit_stand_points_cover_the_readme_with_each_methods_recipe(composed):  # noqa: F811
    cfg = composed(["experiment=logit_stand_cifar100"])
    points = _points(cfg)
    pub = get_published("logit_stand_cifar100")
    assert cfg.schedule.epochs == 240 and cfg.schedule.lr == 0.05 and cfg.method.name == "kd"
    cells = [(_pair(p), p.label) for p in points]
    assert len(set(cells)) == len(cells) == 112                     # one trial per cell
    assert set(cells) == {(r, c) for r in pub.rows for c in pub.cols}
    assert len(pub.rows) == 14 and pub.cols == ("kd", "kd+ls", "ctkd", "ctkd+ls", "dkd",
                                                 "dkd+ls", "mlkd", "mlkd+ls")
    for p in points:
        pair, label, v = _pair(p), p.label, p.values
        method, ls = label.removesuffix("+ls"), label.endswith("+ls")
        assert v["method"] == method and v.get("method.logit_stand", False) is ls, v
        if method == "mlkd":                      # the authors' MLKD recipe and LR per pair
            assert v["schedule"] == "mlkd" and v.get("schedule.lr") == MLKD_LR.get(pair), v
        else:                                     # the CRD recipe: 0.01 for small students
            assert "schedule" not in v, v
            assert v.get("schedule.lr") == (0.01 if v["student"] in SMALL else None), v
        keys = _method_keys(p)
        if not ls:
            assert keys == {}, v                  # plain methods: kdsweep's (the authors') defaults
        elif method == "kd":
            base, w = README_KD_LS_LOGS.get(pair, (2, 9))
            assert keys == {"method.logit_stand": True, "method.T": base, "method.kd_weight": w}
        elif method == "ctkd":                    # -r 0.1 -a 9, the temperature is learned
            assert keys == {"method.logit_stand": True, "method.ce_weight": 0.1,
                            "method.kd_weight": 9}
        elif method == "dkd":                     # --kd-weight 9 multiplies alpha and beta
            assert keys == {"method.logit_stand": True, "method.T": 2, "method.dkd_weight": 9}
        else:
            assert keys == {"method.logit_stand": True, "method.T": 2, "method.kd_weight": 9}
        create_method(_method_cfg(v))
    # Each pair starts with kd (schedule=cifar): a teacher is trained by the first trial that
    # needs it, with that trial's schedule; each teacher's first student has LR 0.05 but
    # ResNet50's (its only pair; the preset's header says to train it beforehand).
    firsts = {}
    for p in points:
        firsts.setdefault(_pair(p), p)
        firsts.setdefault(p.values["teacher"], p)
    assert all(firsts[r].label == "kd" for r in pub.rows)
    small_first = {t for t in ("resnet32x4", "vgg13", "wrn_40_2", "resnet56", "resnet110",
                               "ResNet50") if "schedule.lr" in firsts[t].values}
    assert small_first == {"ResNet50"}


def test_mlkd_schedule_is_the_authors_and_shrinks_under_smoke(composed):  # noqa: F811
    """A point's schedule=mlkd is configs/cifar100/mlkd's recipe; debug=smoke still wins."""
    cfg = composed(["experiment=logit_stand_cifar100", "schedule=mlkd", "schedule.lr=0.005"],
                   hydra=False)
    s = cfg.schedule
    assert (s.name, s.epochs, s.batch_size, s.lr, s.momentum, s.weight_decay, s.gamma) == (
        "step", 480, 64, 0.005, 0.9, 5e-4, 0.1)
    assert list(s.milestones) == [150, 180, 210]
    smoke = composed(["experiment=logit_stand_cifar100", "debug=smoke", "schedule=mlkd"],
                     hydra=False)
    assert smoke.schedule.epochs == 4 and smoke.schedule.lr == 0.025


def test_logit_stand_published_numbers_are_the_readmes():
    pub = get_published("logit_stand_cifar100")
    assert pub.dataset == "cifar100" and pub.metric("kd") == pub.metric("mlkd+ls") == "best_val_acc"
    assert all(pub.value(r, c) is not None for r in pub.rows for c in pub.cols)  # no gaps
    for r, v in README_MLKD_LS_SAME.items():
        assert pub.value(r, "mlkd+ls") == v, r
    for r, v in README_KD_LS_CROSS.items():
        assert pub.value(r, "kd+ls") == v, r
    for (r, c), v in README_CELLS.items():
        assert pub.value(r, c) == v, (r, c)
    # the summary table (resnet32x4 -> resnet8x4, wrn_40_2 -> wrn_16_2)
    assert [pub.value("wrn_40_2 -> wrn_16_2", c) for c in ("ctkd", "mlkd", "kd+ls", "mlkd+ls")] \
        == [75.45, 76.63, 76.11, 76.95]
    assert (pub.teacher["resnet32x4 -> wrn_40_2"], pub.student["resnet32x4 -> wrn_40_2"]) == (
        79.42, 75.61)
    models = set(list_models())
    for t in (pub, get_published("dist_cifar100")):
        assert all(set(r.split(" -> ")) <= models for r in t.rows), t.id
        assert set(t.teacher) == set(t.student) == set(t.rows), t.id


# ------------------------------------------------------------------------ dist_cifar100
# hunto/DIST_KD README, "CIFAR-100" (mean of runs), and the WTTM paper's wrn_40_2 -> wrn_16_2.
README_DIST = {"wrn_40_2 -> wrn_40_1": 74.43, "resnet56 -> resnet20": 71.75,
               "resnet32x4 -> resnet8x4": 76.31, "ResNet50 -> MobileNetV2": 68.66,
               "resnet32x4 -> ShuffleV1": 76.34, "resnet32x4 -> ShuffleV2": 77.35,
               "wrn_40_2 -> wrn_16_2": 75.51}
REPDISTILLER_KD = {"wrn_40_2 -> wrn_40_1": 73.54, "resnet56 -> resnet20": 70.66,
                   "resnet32x4 -> resnet8x4": 73.33, "ResNet50 -> MobileNetV2": 67.35,
                   "resnet32x4 -> ShuffleV1": 74.07, "resnet32x4 -> ShuffleV2": 74.45,
                   "wrn_40_2 -> wrn_16_2": 74.92}


def test_dist_preset_is_dists_table_beside_kd(composed):  # noqa: F811
    cfg = composed(["experiment=dist_cifar100"])
    pub = get_published("dist_cifar100")
    points = _points(cfg)
    assert {(_pair(p), p.label) for p in points} == {(r, c) for r in pub.rows for c in pub.cols}
    assert len(points) == 14 and set(pub.cols) == {"kd", "dist"}
    for p in points:
        assert p.values["method"] == p.label and _method_keys(p) == {}   # the defaults
        assert p.values.get("schedule.lr") == (0.01 if p.values["student"] in SMALL else None)
    dist = create_method({"name": "dist"})                          # dist_cifar.yaml's loss
    assert (dist.ce_weight, dist.beta, dist.gamma, dist.T) == (1.0, 2.0, 2.0, 4.0)
    assert {r: pub.value(r, "dist") for r in pub.rows} == README_DIST
    assert {r: pub.value(r, "kd") for r in pub.rows} == REPDISTILLER_KD
    assert pub.metric("kd") == "final_val_acc" and pub.metric("dist") == "best_val_acc"
    assert pub.teacher["ResNet50 -> MobileNetV2"] == 79.34
    assert pub.student["resnet32x4 -> ShuffleV1"] == 70.50


# --------------------------------------------------------------------- temperature_study
def test_temperature_study_points(composed):  # noqa: F811
    cfg = composed(["experiment=temperature_study"])
    assert (cfg.teacher.name, cfg.student.name, cfg.dataset.name) == ("wrn_40_2", "wrn_16_2",
                                                                     "cifar100")
    assert cfg.schedule.epochs == 240 and cfg.method.alpha == 0.9
    points = _points(cfg)
    assert not any({"teacher", "student"} & set(p.values) for p in points)   # one pair
    kd = [p for p in points if p.label == "kd"]
    assert [_method_keys(p) for p in kd] == [{"method.T": t} for t in (1, 2, 4, 8, 16)]
    ctkd = [p for p in points if p.label == "ctkd"]
    assert [p.values for p in ctkd] == [{"method": "ctkd", "method.mode": m}
                                        for m in ("global", "instance")]
    ls = [p for p in points if p.label == "kd+ls"]
    assert {(p.values["method.T"], p.values["method.kd_weight"]) for p in ls} == {
        (b, w) for b in (2, 3) for w in (3, 6, 9, 15)}
    assert all(p.values["method"] == "kd" and p.values["method.logit_stand"] is True for p in ls)
    assert len(points) == len(kd) + len(ctkd) + len(ls) == 15


# ---------------------------------------------------------- the report's learned temperature
def _sweep(tmp_path, cfg, runs: dict[int, tuple[float, tuple[float, ...]]], tags: dict):
    """A sweep of the preset's points in a SQLite MLflow store: the parent, sweep.json as the
    sweeper writes it, and a finished child for each point index in ``runs`` (best accuracy,
    its method/T per epoch), with the overrides param the sweeper passes."""
    store = Store(tmp_path)
    parent = store.parent("s")
    sw = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    space = _space.build(sw["params"], [], grid=True, points=sw["points"])
    now = int(time.time() * 1000)
    for i, (best, temps) in runs.items():
        p = space.points[i]
        rid = store.child(parent, i, " ".join(p.overrides()), best, **tags,
                          method=str(p.values.get("method", "kd")),
                          **{k: str(p.values[k]) for k in ("teacher", "student") if k in p.values})
        # as the engine logs Method.epoch_values: one value per epoch (step), the last one counts
        store.client.log_batch(rid, metrics=[Metric("method/T", t, now + e, e)
                                             for e, t in enumerate(temps)], params=[])
    d = tmp_path / "multirun" / "s"
    d.mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({
        "study_name": "s", "parent_run_id": parent, "tracking_uri": store.uri,
        "experiment": "kdsweep", "direction": "maximize", "space": space.describe(),
        "report": sw["report"]}))
    return d


def test_report_shows_the_learned_temperature_beside_the_swept_ones(tmp_path, composed):  # noqa: F811
    cfg = composed(["experiment=temperature_study"])
    tags = {"dataset": "cifar100", "teacher": "wrn_40_2", "student": "wrn_16_2"}
    # points: 0-4 kd T 1..16, 5 ctkd global, 6 ctkd instance, 7.. kd+ls
    d = _sweep(tmp_path, cfg, {0: (74.0, ()), 2: (75.0, ()), 5: (75.5, (15.62, 9.8, 7.3101)),
                               6: (74.5, (11.0, 8.25)), 9: (76.0, ())}, tags)
    rep = write_report(d, log_to_parent=False)
    (table,) = rep.tables
    assert table.kind == "list" and table.extra_header() == ["T", "mode", "kd_weight"]
    md = rep.markdown
    assert "| method | T | mode | kd_weight | best / last |" in md
    assert "| kd | 1 |  |  | 74.00 / 73.00 |" in md
    assert "| kd | 4 |  |  | 75.00 / 74.00 |" in md
    assert "| kd | 16 |  |  |  |" in md                              # not run yet
    assert "| ctkd | learned 7.31 | global |  | 75.50 / 74.50 |" in md   # the last epoch's T
    assert "| ctkd | learned 8.25 | instance |  | 74.50 / 73.50 |" in md
    assert "| kd+ls | 2 |  | 9 | **76.00** / 75.00 |" in md
    cells = pd.read_csv(d / "report.csv")
    assert cells["method/T_mean"].dropna().round(4).tolist() == [7.3101, 8.25]
    assert list(cells.columns[:5]) == ["table", "method", "method.T", "method.mode",
                                       "method.kd_weight"]
    runs = pd.read_csv(d / "runs.csv")
    assert sorted(runs["method/T"].dropna().round(2)) == [7.31, 8.25]
    assert "learned 7.31" in (d / "report.tex").read_text()


def test_learned_temperature_row_under_a_pivot(tmp_path, composed):  # noqa: F811
    """In a table of pairs x methods (logit_stand_cifar100) the learned T is a row under the
    pair, in the columns of the methods that learn it (and a column beside them in LaTeX)."""
    cfg = composed(["experiment=logit_stand_cifar100"])
    tags = {"dataset": "cifar100"}
    # points 0-7: resnet32x4 -> resnet8x4's kd, kd+ls, ctkd, ctkd+ls, ...
    d = _sweep(tmp_path, cfg, {0: (73.0, ()), 2: (74.0, (12.0, 6.5)), 3: (76.5, (4.25,))}, tags)
    rep = write_report(d, log_to_parent=False)
    (table,) = rep.tables
    lines = rep.markdown.splitlines()
    i = next(k for k, x in enumerate(lines) if x.startswith("| resnet32x4 -> resnet8x4 |"))
    assert lines[i + 1] == "| ↳ learned T |  |  | 6.50 | 4.25 |  |  |  |  |"
    assert lines[i + 2].startswith("| ↳ published | 73.33 | 76.62 | 73.39 | 76.67 |")
    assert table.cells[0][2].learned == {"T": 6.5} and table.cells[0][0].learned == {}
    tex = (d / "report.tex").read_text()
    assert "ctkd learned T" in tex and "ctkd+ls learned T" in tex
