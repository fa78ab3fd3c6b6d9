"""Configuration: typed schemas registered in Hydra's ConfigStore, generated config nodes, checks.

- :mod:`~kdsweep.config.schema`: dataclass schemas of the run config (schedule, train, dataset,
  tracking, sweep), so Hydra refuses a wrong type or an unknown key at composition;
- :mod:`~kdsweep.config.nodes`: the ``teacher``/``student`` options generated from the model
  registry and the ``method`` options generated from each method's declared hyper-parameters;
- :mod:`~kdsweep.config.validate`: value ranges and cross-key rules, one line each;
- :mod:`~kdsweep.config.cohort`: which settings the members of one cohort share.
"""

from kdsweep.config.nodes import register_configs
from kdsweep.config.validate import validate

__all__ = ["register_configs", "validate"]
