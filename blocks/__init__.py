"""The block library: every module in this package registers its blocks on import.

Modules are discovered, not listed, so adding a block family is adding a file.
"""

import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)
