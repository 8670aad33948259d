"""``zoo.create``: the one construction path from a name, a recipe file or a trained folder to a model.

As timm splits ``_factory.py`` from ``_hub.py``: this module resolves what a name means and builds
the model; :mod:`zoo.hub` only finds, downloads, reads and writes trained folders, and never
builds one.
"""

from __future__ import annotations

import operator
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
    the recipe; a pretrained model brings its own, unless ``reset_items=True`` gives it a new catalog
    (see :func:`create_pretrained`).
    """
    if pretrained or (isinstance(name_or_path, str) and name_or_path.startswith(PRETRAINED_PREFIXES)):
        return create_pretrained(name_or_path, num_items=num_items, **overrides)
    if "reset_items" in overrides:
        raise ValueError("reset_items applies to pretrained weights only: zoo.create(name, pretrained=True, num_items=N, reset_items=True)")
    recipe = resolve_recipe(name_or_path, overrides)
    items = item_total(num_items) if num_items is not None else recipe.num_items
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
    reset_items: bool = False,
    **overrides: Any,
) -> SeqRecModel:
    """A trained model from ``local-dir:DIR``, ``hf-hub:org/name[@rev]`` or a published tag (see :func:`create`).

    ``overrides`` are dotted recipe paths applied to the stored recipe (dropout, training
    defaults); one that changes tensor shapes makes the strict weight load fail. ``reset_items=True``
    moves the model to a new catalog of ``num_items`` items (default: as many as before): every
    weight is kept except the item-dependent tables, which start fresh (:func:`with_new_catalog`).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"pretrained=True needs a published name or a trained folder, got a {type(name_or_path).__name__}")
    num_items = None if num_items is None else item_total(num_items)
    folder = hub.resolve_folder(
        name_or_path, revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token,
        local_files_only=local_files_only, force_download=force_download,
    )
    return model_from_folder(folder, num_items, reset_items=reset_items, **overrides)


def item_total(num_items: Any) -> int:
    """``num_items`` checked: an integer >= 1 (Python or numpy; not a bool, a float or a string)."""
    if isinstance(num_items, bool):
        count = None
    else:
        try:
            count = operator.index(num_items)
        except TypeError:
            count = None
    if count is None or count < 1:
        raise ValueError(f"num_items must be an integer >= 1 (the number of items, padding not counted), got {num_items!r:.60}")
    return count


def model_from_folder(
    folder: str | os.PathLike, num_items: int | None = None, *, reset_items: bool = False, **overrides: Any
) -> SeqRecModel:
    """Build the model a trained folder describes and load its weights strictly (in eval mode);
    ``reset_items=True`` then moves it to a catalog of ``num_items`` items (:func:`with_new_catalog`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"trained folder {folder} does not exist (or is not a folder)")
    config = hub.read_config(folder)
    weights = hub.weights_file(folder)
    stored_items = config["num_items"]
    if num_items is not None and num_items != stored_items and not reset_items:
        raise ValueError(
            f"{folder} was trained on {stored_items} items; num_items={num_items} does not fit its item tables "
            "(leave num_items out, or pass reset_items=True to keep every other weight and start the item tables afresh)"
        )
    data = apply_overrides(config["recipe"], overrides) if overrides else config["recipe"]
    recipe = validate_recipe(data, source=str(folder / hub.CONFIG_NAME))
    model = SeqRecModel(recipe, stored_items)
    hub.load_weights(model, weights)
    if reset_items:
        return with_new_catalog(model, stored_items if num_items is None else num_items)
    vocab = (config.get("dataset") or {}).get("item_vocabulary")
    if vocab is not None:
        model.item_vocab = Vocabulary.from_dict(vocab)
        if model.item_vocab.size != stored_items:
            raise hub.PretrainedLoadError(
                f"{folder / hub.CONFIG_NAME}: item vocabulary has {model.item_vocab.size} ids for {stored_items} items"
            )
    return model.eval()


def item_dependent_keys(trained: SeqRecModel, num_items: int) -> set[str]:
    """The state-dict keys of ``trained`` whose tensors depend on the item catalog, for a move to
    ``num_items`` items: found by building the recipe for one more item and for ``num_items`` and
    comparing shapes, so no block needs to declare them (a table sized by a share of the items, such as
    ``attribute_context``'s ``num_known_items: 0.75``, may keep its size for one more item)."""
    state = trained.state_dict()
    grown = SeqRecModel(trained.recipe, trained.num_items + 1).state_dict()
    target = SeqRecModel(trained.recipe, num_items).state_dict()
    return {k for k, v in state.items() if v.shape != grown[k].shape or v.shape != target[k].shape}


def with_new_catalog(trained: SeqRecModel, num_items: int) -> SeqRecModel:
    """A model of ``trained``'s recipe for ``num_items`` items that keeps every trained weight except
    the item-dependent ones (:func:`item_dependent_keys`: item embeddings, item biases, item
    side-information tables), which keep their fresh initialisation; no item vocabulary (the new
    catalog brings its own)."""
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    skip = item_dependent_keys(trained, num_items)
    fresh = SeqRecModel(trained.recipe, num_items)
    fresh.load_state_dict({k: v for k, v in trained.state_dict().items() if k not in skip}, strict=False)
    return fresh.eval()
