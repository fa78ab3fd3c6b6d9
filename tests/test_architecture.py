"""The architecture's rules, checked: one dependency direction, documented defaults = declared
defaults, type errors caught by Hydra at composition."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdsweep"


def imports_of(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_kdsweep_module_imports_the_hydra_plugin(path):
    assert not {m for m in imports_of(path) if m.split(".")[0] == "hydra_plugins"}


def test_layers_point_one_way():
    """models and data know nothing of methods, engine, run, sweep or tracking; methods nothing
    of the engine; the engine nothing of run, sweep or tracking."""
    forbidden = {
        "models": ("kdsweep.methods", "kdsweep.engine", "kdsweep.run", "kdsweep.sweep",
                   "kdsweep.tracking", "kdsweep.report"),
        "data": ("kdsweep.methods", "kdsweep.engine", "kdsweep.run", "kdsweep.sweep",
                 "kdsweep.tracking", "kdsweep.report"),
        "methods": ("kdsweep.engine", "kdsweep.run", "kdsweep.sweep", "kdsweep.tracking"),
        "engine": ("kdsweep.run", "kdsweep.sweep", "kdsweep.tracking", "kdsweep.report"),
        "tracking": ("kdsweep.run", "kdsweep.sweep", "kdsweep.engine", "kdsweep.report"),
    }
    bad = []
    for part, banned in forbidden.items():
        for path in (PACKAGE / part).rglob("*.py"):
            bad += [f"{path.relative_to(ROOT)} imports {m}" for m in imports_of(path)
                    if m.startswith(banned)]
    assert not bad


def test_modules_stay_small():
    big = [f"{p.relative_to(ROOT)}: {n}" for p in PACKAGE.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 400]
    assert not big


def test_documented_method_defaults_are_the_declared_ones():
    from kdsweep.methods.__main__ import block

    assert block() in (ROOT / "docs" / "methods.md").read_text(), (
        "docs/methods.md differs from the code: python -m kdsweep.methods --write docs/methods.md")


def test_user_facing_text_cites_papers_not_internal_seeds():
    hits = [f"{p.relative_to(ROOT)}" for p in [*PACKAGE.rglob("*.py"), *(ROOT / "conf").rglob("*.yaml")]
            if "seed 00" in p.read_text().lower()]
    assert not hits


@pytest.mark.parametrize("override,key", [("schedule.epochs=abc", "schedule.epochs"),
                                          ("method.alpha=abc", "method.alpha")])
def test_wrong_types_are_refused_by_hydra_naming_the_key(override, key, tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), override, "--cfg", "job"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert key in p.stderr and "abc" in p.stderr
    assert not (tmp_path / "mlflow.db").exists()
