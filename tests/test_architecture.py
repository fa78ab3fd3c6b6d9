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


def dependency_rules() -> dict[str, set[str]]:
    """The table of docs/architecture.md, "Dependency rules": package -> what it may import."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- BEGIN dependency rules -->")[1].split("<!-- END dependency rules -->")[0]
    rules = {}
    for line in block.strip().splitlines()[2:]:  # after the header and its rule
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            rules[cells[0].strip("`")] = {p.strip() for p in cells[1].split(",") if p.strip() != "–"}
    return rules


def package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def kdsweep_imports(path: Path) -> set[str]:
    """Dotted kdsweep modules ``path`` imports anywhere (``from kdsweep import x`` -> kdsweep.x)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("kdsweep."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "kdsweep":
                out.update(f"kdsweep.{a.name}" for a in node.names)
            elif node.module.startswith("kdsweep."):
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def extension_packages() -> set[str]:
    from kdsweep.extensions import EXTENSIONS

    return {name.split(".")[1] for name in EXTENSIONS}


def test_layers_follow_the_documented_table():
    rules, ext = dependency_rules(), extension_packages()
    modules = sorted(PACKAGE.rglob("*.py"))
    assert {package_of(p) for p in modules} - {"__init__", "__main__"} - ext == set(rules), \
        "every package but an extension has a row in docs/architecture.md's dependency rules"
    assert not ext & set(rules), "an extension has no row: it may import any layer"
    bad = []
    for path in modules:
        own = package_of(path)
        if own in ext:
            continue
        for m in kdsweep_imports(path):
            target = m.split(".")[1]
            if target in ext:  # only kdsweep/extensions.py names an extension (as a string)
                bad.append(f"{path.relative_to(ROOT)} imports the extension {m}")
            elif target != own and target in rules and target not in rules.get(own, set()):
                bad.append(f"{path.relative_to(ROOT)} imports {m}")
    assert not bad, bad


def test_no_circle_between_modules():
    """No module imports another that (directly or through others) imports it back."""
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {n: {m for m in kdsweep_imports(p) if m in names and m != n
                 and not n.startswith(m + ".")}  # a package's __init__ re-exports its modules
             for n, p in names.items() if not n.endswith("__init__")}
    graph = {n: {m for m in deps if not names[m].name == "__init__.py"} for n, deps in graph.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph.get(start, ()))
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return seen

    circles = sorted(n for n in graph if n in reach(n))
    assert not circles, circles


def test_private_names_stay_in_their_module():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdsweep"):
                bad += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


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


@pytest.mark.parametrize("nodes,says", [({"train": dict}, "exists already"),
                                        ({"nosuch.x": dict}, "is below no node")])
def test_an_extension_node_extends_the_schema_never_replaces_it(monkeypatch, nodes, says):
    """kdsweep/extensions.py: a node an extension adds must be new, below an existing node."""
    from dataclasses import dataclass

    from kdsweep import extensions
    from kdsweep.config import schema

    @dataclass
    class Node:
        x: int = 0

    monkeypatch.setattr(extensions, "nodes", lambda: {k: Node for k in nodes})
    with pytest.raises(ValueError, match=says):
        schema._with_extensions(schema.RunConfig)
