"""kdsweep's Hydra sweeper on current Optuna: ``hydra/sweeper=kdsweep_optuna`` (docs/sweeps.md)."""
