"""The docs cannot drift from the code: every repository path, config key and ``python run.py``
command that README.md and docs/*.md name is checked against the code.

* a path of the repository in backticks (``kdsweep/run/preflight.py``, ``conf/debug/smoke.yaml``)
  exists;
* a config key in backticks (``schedule.lr``, ``method.alpha=0.6``, ``hydra.sweeper.fuse``)
  exists in the run's schema, in some method's declared hyper-parameters, or in the sweeper's
  config;
* every ``python run.py ...`` command, in code blocks and in running text, composes with the real
  ``conf/`` exactly as ``run.py`` checks a command line (``kdsweep.config.cli``), each value of a
  sweep included.

The generated table of methods is compared with the code by tests/test_architecture.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from kdsweep import extensions

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "kdsweep").glob("*/README.md"))]  # extensions' own (kdsweep/reducenet)
REPO_DIRS = ("kdsweep/", "conf/", "docs/", "tests/", "benchmarks/", "tools/", "hydra_plugins/",
             ".ci/")
REPO_FILES = ("run.py", "pyproject.toml", "README.md")
#: Placeholders in documented paths and keys (``conf/dataset/NAME.yaml``, ``method.NAME``).
PLACEHOLDER = re.compile(r"\b(?!README\b)[A-Z]{2,}\b|[<>*{}\[\]$]|\.\.\.")
GROUPS = ("dataset", "teacher", "student", "schedule", "train", "tracking", "sweep", "method",
          "hydra.sweeper", *(k for k in extensions.nodes() if "." not in k))


def _ticks(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _docs_text() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in DOCS]


def test_every_path_named_in_the_docs_exists():
    missing = []
    for name, text in _docs_text():
        for tok in _ticks(text):
            path = tok.split()[0].rstrip(",.:;)").split("::")[0]
            path = re.sub(r":\d+$", "", path)
            if "my_" in path:  # a file the reader writes (conf/experiment/my_grid.yaml)
                continue
            if not (path.startswith(REPO_DIRS) or path in REPO_FILES) or PLACEHOLDER.search(path):
                continue
            if not (ROOT / path).exists():
                missing.append(f"{name}: {path}")
    assert not missing, missing


def _schema_keys() -> set[str]:
    """Every dotted key of the run config, each method's options and the sweeper's options."""
    from kdsweep.config.schema import RunConfig
    from kdsweep.methods import get_method, hparams, list_methods

    keys: set[str] = set()

    def walk(schema: type, prefix: str) -> None:
        for f in fields(schema):
            keys.add(prefix + f.name)
            sub = f.default_factory() if callable(f.default_factory) else None
            if is_dataclass(sub):
                walk(type(sub), f"{prefix}{f.name}.")

    walk(RunConfig, "")
    for key, node in extensions.nodes().items():  # a top-level node is null by default
        walk(node, f"{key}.")
    keys |= {f"method.{hp.name}" for m in list_methods() for hp in hparams(get_method(m))}
    keys.add("method.name")
    import importlib

    conf = importlib.import_module("hydra_plugins.kdsweep_optuna_sweeper.config")
    walk(conf.KDSweepOptunaSweeperConf, "hydra.sweeper.")
    for cls in vars(conf).values():  # sampler and pruner options
        if isinstance(cls, type) and is_dataclass(cls) and cls.__name__.endswith("Config"):
            for f in fields(cls):
                keys |= {f"hydra.sweeper.sampler.{f.name}", f"hydra.sweeper.pruner.{f.name}",
                         f"hydra.sweeper.report.{f.name}"}
    return keys


def test_every_config_key_named_in_the_docs_exists():
    """Every ``key=value`` the docs show (in commands and in running text) names a real key."""
    keys = _schema_keys()
    unknown = []
    for name, text in _docs_text():
        for tok in _ticks(text) + [" ".join(a) for _, a in _commands_of(name, text)]:
            for word in tok.split():
                if "=" not in word:
                    continue
                key = word.split("=", 1)[0].lstrip("+~'\"")
                if not key.startswith(tuple(f"{g}." for g in GROUPS)) or PLACEHOLDER.search(key):
                    continue
                if not re.fullmatch(r"[a-z_][a-z0-9_.]*", key):
                    continue
                free = any(key.startswith(f"{k}.") for k in FREE_FORM)
                if key not in keys and not free:
                    unknown.append(f"{name}: {key}")
    assert not unknown, sorted(set(unknown))


#: Nodes whose sub-keys are free (a dict option, the search space).
FREE_FORM = {"method.methods", "reducenet.teacher_schedule", "hydra.sweeper.params",
             "hydra.sweeper.points", "hydra.sweeper.sampler", "hydra.sweeper.pruner"}


def _commands_of(name: str, text: str) -> list[tuple[str, list[str]]]:
    """``python run.py`` command lines of one doc (code blocks joined over ``\\``, and inline)."""
    lines = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().lstrip("$ ")
            if line.startswith("python run.py"):
                lines.append(line)
    lines += [t for t in _ticks(re.sub(r"```.*?```", "", text, flags=re.S))
              if t.startswith("python run.py")]
    cmds = []
    for line in lines:
        if PLACEHOLDER.search(line.replace("...", "")) and "${" not in line:
            continue  # python run.py method=NAME ...: a pattern, not a command
        try:
            argv = shlex.split(line)[2:]
        except ValueError:
            continue
        if "..." not in argv:
            cmds.append((name, argv))
    return cmds


def _commands() -> list[tuple[str, list[str]]]:
    return [c for name, text in _docs_text() for c in _commands_of(name, text)]


COMMANDS = _commands()


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) > 20  # a sanity check: the extraction finds the docs' commands


@pytest.mark.parametrize("doc,argv", COMMANDS, ids=[f"{d}:{' '.join(a)[:60]}" for d, a in COMMANDS])
def test_every_documented_command_composes(doc, argv):
    from kdsweep.config.cli import check

    assert check(argv, ROOT / "conf") is None


def test_every_documented_module_and_script_exists():
    """``python -m kdsweep.X`` modules import, ``python tools/x.py`` scripts exist."""
    import importlib.util

    missing = []
    for name, text in _docs_text():
        for mod in set(re.findall(r"python -m (kdsweep[\w.]*)", text)):
            if importlib.util.find_spec(mod) is None:
                missing.append(f"{name}: python -m {mod}")
        for script in set(re.findall(r"python ((?:tools|benchmarks)/[\w/]+\.py)", text)):
            if not (ROOT / script).is_file():
                missing.append(f"{name}: {script}")
    assert not missing, missing


def test_the_readme_lists_exactly_the_registered_extensions():
    """README.md's list of extensions is the registry (kdsweep/extensions.py): removing an
    extension's folder and line there makes this test name the entry to drop."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- BEGIN extensions -->")[1].split("<!-- END extensions -->")[0]
    listed = re.findall(r"^- `([\w.]+)`", block, re.M)
    assert listed == list(extensions.EXTENSIONS)


def _method_prose_tables() -> list[tuple[str, str, str]]:
    """(method, key, default cell) of every ``| key | default | source |`` table in a method's
    section of docs/methods.md (the prose next to the generated table)."""
    out = []
    text = (ROOT / "docs" / "methods.md").read_text()
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        m = re.match(r"`(\w+)`", section)
        if not m:
            continue
        for table in re.findall(r"^\| key \| default \| source \|\n\|[-|]+\|\n((?:\|.*\n)+)",
                                section, re.M):
            for row in table.splitlines():
                keys, default = [c.strip() for c in row.strip("|").split("|")][:2]
                names = re.findall(r"`(\w+)`", keys)
                values = default.split(" / ") if len(names) > 1 else [default]
                assert len(values) == len(names), row
                out += [(m.group(1), n, v) for n, v in zip(names, values, strict=True)]
    return out


def _same(declared, cell: str) -> bool:
    word = re.match(r"`?([^`\s(=]+)`?", cell.strip()).group(1)
    if declared is None:
        return word == "null"
    if isinstance(declared, bool):
        return word == str(declared).lower()
    if isinstance(declared, (int, float)):
        try:
            return float(word.replace(",", "")) == float(declared)
        except ValueError:
            return False
    return word == str(declared)


def test_the_prose_tables_of_docs_methods_agree_with_the_declared_defaults():
    """Each method section's own ``key | default`` table says what the code declares (the
    generated table at the top of docs/methods.md is checked by test_architecture.py)."""
    from kdsweep.methods import get_method, hparams

    rows = _method_prose_tables()
    assert len(rows) > 30
    wrong = []
    for method, key, cell in rows:
        declared = {hp.name: hp.default for hp in hparams(get_method(method))}
        if key not in declared:
            wrong.append(f"{method}: `{key}` is not an option")
        elif not _same(declared[key], cell):
            wrong.append(f"{method}.{key}: docs say {cell!r}, the code {declared[key]!r}")
    assert not wrong, wrong


def test_the_sweeper_options_table_says_the_declared_defaults():
    """docs/sweeps.md's ``| key | default | meaning |`` table: every option of
    :class:`kdsweep.sweep.settings.Settings` (and ``report.*``) has its declared default there
    (``auto`` / ``-``: computed when unset; ``sampler``/``pruner``: the config groups' defaults)."""
    import dataclasses

    from kdsweep.sweep.settings import ReportSettings, Settings

    declared = {f.name: f.default for f in dataclasses.fields(Settings)
                if f.default is not dataclasses.MISSING}
    declared |= {f"report.{f.name}": f.default for f in dataclasses.fields(ReportSettings)
                 if f.default is not dataclasses.MISSING}
    text = (ROOT / "docs" / "sweeps.md").read_text().split("## Configuration")[1]
    table = re.search(r"^\| key \| default \| meaning \|\n\|[-|]+\|\n((?:\|.*\n)+)", text, re.M)
    seen, wrong = set(), []
    for row in table.group(1).splitlines():
        keys, defaults = [c.strip() for c in row.strip("|").split("|")][:2]
        names = re.findall(r"`([\w.]+)`", keys)
        cells = [c.strip() for c in defaults.split(",")] if len(names) > 1 else [defaults]
        assert len(cells) == len(names), row
        for name, cell in zip(names, cells, strict=True):
            seen.add(name)
            if name in declared and cell not in ("auto", "-") and not _same(declared[name], cell):
                wrong.append(f"{name}: docs say {cell!r}, Settings {declared[name]!r}")
    assert not wrong, wrong
    assert set(declared) <= seen, sorted(set(declared) - seen)
