"""The launcher presets of docs/scaling.md compose with the real configs."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("launcher,plugin,key,value", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher", "gpus_per_node", 1),
    ("local", "hydra_plugins.hydra_joblib_launcher", "n_jobs", 3),
])
def test_launcher_presets_compose(compose, launcher, plugin, key, value):
    pytest.importorskip(plugin, reason=f"{plugin} is not installed (pip install -e '.[slurm]')")
    cfg = compose([f"hydra/launcher={launcher}", "hydra/sweeper=kdsweep_optuna",
                   "hydra.sweeper.n_jobs=3"], return_hydra_config=True)
    assert cfg.hydra.launcher[key] == value
