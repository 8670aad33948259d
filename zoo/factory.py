"""``zoo.create``: the one construction path from a name, a recipe file or a trained folder to a model.

As timm splits ``_factory.py`` from ``_hub.py``: this module resolves what a name means and builds
the model; :mod:`zoo.hub` only finds, downloads, reads and writes trained folders, and never
builds one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zoo import hub
from zoo.builder import resolve_recipe
from zoo.data.vocab import Vocabulary
from zoo.model import SeqRecModel
from zoo.recipe import Recipe, apply_overrides, validate_recipe

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
        return create_pretrained(name_or_path, num_items=num_items, **overrides)
    recipe = resolve_recipe(name_or_path, overrides)
    items = num_items if num_items is not None else recipe.num_items
    if items is None:
        raise ValueError(
            f"model {recipe.name!r} needs the number of items: pass create(..., num_items=N) or set num_items in the recipe"
        )
    return SeqRecModel(recipe, items)


def create_pretrained(
    name_or_path: str | os.PathLike,
    num_items: int | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    **overrides: Any,
) -> SeqRecModel:
    """A trained model from ``local-dir:DIR``, ``hf-hub:org/name[@rev]`` or a published tag (see :func:`create`).

    ``overrides`` are dotted recipe paths applied to the stored recipe (dropout, training
    defaults); one that changes tensor shapes makes the strict weight load fail.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"pretrained=True needs a published name or a trained folder, got a {type(name_or_path).__name__}")
    folder = hub.resolve_folder(
        name_or_path, revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token,
        local_files_only=local_files_only, force_download=force_download,
    )
    return model_from_folder(folder, num_items, **overrides)


def model_from_folder(folder: str | os.PathLike, num_items: int | None = None, **overrides: Any) -> SeqRecModel:
    """Build the model a trained folder describes and load its weights strictly (in eval mode)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"trained folder {folder} does not exist (or is not a folder)")
    config = hub.read_config(folder)
    weights = hub.weights_file(folder)
    stored_items = config["num_items"]
    if num_items is not None and num_items != stored_items:
        raise ValueError(
            f"{folder} was trained on {stored_items} items; num_items={num_items} does not fit its weights "
            "(leave num_items out, or train a new model for another item set)"
        )
    data = apply_overrides(config["recipe"], overrides) if overrides else config["recipe"]
    recipe = validate_recipe(data, source=str(folder / hub.CONFIG_NAME))
    model = SeqRecModel(recipe, stored_items)
    hub.load_weights(model, weights)
    vocab = (config.get("dataset") or {}).get("item_vocabulary")
    if vocab is not None:
        model.item_vocab = Vocabulary.from_dict(vocab)
        if model.item_vocab.size != stored_items:
            raise hub.PretrainedLoadError(
                f"{folder / hub.CONFIG_NAME}: item vocabulary has {model.item_vocab.size} ids for {stored_items} items"
            )
    return model.eval()
