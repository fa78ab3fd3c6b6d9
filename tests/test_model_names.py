"""Model names no one can confuse, renamed names refused with a pointer, model files discovered."""

from __future__ import annotations

import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kdsweep.models
from kdsweep.errors import ConfigError
from kdsweep.models import create_model, get_spec, list_models, register_model, renamed_models
from kdsweep.models.registry import RENAMED
from kdsweep.models.shufflenet import ShuffleNetV2

ROOT = Path(__file__).resolve().parents[1]
ALL = list_models()


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def test_no_two_names_differ_only_by_case_or_punctuation():
    seen: dict[str, str] = {}
    for name in ALL:
        assert _key(name) not in seen, (seen.get(_key(name)), name)
        seen[_key(name)] = name


def test_torchvision_models_and_only_they_are_tv_and_224_px():
    for name in ALL:
        spec = get_spec(name)
        from_torchvision = spec.constructor.__module__ == "kdsweep.models.torchvision_models"
        assert name.startswith("tv_") == from_torchvision, name
        assert spec.input_size == (224 if name.startswith("tv_") else 32), name
    assert len([n for n in ALL if n.startswith("tv_")]) == 10


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_old_name_is_refused_with_a_one_line_pointer(old):
    message = renamed_models()[old]
    for call in (lambda: get_spec(old), lambda: create_model(old, 10)):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == message
    assert "\n" not in message and message.startswith(f"model {old!r} was renamed: use '")
    pointed_to = re.findall(r"'([^']+)'", message)[1:]
    assert pointed_to and all(name in ALL for name in pointed_to), pointed_to
    assert old not in ALL


def test_renamed_messages():
    renamed = renamed_models()
    assert renamed["resnet50"] == (
        "model 'resnet50' was renamed: use 'tv_resnet50' (torchvision, ImageNet input) or "
        "'ResNet50' (CIFAR input)"
    )
    assert renamed["shufflenetv2_0_5"] == (
        "model 'shufflenetv2_0_5' was renamed: use 'ShuffleV2_0_5'"
    )
    assert "'ShuffleV2'" in renamed["shufflenetv2_1_0"]
    renamed.clear()  # a copy: the table itself is untouched
    assert renamed_models()


def test_dropped_shufflenetv2_1_0_was_shufflev2_exactly():
    """``shufflenetv2_1_0`` built ``ShuffleNetV2(1.0)``, which is what ``ShuffleV2`` builds.

    Checked against the old registry before the name was dropped (same module tree, same
    state-dict keys, shapes and initial values from one seed, same outputs; only the
    ``default_lr`` metadata differed: None there, 0.01 for ShuffleV2); kept here against the
    constructor the old name called.
    """
    torch.manual_seed(0)
    current = create_model("ShuffleV2", 100)
    torch.manual_seed(0)
    dropped = ShuffleNetV2(1.0, num_classes=100)  # the body of the old shufflenetv2_1_0
    assert str(current) == str(dropped)
    a, b = current.state_dict(), dropped.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(current.eval()(x), dropped.eval()(x))
    assert "ShuffleV2_1_0" not in ALL  # one name per network


def test_register_model_refuses_confusable_and_retired_names():
    def build(num_classes, **kwargs):
        return torch.nn.Linear(3, num_classes)

    for name, needle in [
        ("Resnet_20", "differs from the registered 'resnet20' only by case or punctuation"),
        ("TV-ResNet18", "differs from the registered 'tv_resnet18'"),
        ("resnet50", "is retired (model 'resnet50' was renamed: use 'tv_resnet50'"),
    ]:
        with pytest.raises(ValueError) as err:
            register_model(name, family="test")(build)
        assert needle in str(err.value)
        assert name not in list_models()


def test_every_model_file_is_discovered_and_registers_models():
    package = Path(kdsweep.models.__file__).parent
    modules = {m.name for m in pkgutil.iter_modules([str(package)]) if not m.name.startswith("_")}
    model_files = modules - kdsweep.models.INFRASTRUCTURE
    assert kdsweep.models.INFRASTRUCTURE <= modules
    assert {"resnet", "resnet_kuangliu", "torchvision_models", "wrn"} <= model_files
    registering = {get_spec(n).constructor.__module__ for n in ALL}
    core = {m.rsplit(".", 1)[1] for m in registering if m.startswith("kdsweep.models.")}
    assert core == model_files  # each file is imported and registers models
    from kdsweep import extensions

    assert registering - {f"kdsweep.models.{m}" for m in core} == {
        m for e in extensions.loaded() for m in e.models}  # and each extension's model files


def _adding_a_model_recipe() -> str:
    doc = (ROOT / "docs" / "models.md").read_text()
    section = doc[doc.index("## Adding a model") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


_DISCOVER = """
import importlib.util, json, sys
spec = importlib.util.find_spec("kdsweep.models")
spec.submodule_search_locations.append(sys.argv[1])  # as if the file were in kdsweep/models/
models = importlib.util.module_from_spec(spec)
sys.modules["kdsweep.models"] = models
spec.loader.exec_module(models)

from kdsweep.zoo import model_cost
net = models.create_model("mynet", 10)
with models.FeatureTap(net, "mynet") as tap:
    out = tap.dry_run()
    channels = tap.stage_channels
print(json.dumps({
    "names": models.list_models(),
    "module": models.get_spec("mynet").constructor.__module__,
    "family": models.get_spec("mynet").family,
    "channels": channels,
    "pooled": list(out.pooled.shape),
    "params": model_cost("mynet").params,
}))
"""


def test_adding_a_model_is_one_file(tmp_path):
    """docs/models.md's recipe, saved as one file next to the model files, is a model: no import
    line or other edit. The file sits in a second directory of the package's ``__path__``, which
    ``pkgutil.iter_modules`` scans exactly like ``kdsweep/models/`` itself."""
    (tmp_path / "mynet.py").write_text(_adding_a_model_recipe())
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", _DISCOVER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert "mynet" in got["names"] and set(ALL) <= set(got["names"])
    assert got["module"] == "kdsweep.models.mynet" and got["family"] == "mynet"
    assert got["channels"] == [16, 16, 32] and got["pooled"] == [1, 32]
    assert got["params"] > 0
