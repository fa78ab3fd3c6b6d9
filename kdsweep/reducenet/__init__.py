"""ReduceNet's own parts (docs/reducenet.md): the stage-3 LoRA branches with VanillaNet's
LambdaReLU and their fusion (:mod:`~kdsweep.reducenet.lora`), and the config schemas
(:mod:`~kdsweep.reducenet.conf`). The network is :mod:`kdsweep.models.reducenet`; the student
hook is :mod:`kdsweep.run.adapt`; the three-stage driver is :mod:`kdsweep.run.stages`.

Nothing is imported here, so that the layers below ``kdsweep.run`` can import these modules.
"""
