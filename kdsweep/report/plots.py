"""The PNGs of a sweep report (matplotlib, Agg backend): heatmap, bars, accuracy curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdsweep.report.tables import Table


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def heatmap(tables: Sequence[Table], path: Path, metric: str) -> Path:
    """One heatmap per pivot table (rows x cols as in the Markdown), values written in the cells,
    the best cell outlined, missing points grey."""
    import numpy as np

    plt = _plt()
    n = len(tables)
    w = max(4.0, 1.1 * max(len(t.col_labels) for t in tables) + 2.0)
    h = max(3.0, 0.7 * max(len(t.row_labels) for t in tables) + 1.6)
    fig, axes = plt.subplots(1, n, figsize=(w * n, h), squeeze=False)
    finite = [v for t in tables for row in t.values() for v in row if v is not None]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = None
    for ax, t in zip(axes[0], tables, strict=True):
        data = np.array([[math.nan if v is None else v for v in row] for row in t.values()],
                        dtype=float)
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(t.col_labels)), t.col_labels)
        ax.set_yticks(range(len(t.row_labels)), t.row_labels)
        ax.set_xlabel(t.col_key or "")
        ax.set_ylabel(t.row_key or "")
        if t.title:
            ax.set_title(t.title, fontsize=9)
        for i, row in enumerate(t.cells):
            for j, cell in enumerate(row):
                txt = cell.text().strip("*")
                if not txt:
                    continue
                v = data[i, j]
                light = not math.isnan(v) and (v - vmin) / (vmax - vmin) < 0.5
                ax.text(j, i, txt if len(txt) < 9 else txt.replace(" (", "\n("), ha="center",
                        va="center", fontsize=8, color="white" if light else "black",
                        fontweight="bold" if cell.best else "normal")
                if cell.best:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                               edgecolor="red", linewidth=2))
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), label=f"{metric} (%)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def bars(tables: Sequence[Table], path: Path, metric: str) -> Path:
    """Horizontal bars, one per row of the list tables (missing/pruned/failed rows empty)."""
    plt = _plt()
    labels, values, best = [], [], []
    for t in tables:
        for lab, ex, row in zip(t.row_labels, t.extra or [[]] * len(t.row_labels), t.cells,
                                strict=True):
            v = row[0].value if row[0].child is not None and row[0].child.status == "FINISHED" else None
            labels.append(lab if not ex else f"{lab}: " + ", ".join(
                f"{k}={x}" for k, x in zip(t.extra_cols, ex, strict=True)))
            values.append(v)
            best.append(row[0].best)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, [v or 0.0 for v in values],
            color=["tab:red" if b else ("tab:blue" if v is not None else "#dddddd")
                   for v, b in zip(values, best, strict=True)])
    for y, v in zip(ys, values, strict=True):
        ax.text((v or 0.0), y, f" {v:.2f}" if v is not None else " n/a", va="center", fontsize=8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel(f"{metric} (%)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def curves(client: Any, tables: Sequence[Table], path: Path, metric: str = "val/acc") -> Path | None:
    """``val_acc`` per epoch of every child shown in the tables; the best one drawn thick."""
    plt = _plt()
    series = []
    for t in tables:
        for i, row in enumerate(t.cells):
            for j, cell in enumerate(row):
                c = cell.child
                if c is None:
                    continue
                hist = sorted(client.get_metric_history(c.run_id, metric)
                              or client.get_metric_history(c.run_id, metric.replace("/", "_")),
                              key=lambda m: m.step)  # val_acc: runs recorded before prefixes
                if not hist:
                    continue
                if t.kind == "pivot":
                    from kdsweep.report.tables import short

                    label = (f"{short(t.row_key or '')}={t.row_labels[i]}, "
                             f"{short(t.col_key or '')}={t.col_labels[j]}")
                else:
                    label = t.row_labels[i]
                series.append((label, [m.step for m in hist], [m.value for m in hist], cell,
                               "pruned_at_epoch" in c.tags))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, xs, ys, cell, pruned in series:
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=2.5 if cell.best else 1.0,
                linestyle="--" if pruned else "-", label=label + (" (pruned)" if pruned else ""))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(alpha=0.3)
    if len(series) <= 24:
        ax.legend(fontsize=7, ncol=2 if len(series) > 8 else 1, loc="best")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
