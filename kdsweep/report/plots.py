"""The PNGs of a sweep report (matplotlib, Agg backend): heatmap, bars, accuracy curves.

Every figure has a title saying what the numbers are and how many seeds each is the mean of
(``1 seed`` when no cell has more), and axes named by the swept keys (``method.T`` on x,
``method.alpha`` on y; ``teacher -> student``; a point label's header); the colour bar names the
metric. Notes (a teacher weaker than its students) are printed under the heatmap or bars.
Curves are small multiples (one panel per table row, one line per
column, so a 4 x 4 grid is 4 panels of 4 lines) with distinct colours, the legend outside the
axes, each cell's mean over its seeds with a min-max band, and the student trained alone (grey,
dashed) and the teacher (black, dotted) of the panel's pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdsweep.report.tables import VAL_ACC, metric_label

if TYPE_CHECKING:
    from kdsweep.report.baselines import Baseline
    from kdsweep.report.tables import Cell, Table

MAX_PANELS = 24


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list[Any]:
    plt = _plt()
    if n <= 18:  # tab20's strong colours, then their light partners; no grey (the baselines')
        order = [i for i in (*range(0, 20, 2), *range(1, 20, 2)) if i not in (14, 15)]
        return [plt.get_cmap("tab20")(i) for i in order[:n]]
    return [plt.get_cmap("turbo")(i / max(1, n - 1)) for i in range(n)]


def _annotation(cell: Cell) -> str:
    if not cell.n:
        return cell.pending().replace(" (", "\n(")
    s = f"{cell.value:.2f}"
    if cell.std is not None:
        s += f"\n±{cell.std:.2f}"
    if cell.delta is not None:
        s += f"\nΔ {cell.delta:+.2f}"
    if cell.pending():
        s += "\n+ " + cell.pending().split(" (")[0]
    return s


def axis_title(name: str) -> str:
    """An axis named by its keys: ``method.T``; ``teacher,student`` -> ``teacher -> student``."""
    return "teacher -> student" if name == "teacher,student" else name.replace(",", ", ")


def _footer(fig: Any, ax: Any, notes: Sequence[str]) -> None:
    """The notes' first clause (report.md has the rest), under the bottom axes' x label."""
    if not notes:
        return
    import textwrap

    width = max(50, int(fig.get_figwidth() * 16))
    text = "\n".join(textwrap.fill(n.split("; ", 1)[0] + " (report.md says more)", width)
                     for n in notes)
    ax.annotate(text, xy=(0, 0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -8),
                textcoords="offset points", ha="left", va="top", fontsize=7, color="#b00000",
                annotation_clip=False)


def heatmap(tables: Sequence[Table], path: Path, metric: str, title: str = "",
            notes: Sequence[str] = ()) -> Path:
    """One heatmap per pivot table, values (and ± std, Δ published) in the cells, the best outlined."""
    import numpy as np

    plt = _plt()
    n = len(tables)
    w = max(4.0, 0.9 * max(len(t.col_labels) for t in tables) + 2.5)
    h = max(3.0, 0.55 * max(len(t.row_labels) for t in tables) + 1.8)
    fig, axes = plt.subplots(n, 1, figsize=(w, h * n), squeeze=False)
    finite = [v for t in tables for row in t.values() for v in row if v is not None]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = None
    for ax, t in zip(axes[:, 0], tables, strict=True):
        data = np.array([[math.nan if v is None else v for v in row] for row in t.values()],
                        dtype=float)
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(t.col_labels)), t.col_labels, rotation=30 if len(t.col_labels) > 6
                      else 0, ha="right" if len(t.col_labels) > 6 else "center")
        ax.set_yticks(range(len(t.row_labels)), t.row_labels)
        ax.set_xlabel(axis_title(t.col_name or t.col_key or ""))
        ax.set_ylabel(axis_title(t.row_name or t.row_key or ""))
        if t.title:
            ax.set_title(t.title, fontsize=9)
        small = 6 if len(t.col_labels) > 6 else 8
        for i, row in enumerate(t.cells):
            for j, cell in enumerate(row):
                txt = _annotation(cell)
                if not txt:
                    continue
                v = data[i, j]
                light = not math.isnan(v) and (v - vmin) / (vmax - vmin) < 0.5
                ax.text(j, i, txt, ha="center", va="center", fontsize=small,
                        color="white" if light else "black",
                        fontweight="bold" if cell.best else "normal")
                if cell.best:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                               edgecolor="red", linewidth=2))
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), label=metric_label(metric), shrink=0.8)
    fig.suptitle(title or f"{metric_label(metric)} per cell", fontsize=10)
    _footer(fig, axes[-1, 0], notes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def bars(tables: Sequence[Table], path: Path, metric: str, title: str = "",
         notes: Sequence[str] = ()) -> Path:
    """Horizontal bars, one per row of the list tables (± std; published numbers as diamonds)."""
    plt = _plt()
    labels, cells = [], []
    for t in tables:
        head = t.extra_header()
        for i, (lab, row) in enumerate(zip(t.row_labels, t.cells, strict=True)):
            ex = [f"{k}={x}" for k, x in zip(head, t.extra_row(i), strict=True) if x]
            labels.append(lab if not ex else f"{lab}: " + ", ".join(ex))
            cells.append(row[0])
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(labels) + 1.4))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, [c.value or 0.0 for c in cells],
            xerr=[c.std or 0.0 for c in cells],
            color=["tab:red" if c.best else ("tab:blue" if c.n else "#dddddd") for c in cells])
    pub = [(y, c.published) for y, c in zip(ys, cells, strict=True) if c.published is not None]
    if pub:
        ax.scatter([p for _, p in pub], [y for y, _ in pub], marker="D", color="black", zorder=3,
                   label="published")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    shown = [c.value for c in cells if c.n] + [c.published for c in cells if c.published]
    lo = math.floor(min(shown) - 3) if shown else 0.0   # zoomed: differences of a point show
    hi = math.ceil(max(shown) + 1) if shown else 1.0
    ax.set_xlim(max(0.0, lo), hi)
    for y, c in zip(ys, cells, strict=True):
        if c.n:
            ax.text(c.value, y, f"{c.value:.2f} ", va="center", ha="right", fontsize=8,
                    color="white")
        else:
            ax.text(max(0.0, lo), y, f" {c.pending() or 'not run'}", va="center", fontsize=8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel(metric_label(metric))
    heads = list(dict.fromkeys(t.row_name or t.corner for t in tables if t.row_name or t.corner))
    keys = list(dict.fromkeys(k for t in tables for k in (t.extra_keys or t.extra_cols)))
    ax.set_ylabel(", ".join(heads) + (f": {', '.join(keys)}" if keys else ""))
    ax.set_title(title or f"{metric_label(metric)} per point", fontsize=10)
    _footer(fig, ax, notes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


class _History:
    """Per-epoch validation accuracy of runs (``acc/val``, or its former names), fetched once each."""

    def __init__(self, client: Any):
        self.client, self.cache = client, {}

    def __call__(self, run_id: str) -> list[tuple[int, float]]:
        if run_id not in self.cache:
            hist = []
            for name in VAL_ACC:
                hist = self.client.get_metric_history(run_id, name)
                if hist:
                    break
            self.cache[run_id] = sorted((m.step, m.value) for m in hist)
        return self.cache[run_id]


def _mean_curve(hist: _History, cell: Cell) -> tuple[list[int], list[float], list[float], list[float]]:
    by_step: dict[int, list[float]] = {}
    for c in cell.runs:
        for step, v in hist(c.run_id):
            by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    return (steps, [sum(by_step[s]) / len(by_step[s]) for s in steps],
            [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])


def _named(key: str | None, label: str) -> str:
    """``method.alpha = 0.2`` for a plain override key; pairs and point labels speak for
    themselves."""
    if not key or "," in key or key in ("teacher", "student", "_label_"):
        return label
    return f"{key.lstrip('+~')} = {label}"


def _panels(tables: Sequence[Table]) -> list[tuple[str, list[tuple[str, Cell]]]]:
    """(panel title, [(line label, cell)]): a pivot's rows, or one panel per list table."""
    out = []
    for t in tables:
        if t.kind == "pivot":
            for lab, row in zip(t.row_labels, t.cells, strict=True):
                name = _named(t.row_key, lab)
                name = f"{t.title}: {name}" if t.title and len(tables) > 1 else name
                out.append((name, [(_named(t.col_key, c), cell)
                                   for c, cell in zip(t.col_labels, row, strict=True)]))
        else:
            out.append((t.title or "runs", [(lab, row[0]) for lab, row in
                                            zip(t.row_labels, t.cells, strict=True)]))
    return out


def _pair_of(cells: Sequence[Cell]) -> tuple[str, str, str] | None:
    for cell in cells:
        for c in cell.runs:
            t, s, d = c.tags.get("teacher"), c.tags.get("student"), c.tags.get("dataset")
            if t and s and d and t != "none" and c.tags.get("method") != "ce":
                return (t, s, d)
    return None


def curves(client: Any, tables: Sequence[Table], path: Path, title: str = "",
           baselines: Mapping[tuple[str, str, str], tuple[Baseline, Baseline]] | None = None
           ) -> Path | None:
    """Validation accuracy per epoch, small multiples; None when no run has a curve yet."""
    hist = _History(client)
    panels = [(name, [(lab, cell) for lab, cell in lines if cell.runs])
              for name, lines in _panels(tables)]
    panels = [p for p in panels if p[1]][:MAX_PANELS]
    if not panels or not any(hist(c.run_id) for _, lines in panels for _, cell in lines
                             for c in cell.runs):
        return None
    plt = _plt()
    ncols = min(3, math.ceil(math.sqrt(len(panels))))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False,
                             sharey=True)
    from matplotlib.ticker import MaxNLocator

    handles: dict[str, Any] = {}
    names = list(dict.fromkeys(lab for _, lines in panels for lab, _ in lines))
    colour_of = dict(zip(names, _colours(len(names)), strict=True))  # one colour per column
    for k, (name, lines) in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        for lab, cell in lines:
            colour = colour_of[lab]
            xs, ys, lo, hi = _mean_curve(hist, cell)
            if not xs:
                continue
            pruned = any("pruned_at_epoch" in c.tags for c in cell.runs)
            line, = ax.plot(xs, ys, color=colour, linewidth=2.4 if cell.best else 1.2,
                            linestyle="--" if pruned else "-", marker="o" if len(xs) < 15 else None,
                            markersize=3)
            if len(cell.runs) > 1:
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
            handles.setdefault(lab + (" (pruned)" if pruned else ""), line)
        pair = _pair_of([c for _, c in lines])
        shown = {c.run_id for _, cell in lines for c in cell.runs}
        _baselines(ax, hist, (baselines or {}).get(pair), handles, shown)
        if pair and " -> " not in name:
            name = f"{pair[0]} -> {pair[1]}" if name == pair[1] else f"{name} ({pair[0]} -> {pair[1]})"
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch")
        if k % ncols == 0:
            ax.set_ylabel("validation accuracy (%)")
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    keys = list(dict.fromkeys(axis_title(t.col_name) for t in tables  # labels need a name
                              if t.kind == "pivot" and t.col_name and _named(t.col_key, "") == ""))
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper left",
               bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False,
               ncol=1 if len(handles) <= 24 else 2, title=", ".join(keys) or None,
               title_fontsize=8)
    fig.suptitle(title or "Validation accuracy per epoch", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.4 * nrows)))  # room for the title
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _baselines(ax: Any, hist: _History, pair: tuple[Baseline, Baseline] | None,
               handles: dict[str, Any], shown: set[str]) -> None:
    """The student alone (grey, dashed; unless it is a line of the panel already) and the
    teacher's best accuracy (black, dotted)."""
    if pair is None:
        return
    teacher, alone = pair
    if alone is not None and alone.run_id and alone.run_id not in shown:
        pts = hist(alone.run_id)
        if pts:
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.45",
                            linestyle="--", linewidth=1.2)
            handles.setdefault("student alone (ce)", line)
    if teacher is not None and teacher.best is not None:
        line = ax.axhline(teacher.best, color="black", linestyle=":", linewidth=1.2)
        handles.setdefault("teacher (best)", line)
