"""``zoo.create``: the one front door from a name, a recipe file or a trained folder to a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.builder import resolve_recipe
from zoo.model import SeqRecModel
from zoo.recipe import Recipe

PRETRAINED_PREFIXES = ("local-dir:", "hf-hub:")


def create(
    name_or_path: str | Path | Recipe,
    pretrained: bool = False,
    num_items: int | None = None,
    **overrides: Any,
) -> SeqRecModel:
    """Build a model.

    ``name_or_path`` is a bundled recipe name (``"sasrec"``; see :func:`zoo.list_models`), a recipe
    file (``"my/hybrid.yaml"``), a :class:`~zoo.recipe.Recipe`, or a trained folder
    (``"local-dir:DIR"``, ``"hf-hub:org/name[@revision]"``). ``overrides`` are dotted recipe paths
    (``d_model=128``, ``**{"encoder.0.d_state": 64}``). ``num_items`` comes from the argument, else
    the recipe; a pretrained model brings its own.
    """
    if pretrained or (isinstance(name_or_path, str) and name_or_path.startswith(PRETRAINED_PREFIXES)):
        from zoo.hub import create_pretrained

        return create_pretrained(name_or_path, num_items=num_items, **overrides)
    recipe = resolve_recipe(name_or_path, overrides)
    items = num_items if num_items is not None else recipe.num_items
    if items is None:
        raise ValueError(
            f"model {recipe.name!r} needs the number of items: pass create(..., num_items=N) or set num_items in the recipe"
        )
    return SeqRecModel(recipe, items)
