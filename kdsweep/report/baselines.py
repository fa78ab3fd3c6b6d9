"""Did distillation help? The teacher and the student trained alone beside the sweep's best cell.

For every (teacher, student, data set) the sweep's distillation runs used (their MLflow tags):

* **teacher**: the run the children name in their ``teacher_run_id`` tag (the one they were
  distilled from), else their ``teacher_val_acc`` metric (a ``teacher.checkpoint`` file), else the
  best FINISHED ``ce`` run of the teacher architecture on the data set;
* **student alone**: the best FINISHED ``ce`` run of the student architecture on the data set
  (tags ``method=ce``, ``student=ARCH``, ``dataset=NAME``) in the sweep's experiment;

and when there is none, the command that makes it: ``method=ce`` of the student with the
sweep's own overrides (``space.fixed`` of ``sweep.json``: ``experiment=``, ``debug=smoke``,
``dataset.root=``, ``schedule.*``...) and the distillation run's other point values (a recipe's
``schedule.lr``), less the swept axes, ``method.*``, the models and the seed; so running it fills
the gain column. The same runs give the grey curves of ``curves.png``. A teacher weaker than
every student it taught is named (:func:`teacher_notes`): distillation from it measures little;
one weaker than some of them is named too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdsweep.report.published import Published
from kdsweep.report.tables import BEST, LAST, Child, Table, higher_is_better

# Overrides that make the trial what it is; the rest (experiment=, debug=, dataset=,
# dataset.root=, schedule.*) are repeated in the command that trains a missing baseline.
_OWN = ("method", "teacher", "student", "seed", "hydra", "sweep")


@dataclass
class Baseline:
    arch: str
    run_id: str | None = None
    best: float | None = None
    last: float | None = None
    how: str = ""           # "teacher of the runs", "best ce run", "checkpoint", or the command

    def text(self) -> str:
        if self.best is None:
            return f"not run: `{self.how}`" if self.how.startswith("python") else self.how
        last = f" / {self.last:.2f}" if self.last is not None else ""
        rid = f" (run {self.run_id[:8]})" if self.run_id else f" ({self.how})" if self.how else ""
        return f"{self.best:.2f}{last}{rid}"


@dataclass
class Pair:
    teacher: str
    student: str
    dataset: str
    children: list[Child] = field(default_factory=list)
    teacher_run: Baseline | None = None
    alone: Baseline | None = None
    best_cell: tuple[str, float] | None = None   # (where, value)
    published_row: str | None = None
    fixed: Sequence[str] = ()                    # the sweep's fixed overrides (commands)
    swept: Sequence[str] = ()


def pairs_of(children: Sequence[Child]) -> list[Pair]:
    """Every (teacher, student, data set) a distillation child ran, in order of appearance."""
    out: dict[tuple[str, str, str], Pair] = {}
    for c in children:
        t, s, d = c.tags.get("teacher"), c.tags.get("student"), c.tags.get("dataset")
        if not (t and s and d) or t == "none" or c.tags.get("method") == "ce":
            continue
        out.setdefault((t, s, d), Pair(t, s, d)).children.append(c)
    return list(out.values())


def _run_metrics(client: Any, run_id: str) -> tuple[float | None, float | None]:
    try:
        m = client.get_run(run_id).data.metrics
    except Exception:
        return None, None
    return m.get(BEST), m.get(LAST)


def _best_ce(client: Any, experiment_id: str, arch: str, dataset: str) -> Any:
    from kdsweep.tracking import find_best_run

    return find_best_run(client, experiment_id, {"method": "ce", "student": arch,
                                                 "dataset": dataset}, BEST)


def command(arch: str, dataset: str, example: Child | None, fixed: Sequence[str] = (),
            swept: Sequence[str] = ()) -> str:
    """``python run.py method=ce student=ARCH dataset=NAME`` plus the sweep's fixed overrides
    and the example run's other values, less the swept keys (see the module docstring)."""
    given = [*fixed, *(f"{k}={v}" for k, v in (example.coords.items() if example else ()))]
    rest: dict[str, str] = {}
    for ov in given:
        key, sep, _ = ov.partition("=")
        bare = key.lstrip("+~")
        if not sep or bare in swept or bare.split(".")[0].split("/")[0] in _OWN:
            continue
        rest.setdefault(bare, ov)
    head = ["python run.py method=ce", f"student={arch}"]
    head += [] if "dataset" in rest else [f"dataset={dataset}"]
    return " ".join([*head, *rest.values()])


def _teacher(client: Any, exp: str, p: Pair, fixed: Sequence[str], swept: Sequence[str]
             ) -> Baseline:
    ids = Counter(c.tags.get("teacher_run_id") for c in p.children if c.tags.get("teacher_run_id"))
    if ids:
        rid = ids.most_common(1)[0][0]
        best, last = _run_metrics(client, rid)
        how = "teacher of the runs" + (f"; {len(ids)} teacher runs used" if len(ids) > 1 else "")
        return Baseline(p.teacher, rid, best, last, how)
    accs = [c.metrics["teacher_val_acc"] for c in p.children if "teacher_val_acc" in c.metrics]
    if accs:
        return Baseline(p.teacher, None, accs[0], None, "teacher checkpoint")
    return _alone(client, exp, p.teacher, p.dataset, p.children[0] if p.children else None,
                  fixed, swept)


def _alone(client: Any, exp: str, arch: str, dataset: str, example: Child | None,
           fixed: Sequence[str] = (), swept: Sequence[str] = ()) -> Baseline:
    run = _best_ce(client, exp, arch, dataset)
    if run is None:
        return Baseline(arch, how=command(arch, dataset, example, fixed, swept))
    m = run.data.metrics
    return Baseline(arch, run.info.run_id, m.get(BEST), m.get(LAST), "best ce run")


def resolve(client: Any, experiment_id: str, children: Sequence[Child],
            tables: Sequence[Table], metric: str, fixed: Sequence[str] = (),
            swept: Sequence[str] = (), maximize: bool | None = None) -> list[Pair]:
    """The pairs with their teacher, student-alone run and best distilled cell; ``fixed``,
    ``swept``: the sweep's fixed overrides and swept keys (the commands of missing runs)."""
    pairs = pairs_of(children)
    hib = higher_is_better(metric) if maximize is None else maximize
    first: dict[int, tuple[int, int, int]] = {}
    for p in pairs:
        p.fixed, p.swept = fixed, swept
        p.teacher_run = _teacher(client, experiment_id, p, fixed, swept)
        p.alone = _alone(client, experiment_id, p.student, p.dataset, p.children[0], fixed, swept)
        ids = {c.run_id for c in p.children}
        for k, t in enumerate(tables):
            for i, (r, row) in enumerate(zip(t.row_labels, t.cells, strict=True)):
                for j, (col, cell) in enumerate(zip(t.col_labels, row, strict=True)):
                    if not ids & {c.run_id for c in cell.runs}:
                        continue
                    first.setdefault(id(p), (k, i, j))
                    if not cell.n:
                        continue
                    where = ", ".join(x for x in (r, col) if x)
                    if p.best_cell is None or (cell.value > p.best_cell[1]) == hib:
                        p.best_cell = (where, cell.value)
                    p.published_row = p.published_row or r
    return sorted(pairs, key=lambda p: first.get(id(p), (1 << 30,)))  # in the tables' order


def markdown(pairs: Sequence[Pair], metric: str, pub: Published | None) -> str:
    if not pairs:
        return ""
    head = ["teacher -> student (data set)", "teacher", "student alone",
            f"best distilled ({metric})", "gain over student alone"]
    show_pub = pub is not None and bool(pub.teacher or pub.student)
    if show_pub:
        head[2:2] = ["teacher published"]
        head[4:4] = ["student published"]
    lines = ["### Did distillation help?", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] + [":---:"] * (len(head) - 1)) + " |"]
    for p in pairs:
        best = f"{p.best_cell[1]:.2f} ({p.best_cell[0]})" if p.best_cell else "no finished run yet"
        alone = _value(p.alone, metric)
        gain = f"{p.best_cell[1] - alone:+.2f}" if p.best_cell and alone is not None else ""
        row = [f"{p.teacher} -> {p.student} ({p.dataset})", p.teacher_run.text(), p.alone.text(),
               best, gain]
        if show_pub:
            key = p.published_row or ""
            row[2:2] = [_g(pub.teacher.get(key))]
            row[4:4] = [_g(pub.student.get(key))]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Teacher and student alone: best / last epoch validation accuracy (%) of one "
              "`method=ce` run; a missing one is trained by the command shown."]
    return "\n".join(lines)


def _value(b: Baseline | None, metric: str) -> float | None:
    """A baseline's number in the cells' metric (the gain compares like with like)."""
    if b is None:
        return None
    return b.best if metric == BEST else b.last if metric == LAST else None


def teacher_notes(pairs: Sequence[Pair]) -> list[str]:
    """A line for each teacher weaker than students it taught (best_val_acc, %): every one (the
    sweep measures little), or some (the teacher is not the upper bound a reader assumes)."""
    out = []
    for p in pairs:
        t = p.teacher_run
        accs = [v for c in p.children if c.finished and (v := c.value(BEST)) is not None]
        if t is None or t.best is None or not accs or t.best >= max(accs):
            continue
        if t.best >= min(accs):
            above = sum(v > t.best for v in accs)
            out.append(f"note: the teacher {p.teacher} ({t.best:.1f} %) is weaker than {above} of "
                       f"the {len(accs)} students it taught on {p.dataset} (best {max(accs):.1f} "
                       "%): they beat it, so it is no upper bound here.")
            continue
        lo, hi = min(accs), max(accs)
        span = f"{lo:.1f} %" if len(accs) == 1 else f"{lo:.1f}-{hi:.1f} %"
        train = command(p.teacher, p.dataset, p.children[0], p.fixed, p.swept)
        epochs = p.children[0].params.get("schedule.epochs", "")
        more = f" schedule.epochs={10 * int(epochs)}" if epochs.isdigit() else " schedule.epochs=N"
        out.append(f"note: the teacher {p.teacher} ({t.best:.1f} %) is weaker than every student "
                   f"it taught on {p.dataset} ({span}): distillation from it measures little; "
                   f"train it longer (`{train}{more}`; distillation runs take the best ce run "
                   f"of {p.teacher}) and sweep again as a new study (hydra.sweeper.study_name="
                   "NAME) with teacher.min_val_acc=ACC, so that no weaker teacher is used.")
    return out


def _g(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def baseline_runs(pairs: Sequence[Pair]) -> Mapping[tuple[str, str, str], tuple[Baseline, Baseline]]:
    return {(p.teacher, p.student, p.dataset): (p.teacher_run, p.alone) for p in pairs}
