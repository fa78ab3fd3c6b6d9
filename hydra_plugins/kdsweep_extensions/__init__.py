"""The kdsweep extensions' presets on Hydra's config search path (:mod:`kdsweep.extensions`).

An extension may keep config groups (``experiment/*.yaml``) in its own folder
(``Extension.presets``); this plugin appends each such folder to the search path, after ``conf/``,
so ``python run.py experiment=reducenet`` finds ``kdsweep/reducenet/conf/experiment/reducenet.yaml``
and removing the extension's folder removes its presets too.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from kdsweep import extensions


class KDSweepExtensionsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for ext in extensions.loaded():
            if ext.presets is not None and ext.presets.is_dir():
                search_path.append(provider=f"kdsweep-{ext.name}",
                                   path=f"file://{ext.presets.resolve()}")
