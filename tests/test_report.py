"""kdsweep.report on a real SQLite MLflow store holding hand-made parent/child runs (no training):
the published tables' layouts, sparse grids, best cell, pruned/failed/running cells, seeds as
mean ± std, published numbers and differences, the teacher and the student alone, --metric, the
CLI, CSV / LaTeX and the plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from kdsweep.report import main, write_report
from kdsweep.report.tables import parse_overrides

PNG = b"\x89PNG"


class Store:
    def __init__(self, tmp_path: Path):
        self.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.exp = self.client.create_experiment("kdsweep")

    def parent(self, study: str) -> str:
        return self.client.create_run(self.exp, run_name=study,
                                      tags={"kdsweep.study": study}).info.run_id

    def child(self, parent: str | None, trial: int | None, overrides: str, best: float | None,
              status: str = "FINISHED", curve: tuple[float, ...] = (), last: float | None = None,
              curve_name: str = "val_acc", **tags: str) -> str:
        base = {"mlflow.parentRunId": parent, "optuna.trial": str(trial)} if parent else {}
        r = self.client.create_run(self.exp, tags={**base, **tags})
        rid = r.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(curve_name, v, now, i + 1) for i, v in enumerate(curve)]
        if best is not None:
            metrics += [Metric("best_val_acc", best, now, 0),
                        Metric("final_val_acc", best - 1.0 if last is None else last, now, 0)]
        self.client.log_batch(rid, metrics=metrics, params=[Param("overrides", overrides)],
                              tags=[RunTag("x", "y")])
        if status != "RUNNING":
            self.client.set_terminated(rid, status)
        return rid


# wangziren1/knowledge_distill_on_mini-imagenet's sparse alpha x T table
WANGZIREN1 = [(0.9, 1, 79.64), (0.9, 3, 81.10), (0.9, 5, 80.65), (0.9, 10, 80.875),
              (0.7, 3, 81.27), (0.6, 3, 81.28), (0.5, 3, 80.78)]


def sweep_json(path: Path, store: Store, parent: str, space: dict, report: dict | None = None):
    path.mkdir(parents=True, exist_ok=True)
    info = {"study_name": "s", "parent_run_id": parent, "tracking_uri": store.uri,
            "experiment": "kdsweep", "space": space, "report": report or {}}
    (path / "sweep.json").write_text(json.dumps(info))
    return info


def test_sparse_alpha_t_table_with_published_numbers(tmp_path):
    store = Store(tmp_path)
    parent = store.parent("s")
    mini = {"dataset": "mini_imagenet", "teacher": "tv_shufflenet_v2_x2_0",
            "student": "tv_shufflenet_v2_x1_0", "method": "kd"}
    for i, (a, t, acc) in enumerate(WANGZIREN1):
        store.child(parent, i, f"+experiment=x method.alpha={a} method.T={t} sweep.trial_number={i}",
                    acc, curve=(acc - 5, acc - 1), **mini)
    # A failed earlier attempt of one point: the finished rerun supersedes it.
    store.child(parent, 99, "method.alpha=0.9 method.T=1", None, status="FAILED")
    points = [{"label": None, "values": {"method.alpha": a, "method.T": t}} for a, t, _ in WANGZIREN1]
    d = tmp_path / "multirun" / "s"
    sweep_json(d, store, parent, {"params": {}, "points": points},
               {"published": "wangziren1_kd_grid"})

    rep = write_report(d)
    (table,) = rep.tables
    assert table.row_labels == ["0.9", "0.7", "0.6", "0.5"]        # the published order
    assert table.col_labels == ["1", "3", "5", "10"]
    expected = {(str(a), str(t)): acc for a, t, acc in WANGZIREN1}
    for i, r in enumerate(table.row_labels):
        for j, c in enumerate(table.col_labels):
            assert table.values()[i][j] == expected.get((r, c))      # None: not run, empty cell
    lines = rep.markdown.splitlines()
    assert "| alpha \\ T | 1 | 3 | 5 | 10 |" in lines
    assert "| 0.9 | 79.64 / 78.64 | 81.10 / 80.10 | 80.65 / 79.65 | 80.88 / 79.88 |" in lines
    assert "| 0.6 |  | **81.28** / 80.28 |  |  |" in lines          # best in bold, sparse
    i = lines.index("| 0.9 | 79.64 / 78.64 | 81.10 / 80.10 | 80.65 / 79.65 | 80.88 / 79.88 |")
    assert lines[i + 1] == "| ↳ published | 79.64 | 81.1 | 80.65 | 80.875 |"
    assert lines[i + 2] == "| ↳ Δ | +0.00 | +0.00 | +0.00 | +0.00 |"
    assert "wangziren1/knowledge_distill_on_mini-imagenet" in rep.markdown
    for name in ("report.md", "report.csv", "runs.csv", "report.tex", "heatmap.png", "curves.png"):
        assert (d / name).is_file(), name
    assert (d / "heatmap.png").read_bytes()[:4] == PNG
    logged = {a.path for a in store.client.list_artifacts(parent, "report")}
    assert logged == {f"report/{n}" for n in ("report.md", "report.csv", "runs.csv", "report.tex",
                                               "heatmap.png", "curves.png")}
    cells = pd.read_csv(d / "report.csv")   # the axes named by the swept keys
    assert list(cells.columns[:4]) == ["table", "method.alpha", "method.T", "n"]
    row = cells[(cells["method.alpha"] == 0.6) & (cells["method.T"] == 3)].iloc[0]
    assert row["best_val_acc_mean"] == pytest.approx(81.28) and row["published"] == 81.28
    runs = pd.read_csv(d / "runs.csv")
    assert list(runs.columns[:3]) == ["method.alpha", "method.T", "run_id"]
    tex = (d / "report.tex").read_text()
    assert "\\begin{tabular}{lcccccccccccc}" in tex
    head = tex.split("\\toprule\n")[1].split("\\midrule")[0]
    assert head.count("\\\\") == 1                                 # one header row
    assert head.startswith("alpha \\textbackslash{} T & 1 & 1 published & 1 $\\Delta$ & 3 &")
    assert "0.6 &  &  &  & \\textbf{81.28} / 80.28 & 81.28 & +0.00 &" in tex   # best in bold
    assert "\\caption{best / last epoch validation accuracy (\\%), 1 seed; \\textbf{bold}: the highest" in tex

    # Smoke runs (another data set) are not compared with the published table.
    other = write_report(d, out_dir=tmp_path / "o", log_to_parent=False, published="crd_dkd_cifar100")
    assert "↳ published" not in other.markdown and "not compared" in other.markdown


def test_tricks_table_pruned_failed_and_metric_option(tmp_path, capsys):
    store = Store(tmp_path)
    parent = store.parent("tricks")
    labels = ["steplr", "cosinlr", "cosinlr + warmup 1 epoch", "cosinlr + warmup 3 epoch"]
    ovs = ["schedule=step", "schedule=cosine", "schedule=warmup_cosine schedule.warmup_epochs=1",
           "schedule=warmup_cosine schedule.warmup_epochs=3"]
    store.child(parent, 0, ovs[0], 76.71, curve=(70.0, 76.71))
    store.child(parent, 1, ovs[1], 77.72, curve=(71.0, 77.72))
    store.child(parent, 2, ovs[2], None, status="KILLED", curve=(50.0,), pruned_at_epoch="1")
    store.child(parent, 3, ovs[3], None, status="FAILED")
    points = [{"label": lab, "values": dict(o.split("=") for o in ov.split())}
              for lab, ov in zip(labels, ovs, strict=True)]
    for p in points:  # the sweeper stores the YAML values: ints stay ints
        if "schedule.warmup_epochs" in p["values"]:
            p["values"]["schedule.warmup_epochs"] = int(p["values"]["schedule.warmup_epochs"])
    store.client.log_text(parent, json.dumps({
        "study_name": "tricks", "parent_run_id": parent, "experiment": "kdsweep",
        "space": {"params": {}, "points": points}, "report": {"label_header": "tricks"}}),
        "sweep.json")

    out = tmp_path / "out"
    assert main([parent, "--tracking-uri", store.uri, "--out", str(out), "--metric",
                 "final_val_acc"]) == 0
    text = (out / "report-final_val_acc.md").read_text()
    assert text in capsys.readouterr().out
    assert "| tricks | final_val_acc |" in text
    assert "| steplr | 75.71 |" in text and "| cosinlr | **76.72** |" in text
    assert "| cosinlr + warmup 1 epoch | pruned (epoch 1) |" in text
    assert "| cosinlr + warmup 3 epoch | failed |" in text
    assert (out / "bars-final_val_acc.png").read_bytes()[:4] == PNG
    assert (out / "curves.png").read_bytes()[:4] == PNG

    assert main(["0123456789abcdef0123456789abcdef", "--tracking-uri", store.uri]) == 2
    assert "not found" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no sweep.json here" in capsys.readouterr().err
    assert main([parent, "--tracking-uri", store.uri, "--published", "nope", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid: crd_dkd_cifar100" in err


def test_sampled_sweep_lists_trials_by_value(tmp_path):
    store = Store(tmp_path)
    parent = store.parent("tpe")
    vals = [(0.31, 4.2, 55.0), (0.77, 1.9, 61.5), (0.5, 8.0, 58.25)]
    for i, (a, t, acc) in enumerate(vals):
        store.child(parent, i, f"method.alpha={a} method.T={t} sweep.parent_run_id={parent}", acc)
    d = tmp_path / "sw"
    sweep_json(d, store, parent, {"params": {"method.alpha": {"type": "float"},
                                             "method.T": {"type": "float"}}})
    (table,) = write_report(d, log_to_parent=False).tables
    assert table.kind == "list" and table.extra_cols == ["alpha", "T"]
    assert table.row_labels == ["1", "2", "0"] and table.extra[0] == ["0.77", "1.9"]
    assert [v[0] for v in table.values()] == [61.5, 58.25, 55.0]
    assert table.cells[0][0].text() == "**61.50** / 60.50"                 # best / last epoch
    cells = pd.read_csv(d / "report.csv")                                 # full keys, as run
    assert list(cells.columns[:4]) == ["table", "trial", "method.alpha", "method.T"]
    assert list(cells["method.alpha"]) == [0.77, 0.5, 0.31]


def test_parse_overrides():
    assert parse_overrides("a=1 +b='x y' ~c=2 hydra.x=3") == {"a": "1", "b": "'x y'", "c": "2",
                                                               "hydra.x": "3"}


@pytest.mark.parametrize("metric", ["train_val_gap"])
def test_lower_is_better_metrics(tmp_path, metric):
    store = Store(tmp_path)
    parent = store.parent("gap")
    a = store.child(parent, 0, "method.T=1", 50.0)
    b = store.child(parent, 1, "method.T=2", 60.0)
    store.client.log_metric(a, metric, 3.0)
    store.client.log_metric(b, metric, 1.5)
    d = tmp_path / "g"
    sweep_json(d, store, parent, {"params": {}, "axes": [["method.T", [1, 2]]],
                                  "points": [{"label": None, "values": {"method.T": 1}},
                                             {"label": None, "values": {"method.T": 2}}]})
    rep = write_report(d, metric=metric, log_to_parent=False)
    assert [c[0].best for c in rep.tables[0].cells] == [False, True]
    assert "(lowest)" in rep.markdown


# ---------------------------------------------------------------------- pairs x methods, seeds
PAIRS = ["wrn_40_2 -> wrn_16_2", "resnet56 -> resnet20", "resnet110 -> resnet20"]
METHODS = [("kd", "method=kd"), ("crd", "method=crd"), ("crd+kd", "method=crd method.kd_weight=1"),
           ("dkd", "method=dkd")]


def _benchmark(tmp_path: Path) -> tuple[Store, str, Path, dict[str, str]]:
    """Three pairs of the CRD benchmark x vanilla + 4 methods x 2 seeds, run partly: one cell
    running, one failed, one pair's seed 1 missing; teachers and one student-alone run exist."""
    store = Store(tmp_path)
    tag = {"dataset": "cifar100"}
    teachers = {t: store.child(None, None, f"method=ce student={t}", acc, method="ce", student=t,
                               teacher="none", **tag)
                for t, acc in (("wrn_40_2", 75.5), ("resnet56", 72.0), ("resnet110", 74.0))}
    parent = store.parent("crd")
    points, trial = [], 0
    for seed in (0, 1):
        for s in ("wrn_16_2", "resnet20"):
            points.append({"label": "vanilla", "values": {"student": s, "method": "ce", "seed": seed}})
            if s == "wrn_16_2":  # resnet20 was never trained alone
                store.child(parent, trial, f"+experiment=crd_benchmark student={s} method=ce "
                            f"seed={seed}", 73.0 + seed, method="ce", student=s, teacher="none",
                            **tag)
            trial += 1
        for pair in PAIRS:
            t, s = pair.split(" -> ")
            for k, (lab, ov) in enumerate(METHODS):
                vals = {"teacher": t, "student": s, **dict(o.split("=") for o in ov.split()),
                        "seed": seed}
                if "method.kd_weight" in vals:
                    vals["method.kd_weight"] = 1
                points.append({"label": lab, "values": vals})
                if seed == 1 and t == "resnet110":
                    continue                                         # not run yet
                status = "FINISHED"
                if (seed, pair, lab) == (1, PAIRS[0], "dkd"):
                    status = "RUNNING"
                if (seed, pair, lab) == (1, PAIRS[1], "crd"):
                    status = "FAILED"
                acc = 70.0 + k + seed * 0.5
                store.child(parent, trial, f"+experiment=crd_benchmark teacher={t} student={s} "
                            f"{ov} seed={seed} sweep.trial_number={trial}",
                            acc if status == "FINISHED" else None, status=status,
                            curve=(acc - 10, acc - 2, acc), last=acc - 0.25, curve_name="acc/val",
                            method=ov.split()[0].split("=")[1], teacher=t, student=s,
                            teacher_run_id=teachers[t], **tag)
                trial += 1
    d = tmp_path / "multirun" / "crd"
    sweep_json(d, store, parent, {"params": {}, "points": points},
               {"rows": "teacher,student", "cols": "_label_", "label_header": "method",
                "published": "crd_dkd_cifar100"})
    return store, parent, d, teachers


def test_pairs_by_methods_with_seeds_published_and_baselines(tmp_path):
    store, parent, d, teachers = _benchmark(tmp_path)
    rep = write_report(d, log_to_parent=False)
    (table,) = rep.tables
    assert table.row_labels == PAIRS
    assert table.col_labels == ["vanilla", "kd", "crd", "crd+kd", "dkd"]
    assert table.corner == "teacher -> student \\ method"
    cell = table.cells[0][1]                                       # wrn_40_2 -> wrn_16_2, kd
    assert (cell.n, cell.value, cell.last) == (2, 70.25, 70.0)
    assert cell.std == pytest.approx(0.3536, abs=1e-4)
    assert cell.text() == "70.25 ± 0.35 / 70.00 ± 0.35 (n=2)"
    # RepDistiller reports the last epoch: Δ of kd uses final_val_acc; DKD (mdistiller) the best.
    assert cell.published == 74.92 and cell.published_metric == "final_val_acc"
    assert cell.delta == pytest.approx(70.0 - 74.92)
    dkd = table.cells[0][4]
    assert dkd.n == 1 and dkd.published_metric == "best_val_acc"
    assert dkd.delta == pytest.approx(73.0 - 76.23)
    assert dkd.text() == "**73.00** / 72.75 + running (last val 73.50)"
    assert table.cells[1][2].text() == "71.00 / 70.75 + failed"     # seed 0 done, seed 1 failed
    assert table.cells[2][1].text() == "70.00 / 69.75"              # seed 1 not run yet
    # The student alone (no teacher in its points) fills every row with that student.
    assert table.cells[0][0].text() == "73.50 ± 0.71 / 72.50 ± 0.71 (n=2)"
    assert table.cells[1][0].runs == table.cells[2][0].runs == []   # resnet20 alone: not run
    # bold: the best distilled cell of each pair (as the papers), not the student alone
    assert [[c.best for c in row] for row in table.cells] == [
        [False, False, False, False, True], [False, False, False, False, True],
        [False, False, False, False, True]]
    md = rep.markdown
    assert "| teacher -> student \\ method | vanilla | kd | crd | crd+kd | dkd |" in md
    assert "| ↳ published | 73.26 | 74.92 | 75.48 |  | 76.23 |" in md
    assert "**Partial**" in md and "1 running" in md
    # Did distillation help? teacher from teacher_run_id, student alone from MLflow, or how to run it
    assert "### Did distillation help?" in md
    assert f"| wrn_40_2 -> wrn_16_2 (cifar100) | 75.50 / 74.50 (run {teachers['wrn_40_2'][:8]})" in md
    assert "not run: `python run.py method=ce student=resnet20 dataset=cifar100 " \
           "experiment=crd_benchmark`" in md
    assert "| 73.00 (wrn_40_2 -> wrn_16_2, dkd) | -1.00 |" in md     # vs the best ce run, 74.00
    # CSV (pandas): one row per cell and one per run; LaTeX of the pivot.
    cells = pd.read_csv(d / "report.csv")
    assert len(cells) == 15 and list(cells.columns[:4]) == ["table", "teacher,student", "method",
                                                            "n"]
    assert set(cells.columns) >= {"best_val_acc_mean", "best_val_acc_std", "published", "delta"}
    runs = pd.read_csv(d / "runs.csv")
    assert set(runs["state"]) == {"finished", "failed", "running (last val 73.50)"}
    assert list(runs.columns[:2]) == ["teacher,student", "method"]
    assert set(runs["seed"].dropna()) == {0, 1}
    tex = (d / "report.tex").read_text()
    assert "wrn\\_40\\_2 $\\rightarrow$ wrn\\_16\\_2" in tex and "70.25 $\\pm$ 0.35" in tex
    head = tex.split("\\toprule\n")[1].split("\\midrule")[0]
    assert head.count("\\\\") == 1 and head.startswith(
        "teacher $\\rightarrow$ student \\textbackslash{} method & vanilla & vanilla published &")
    assert tex.count("\\textbf{") == 3 + 1 and "\\textbf{73.00} / 72.75 + running" in tex
    assert "mean over 1-2 seeds ($\\pm$ std, n); \\textbf{bold}: the highest per row." in tex
    notes = [line for line in tex.splitlines() if "note:" in line]  # only resnet56 is beaten
    assert notes == ["% note: the teacher resnet56 (72.0 %) is weaker than 3 of the 7 students it "
                     "taught on cifar100 (best 73.5 %): they beat it, so it is no upper bound here."]
    assert (d / "heatmap.png").read_bytes()[:4] == PNG and (d / "curves.png").read_bytes()[:4] == PNG


class FakeClient:
    """Metric histories only (no MLflow store: cheap): ``{run_id: {name: [values]}}``."""

    def __init__(self, curves: dict[str, dict[str, list[float]]]):
        self.curves = curves

    def get_metric_history(self, run_id: str, name: str) -> list[Metric]:
        return [Metric(name, v, 0, i + 1) for i, v in enumerate(self.curves[run_id].get(name, []))]


def test_sixteen_curves_are_small_multiples_with_titles(tmp_path):
    """A 4 x 4 grid: 4 panels of 4 distinct colours each, one legend outside the axes, titles
    everywhere; runs recorded as ``acc/val`` (the MLflow-UI name) and under the two names earlier versions
    used (``val/acc``, ``val_acc``) all drawn."""
    from matplotlib.figure import Figure

    from kdsweep.report import frame, plots
    from kdsweep.report.layout import build_tables
    from kdsweep.report.tables import Child

    points, kids, curves = [], [], {}
    for i, a in enumerate((0.2, 0.4, 0.6, 0.8)):
        for j, t in enumerate((2, 4, 8, 16)):
            rid = f"r{i}{j}"
            points.append({"label": None, "values": {"method.alpha": a, "method.T": t}})
            kids.append(Child(rid, "FINISHED", 0, 4 * i + j, {"method.alpha": str(a),
                                                             "method.T": str(t)},
                              {"best_val_acc": 70 + i + j / 10}, {}))
            curves[rid] = {("acc/val", "val/acc", "val_acc")[j % 3]: [60 + i + j + e for e in range(5)]}
    tables = build_tables({"space": {"points": points}}, kids, "best_val_acc")
    frame.fill(tables, "best_val_acc")
    client = FakeClient(curves)
    assert plots._History(client)("r01") == [(e + 1, 61.0 + e) for e in range(5)]
    assert plots._History(client)("r00") == [(e + 1, 60.0 + e) for e in range(5)]
    seen = {}
    real = Figure.savefig

    def spy(fig, path, *a, **k):
        seen[Path(path).name] = fig
        return real(fig, path, *a, **k)

    Figure.savefig = spy
    try:
        assert plots.curves(client, tables, tmp_path / "curves.png", "grid") is not None
        plots.heatmap(tables, tmp_path / "heatmap.png", "best_val_acc", "grid")
    finally:
        Figure.savefig = real
    fig = seen["curves.png"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 and [ax.get_title() for ax in axes] == [
        "method.alpha = 0.2", "method.alpha = 0.4", "method.alpha = 0.6", "method.alpha = 0.8"]
    assert {ax.get_xlabel() for ax in axes} == {"epoch"}
    assert axes[0].get_ylabel() == "validation accuracy (%)"
    assert fig._suptitle.get_text() == "grid"
    colours = [tuple(line.get_color()) for line in axes[0].get_lines()]
    assert len(colours) == 4 and len(set(colours)) == 4
    assert [tuple(line.get_color()) for line in axes[3].get_lines()] == colours  # same per T
    (legend,) = fig.legends                                   # one legend, outside the axes
    assert [t.get_text() for t in legend.get_texts()] == [
        "method.T = 2", "method.T = 4", "method.T = 8", "method.T = 16"]
    assert not any(ax.get_legend() for ax in axes)
    heat = seen["heatmap.png"]
    assert heat._suptitle.get_text() == "grid"
    ax, bar = heat.axes                                       # the axes name the swept keys
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("method.T", "method.alpha")
    assert bar.get_ylabel() == "best val acc (%)"             # the colour bar names the metric
    assert (tmp_path / "curves.png").read_bytes()[:4] == PNG


# ------------------------------------------------------------------------ published tables
def test_published_tables_are_consistent_and_unknown_ids_are_one_line():
    from kdsweep.errors import KDSweepError
    from kdsweep.models import list_models
    from kdsweep.report.published import get_published, table_ids

    models = set(list_models())
    assert {"pkudavidguan_cifar100", "pkudavidguan_cinic10", "pkudavidguan_kd_grid",
            "wangziren1_tricks", "wangziren1_shufflenet", "wangziren1_kd_grid", "wangziren1_resnet",
            "keti_cifar10", "keti_imagenet", "keti_size", "crd_dkd_cifar100",
            "modreduce_cifar100", "logit_stand_cifar100", "dist_cifar100"} == set(table_ids())
    for tid in table_ids():
        t = get_published(tid)
        assert t.source and "seed 00" not in (t.source + t.note).lower()
        assert {r for r, _ in t.values} <= set(t.rows) and {c for _, c in t.values} <= set(t.cols)
        for row in t.rows:  # pair rows name kdsweep models
            if " -> " in row:
                assert set(row.split(" (")[0].split(" -> ")) <= models, (tid, row)
    crd = get_published("crd_dkd_cifar100")
    assert crd.value("resnet32x4 -> ShuffleV2", "dkd") == 77.07
    assert crd.value("resnet110 -> resnet20", "dkd") is None          # "-" in the source
    assert crd.value("vgg13 -> vgg8", "pkt") == 72.88
    assert crd.metric("kd") == "final_val_acc" and crd.metric("dkd") == "best_val_acc"
    assert get_published("modreduce_cifar100").value("resnet32x4 -> vgg13", "modreduce") == 79.51
    assert get_published("pkudavidguan_kd_grid").value("0.6", "4") == 74.9
    with pytest.raises(KDSweepError) as e:
        get_published("nope")
    assert "\n" not in str(e.value) and "valid: " in str(e.value)


def test_train_val_gaps_beside_the_published_ones():
    """wangziren1's resnet table reports train-val gaps: measured (mean) and published, per row."""
    from kdsweep.report import frame
    from kdsweep.report.layout import build_tables
    from kdsweep.report.published import get_published
    from kdsweep.report.tables import Child

    points = [{"label": "tv_resnet18", "values": {"student": "tv_resnet18", "method": "ce",
                                                  "seed": s}} for s in (0, 1)]
    kids = [Child(f"r{s}", "FINISHED", s, s, {"student": "tv_resnet18", "method": "ce",
                                               "seed": str(s)},
                  {"best_val_acc": 79.0 + s, "final_val_acc": 78.0, "train_val_gap": 14.0 + s},
                  {"dataset": "mini_imagenet"}) for s in (0, 1)]
    tables = build_tables({"space": {"points": points}, "report": {"label_header": "run"}}, kids,
                          "best_val_acc")
    frame.fill(tables, "best_val_acc", get_published("wangziren1_resnet"))
    md = tables[0].markdown("best_val_acc")
    assert "| run | best / last | published | Δ | train-val gap (published) |" in md
    assert "| tv_resnet18 | **79.50 ± 0.71** / 78.00 ± 0.00 (n=2) | 79.11 | +0.39 | 14.50 (14.17) |" in md


# ------------------------------------------------------------------ what a paper can use
@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the report saves, by file name."""
    from matplotlib.figure import Figure

    seen, real = {}, Figure.savefig

    def spy(fig, path, *a, **k):
        seen[Path(path).name] = fig
        return real(fig, path, *a, **k)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def _smoke_grid(tmp_path: Path, teacher_acc: float, direction: str = "maximize"):
    """A 2 x 2 alpha x T grid of resnet14 -> resnet8 on the embedded set, as debug=smoke makes
    it: the sweep's own overrides in sweep.json's ``fixed``, children that ran only their point."""
    store = Store(tmp_path)
    tags = {"dataset": "embedded", "teacher": "resnet14", "student": "resnet8", "method": "kd"}
    teacher = store.child(None, None, "method=ce student=resnet14", teacher_acc, method="ce",
                          student="resnet14", teacher="none", dataset="embedded")
    parent = store.parent("g")
    points, accs = [], {(0.2, 2): 22.0, (0.2, 4): 25.5, (0.8, 2): 23.0, (0.8, 4): 24.0}
    for i, ((a, t), acc) in enumerate(accs.items()):
        points.append({"label": None, "values": {"method.alpha": a, "method.T": t}})
        rid = store.child(parent, i, f"method.alpha={a} method.T={t}", acc, curve=(acc - 3, acc),
                          teacher_run_id=teacher, **tags)
        store.client.log_param(rid, "schedule.epochs", "4")
    d = tmp_path / "multirun" / "g"
    info = sweep_json(d, store, parent, {
        "params": {"method.alpha": {"type": "float"}, "method.T": {"type": "int"}},
        "fixed": ["experiment=alpha_t_grid_wrn", "debug=smoke", "schedule.lr=0.1"],
        "axes": [["method.alpha", [0.2, 0.8]], ["method.T", [2, 4]]], "points": points})
    info["direction"] = direction
    (d / "sweep.json").write_text(json.dumps(info))
    return store, d


def test_teacher_weaker_than_some_students_is_named(tmp_path, figures):
    store, d = _smoke_grid(tmp_path, teacher_acc=24.0)          # students 22.0, 25.5, 23.0, 24.0
    rep = write_report(d, log_to_parent=False)
    assert rep.notes == ["note: the teacher resnet14 (24.0 %) is weaker than 1 of the 4 students "
                         "it taught on embedded (best 25.5 %): they beat it, so it is no upper "
                         "bound here."]
    store, d = _smoke_grid(tmp_path / "strong", teacher_acc=25.5)   # as good as the best: silent
    assert write_report(d, log_to_parent=False).notes == []


def test_weak_teacher_flagged_and_the_baseline_command_fills_the_gain(tmp_path, figures):
    store, d = _smoke_grid(tmp_path, teacher_acc=19.9)
    rep = write_report(d, log_to_parent=False)
    (note,) = rep.notes
    assert note.startswith("note: the teacher resnet14 (19.9 %) is weaker than every student it "
                           "taught on embedded (22.0-25.5 %): distillation from it measures little")
    cmd = ("python run.py method=ce student=resnet8 dataset=embedded experiment=alpha_t_grid_wrn "
           "debug=smoke schedule.lr=0.1")        # the sweep's own overrides, not the swept keys
    assert "`python run.py method=ce student=resnet14 dataset=embedded experiment=" in note
    assert "schedule.epochs=40`" in note and "teacher.min_val_acc=" in note
    assert "**note:** the teacher resnet14" in rep.markdown
    assert f"not run: `{cmd}`" in rep.markdown
    assert "| 25.50 (0.2, 4) |  |" in rep.markdown                          # no gain yet
    assert f"% {note}" in (d / "report.tex").read_text()
    heat = figures["heatmap.png"]
    assert heat._suptitle.get_text() == "s: best val acc (%), 1 seed"      # not "mean over"
    assert any("weaker than every student" in t.get_text().replace("\n", " ")
               for t in heat.axes[0].texts)
    ax = heat.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("method.T", "method.alpha")
    assert figures["curves.png"]._suptitle.get_text() == "s: validation accuracy per epoch"

    # Running the command (here: a finished ce run of resnet8 on the set) fills the gain.
    store.child(None, None, cmd, 24.5, method="ce", student="resnet8", teacher="none",
                dataset="embedded")
    rep = write_report(d, log_to_parent=False)
    assert "not run:" not in rep.markdown and "| 25.50 (0.2, 4) | +1.00 |" in rep.markdown


def test_best_cell_follows_the_sweeps_direction(tmp_path):
    _, d = _smoke_grid(tmp_path, teacher_acc=30.0, direction="minimize")
    rep = write_report(d, log_to_parent=False)
    assert rep.notes == []                                   # a teacher better than its students
    (table,) = rep.tables
    assert [[c.best for c in row] for row in table.cells] == [[True, False], [False, False]]
    assert "**bold** = best (lowest)" in rep.markdown
    tex = (d / "report.tex").read_text()
    assert "\\textbf{22.00}" in tex and "the lowest overall" in tex and "note:" not in tex


def test_seed_counts_and_list_labels_in_the_titles(tmp_path, figures):
    """Cells of several seeds say "mean over N seeds"; bars name their axes."""
    _, _, d, _ = _benchmark(tmp_path)
    write_report(d, log_to_parent=False)
    heat = figures["heatmap.png"]
    assert heat._suptitle.get_text() == ("s: best val acc (%), mean over 1-2 seeds; "
                                         "Δ = measured - published")
    assert (heat.axes[0].get_xlabel(), heat.axes[0].get_ylabel()) == ("method", "teacher -> student")
    assert figures["curves.png"]._suptitle.get_text().endswith(
        "mean over 1-2 seeds (band: min-max)")
    store = Store(tmp_path / "b")
    parent = store.parent("l")
    for i, lab in enumerate(("steplr", "cosinlr")):
        store.child(parent, i, f"schedule={lab}", 70.0 + i)
    d = tmp_path / "l"
    sweep_json(d, store, parent, {"params": {}, "points": [
        {"label": lab, "values": {"schedule": lab}} for lab in ("steplr", "cosinlr")]},
        {"label_header": "tricks"})
    write_report(d, log_to_parent=False)
    (ax,) = figures["bars.png"].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("best val acc (%)", "tricks")
    assert ax.get_title() == "s: best val acc (%), 1 seed"
    assert pd.read_csv(d / "report.csv").columns[1] == "tricks"
