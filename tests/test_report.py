"""kdsweep.report on a real SQLite MLflow store holding hand-made parent/child runs (no training):
the seeds' layouts, sparse grids, best cell, pruned/failed cells, --metric, the CLI, the plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

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

    def child(self, parent: str, trial: int, overrides: str, best: float | None,
              status: str = "FINISHED", curve: tuple[float, ...] = (), **tags: str) -> str:
        r = self.client.create_run(self.exp, tags={"mlflow.parentRunId": parent,
                                                   "optuna.trial": str(trial), **tags})
        rid = r.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric("val_acc", v, now, i + 1) for i, v in enumerate(curve)]
        if best is not None:
            metrics += [Metric("best_val_acc", best, now, 0),
                        Metric("final_val_acc", best - 1.0, now, 0)]
        self.client.log_batch(rid, metrics=metrics, params=[Param("overrides", overrides)],
                              tags=[RunTag("x", "y")])
        self.client.set_terminated(rid, status)
        return rid


SEED_003 = [(0.9, 1, 79.64), (0.9, 3, 81.10), (0.9, 5, 80.65), (0.9, 10, 80.875),
            (0.7, 3, 81.27), (0.6, 3, 81.28), (0.5, 3, 80.78)]


def sweep_json(path: Path, store: Store, parent: str, space: dict, report: dict | None = None):
    path.mkdir(parents=True, exist_ok=True)
    info = {"study_name": "s", "parent_run_id": parent, "tracking_uri": store.uri,
            "experiment": "kdsweep", "space": space, "report": report or {}}
    (path / "sweep.json").write_text(json.dumps(info))
    return info


def test_sparse_seed_003_table(tmp_path):
    store = Store(tmp_path)
    parent = store.parent("s")
    for i, (a, t, acc) in enumerate(SEED_003):
        store.child(parent, i, f"+experiment=x method.alpha={a} method.T={t} sweep.trial_number={i}",
                    acc, curve=(acc - 5, acc - 1))
    # A failed earlier attempt of one point: the finished run is shown.
    store.child(parent, 99, "method.alpha=0.9 method.T=1", None, status="FAILED")
    points = [{"label": None, "values": {"method.alpha": a, "method.T": t}} for a, t, _ in SEED_003]
    d = tmp_path / "multirun" / "s"
    sweep_json(d, store, parent, {"params": {}, "points": points})

    rep = write_report(d)
    (table,) = rep.tables
    assert table.row_labels == ["0.9", "0.7", "0.6", "0.5"]        # the seed's order
    assert table.col_labels == ["1", "3", "5", "10"]
    expected = {(str(a), str(t)): acc for a, t, acc in SEED_003}
    for i, r in enumerate(table.row_labels):
        for j, c in enumerate(table.col_labels):
            assert table.values()[i][j] == expected.get((r, c))      # None: not run, empty cell
    lines = rep.markdown.splitlines()
    assert "| alpha \\ T | 1 | 3 | 5 | 10 |" in lines
    assert "| 0.9 | 79.64 | 81.10 | 80.65 | 80.88 |" in lines
    assert "| 0.6 |  | **81.28** |  |  |" in lines                   # best in bold, sparse
    assert rep.markdown.count("**") == 2 + 2  # the best cell, and "**bold**" in the note
    for name in ("report.md", "heatmap.png", "curves.png"):
        assert (d / name).is_file()
    assert (d / "heatmap.png").read_bytes()[:4] == PNG
    logged = {a.path for a in store.client.list_artifacts(parent, "report")}
    assert logged == {"report/report.md", "report/heatmap.png", "report/curves.png"}


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
    assert table.cells[0][0].text() == "**61.50**"


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
