"""The block library, ``zoo.blocks``: every module in this package registers its blocks on import.

The folder ``blocks/`` at the top of the repository installs as ``zoo.blocks`` (``pyproject.toml``
maps it; an editable install does the same), so there is one import namespace. Importing it as a
top-level ``blocks`` would build a second copy of every block class and register each name twice,
so that is refused.

Modules are discovered, not listed, so adding a block family is adding a file. ``import zoo``
imports this package, as ``timm`` imports ``timm.models``; the registry (:mod:`zoo.registry`) sits
below it and never imports it.
"""

import importlib
import pkgutil

if __name__ != "zoo.blocks":
    raise ImportError(
        f"the block library is the package 'zoo.blocks', imported here as {__name__!r}: "
        "write 'import zoo.blocks' (the folder blocks/ installs under zoo)"
    )

for _module in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)
