"""The command line checked before Hydra runs: a bad override is one line and exit status 2.

Hydra reports a value it cannot compose (``train.horizontal=maybe``, ``method=nosuch``,
``foo.bar=1``) in several lines (the error, ``full_key``, ``object_type``, a hint about
``HYDRA_FULL_ERROR``) and exits with status 1, the status of a crash. kdsweep promises one line
naming the key, the value and what is valid, and status 2, before any work. So ``run.py`` first
composes the config once with Hydra's own compose API and the same overrides, and turns a
composition error into that line. Hydra's messages already name the key and what is valid; this
module only joins them into one line (the multi-line layout is Hydra's, and Hydra offers no option
to change it, which is why this is hand-written).

For a sweep (``-m``) the first job's overrides are composed (each sweep at its first value), then
each further value of each sweep in turn (a ``choice`` or list, a ``range``, an ``interval``'s
bounds), at most :data:`MAX_COMPOSITIONS` in all. A command line with a ``glob`` sweep, one that
changes the config search path (``--config-path``, ``--config-dir``), or one argparse does not
accept, is left to Hydra unchecked.

Two mistakes get a line of their own instead of Hydra's: an option of a group that does not exist
(``teacher=resnet_20``: Hydra lists every model) and a key that does not exist
(``method.temperature=4``: Hydra suggests ``+method.temperature=4``, which kdsweep refuses anyway).
Both name the close matches only (:func:`kdsweep.errors.close_matches`: ``wrn-28-4`` ->
``wrn_28_4``, ``cosin`` -> ``cosine``) and where the full list is; every line stays under 200
characters, ``error: `` included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from kdsweep.errors import KDSweepError

#: Lines of Hydra's and OmegaConf's messages that repeat what the first line says.
_NOISE = ("full_key:", "reference_type=", "object_type=", "Config search path", "provider=",
          "Set the environment variable HYDRA_FULL_ERROR")


def one_line(err: BaseException) -> str:
    """Hydra's composition error (and the OmegaConf error under it) as one line."""
    texts = [str(err)]
    cause = err.__cause__ or err.__context__
    if cause is not None and str(cause) not in texts[0]:
        texts.append(str(cause))
    parts: list[str] = []
    for text in texts:
        lines = [ln.strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("Available options in"):  # then one option per line
                options = []
                while i + 1 < len(lines) and " " not in lines[i + 1]:
                    options.append(lines[i + 1])
                    i += 1
                listed = ", ".join(options)
                if len(listed) > 100:  # the line stays short: say where the list is
                    listed = f"{len(options)} of them, listed by python run.py --help"
                line = f"{line.rstrip(':')}: {listed}"
            parts.append(line.rstrip("."))
            i += 1
    return "; ".join(parts)


#: At most this many compositions check a sweep's values (one takes about 0.1 s).
MAX_COMPOSITIONS = 128


def _variants(overrides: list[str], multirun: bool) -> list[list[str]] | None:
    """The command lines to compose: each sweep at its first value, then each further value of
    each sweep in turn (the others at their first); None when a sweep cannot be enumerated.
    Raises ValueError for a sweep without ``-m``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    base: list[str] = []
    swept: list[tuple[int, list[str]]] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            base.append(o.input_line)
            continue
        if not multirun:
            raise ValueError(f"{o.input_line}: a sweep needs -m (--multirun); for a list write "
                             f"{o.get_key_element()}=[...], for a string quote the value")
        value = o.value()
        if isinstance(value, IntervalSweep):  # Optuna samples it: its bounds are what composes
            values = [str(value.start), str(value.end)]
        else:
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # a glob needs the config loader: leave it to Hydra
                return None
        key = o.get_key_element()
        swept.append((len(base), [f"{key}={v}" for v in values]))
        base.append(swept[-1][1][0])
    variants = [base]
    for i, lines in swept:
        variants += [[*base[:i], line, *base[i + 1:]] for line in lines[1:]]
    return variants[:MAX_COMPOSITIONS]


def check(argv: list[str], config_dir: Path, config_name: str = "config",
          preflight: Callable[[DictConfig, list[str]], None] | None = None) -> str | None:
    """None when the command line composes, else its error as one line.

    ``preflight(cfg, overrides)``: the checks a run makes before any work, applied to each
    composed variant (without its ``hydra`` node), so that a refused run writes nothing. Not
    applied to the kdsweep sweeper's jobs: that sweeper checks every value of its space itself,
    preset parameters included, before it writes anything.
    """
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses
    from hydra.core.global_hydra import GlobalHydra

    from kdsweep.config.nodes import register_configs

    register_configs()  # the generated teacher/student/method nodes (idempotent)
    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # argparse's own error (or --help): Hydra prints it
        return None
    skip = ("help", "hydra_help", "info", "shell_completion", "config_path", "config_dir",
            "experimental_rerun")
    if any(getattr(args, name, None) for name in skip):  # nothing to compose, or another search path
        return None
    try:
        multirun = bool(args.multirun) or "hydra.mode=MULTIRUN" in args.overrides
        variants = _variants(list(args.overrides), multirun)
    except Exception as err:  # a malformed override: Hydra's parser says why
        return one_line(err)
    if variants is None:
        return None
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            for overrides in variants:
                cfg = compose(args.config_name or config_name, overrides=overrides,
                              return_hydra_config=True)
                if preflight is not None and not args.cfg and not (
                        multirun and _kdsweep_sweeper(cfg)):  # --cfg only prints the config
                    preflight(_without_hydra(cfg), overrides)
    except KDSweepError as err:
        return str(err)
    except Exception as err:
        return (_unset_node(list(args.overrides)) or _missing_option(err) or _unknown_key(err)
                or one_line(err))
    finally:
        GlobalHydra.instance().clear()
    return None


def _unset_node(overrides: list[str]) -> str | None:
    """An override below an extension's top-level node that no preset of the command set (Hydra
    says only "Unexpected type for root: NoneType"): which presets set it."""
    from kdsweep import extensions

    tops = {k for k in extensions.nodes() if "." not in k}
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        head = key.split(".", 1)[0]
        if head in tops and "." in key:
            presets = sorted(f"experiment={p.stem}" for e in extensions.loaded() if e.presets
                             for p in (e.presets / "experiment").glob("*.yaml")
                             if re.search(rf"^{head}:", p.read_text(), re.M))
            return (f"{key}: {head} is null unless a preset sets it; valid: "
                    + (", ".join(presets) or "none"))
    return None


#: Characters of an error line after ``error: ``, which keeps it under 200.
MAX_LINE = 192
#: Where each group's options are listed (the other groups': ``python run.py --help``).
_LISTED_BY = {"teacher": "python -m kdsweep.zoo", "student": "python -m kdsweep.zoo",
              "method": "python -m kdsweep.methods", "hydra": "python run.py --hydra-help"}


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def _hint(head: str, near: list[str], valid: list[str], where: str) -> str:
    """``head``; then the close matches, else the valid choices when they fit, else where."""
    if near:
        return f"{head}; did you mean {' or '.join(near)}? (list: {where})"
    line = f"{head}; valid: {', '.join(valid)}"
    return line if valid and len(line) <= MAX_LINE else f"{head}; list: {where}"


def _missing_option(err: BaseException) -> str | None:
    """``group=value`` where the group has no such option (``teacher=resnet_20``)."""
    from hydra.errors import MissingConfigException

    from kdsweep.errors import close_matches, name_key
    from kdsweep.models.registry import renamed_models

    missing = getattr(err, "missing_cfg_file", None) or ""
    if not isinstance(err, MissingConfigException) or not err.options or "/" not in missing:
        return None
    group, value = missing.rsplit("/", 1)
    options = list(err.options)
    where = _LISTED_BY.get(group.split("/")[0], "python run.py --help")
    if group in ("teacher", "student"):  # a renamed model's node only says it was renamed
        renamed = renamed_models()
        for old in renamed:
            if name_key(old) == name_key(value):
                return f"{group}={_clip(value)}: {renamed[old]}"
        options = [o for o in options if o not in renamed]
    near = close_matches(value, options)
    near = [f"{group}={' or '.join(near)}"] if near else []
    return _hint(f"{group}={_clip(value)}: no such {group}", near, options, where)


def _unknown_key(err: BaseException) -> str | None:
    """``key=value`` where no such key exists (``method.temperature=4``, ``trian.progress=1``)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from kdsweep.errors import close_matches

    cause = err.__cause__ or err.__context__
    typed = re.match(r"Could not override '([^']+)'", str(err))
    if (typed is None or not isinstance(cause, (ConfigAttributeError, ConfigKeyError))
            or not cause.full_key or not cause.key or not hasattr(cause.parent_node, "keys")):
        return None
    key, full, typed = str(cause.key), str(cause.full_key), typed.group(1)
    node, rest = full.rpartition(".")[0], typed[len(full):]  # trian.progress: "", ".progress"
    names = [str(k) for k in cause.parent_node.keys()]
    if node == "method" and "name" in names:
        from kdsweep.methods import get_method, option_matches

        try:
            cls = get_method(str(cause.parent_node["name"]))
        except KDSweepError as bad_name:
            return str(bad_name)
        near = [f"method.{k}{rest}" for k in option_matches(cls, key)]
        valid = [f"method.{k}" for k in names if k != "name"]
        return _hint(f"{_clip(typed)}: {cls.name} has no option {_clip(key)!r}", near, valid,
                     "python -m kdsweep.methods")
    near = [f"{node + '.' if node else ''}{k}{rest}" for k in close_matches(key, names)]
    where = f"python run.py --cfg {'hydra' if full.startswith('hydra.') else 'job'}"
    head = f"{_clip(typed)}: no key {_clip(key)!r} in {node or 'the config'}"
    return f"{head}; did you mean {' or '.join(near)}?" if near else f"{head}; keys: {where}"


def _kdsweep_sweeper(cfg: DictConfig) -> bool:
    return "kdsweep_optuna" in str(cfg.hydra.sweeper.get("_target_", ""))


def _without_hydra(cfg: DictConfig) -> DictConfig:
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return OmegaConf.create(plain)


__all__ = ["check", "one_line"]
