"""seqrec-zoo: a model zoo for sequential recommendation.

``zoo.create(name_or_path, pretrained=False, num_items=None, **overrides)`` builds a model from a
bundled recipe, a YAML file or a trained folder; ``zoo.list_models()`` and ``zoo.list_blocks()``
say what is there.

Importing ``zoo`` is light: the names below load their modules (and torch, and the built-in blocks)
the first time they are used, so ``zoo --help`` and ``zoo list`` answer at once.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from zoo import registry as _registry
from zoo.version import __version__

if "zoo.blocks" not in _registry.BUILTIN_MODULES:
    _registry.BUILTIN_MODULES.append("zoo.blocks")

_EXPORTS = {
    "create": "zoo.factory", "list_models": "zoo.catalog", "list_blocks": "zoo.registry",
    "create_block": "zoo.registry", "get_block": "zoo.registry", "register_block": "zoo.registry",
    "SeqRecModel": "zoo.model", "Recommendations": "zoo.model", "Recipe": "zoo.recipe",
    "load_recipe": "zoo.recipe", "convert_recbole": "zoo.convert",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """``zoo.create`` and the other exports, and the subpackages (``zoo.blocks``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif importlib.util.find_spec(f"zoo.{name}") is not None:
        value = importlib.import_module(f"zoo.{name}")
    else:
        raise AttributeError(f"module 'zoo' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
