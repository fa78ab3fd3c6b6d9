"""Sweeps: the search space, the study driver behind the Hydra plugin, fused jobs, the job side."""
