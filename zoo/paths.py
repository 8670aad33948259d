"""Where the bundled files live: recipes and pretrained weight folders, in a checkout or an install."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def recipes_dir() -> Path:
    """The bundled recipes: ``recipes/`` of a source checkout, else the installed ``zoo.recipes`` package."""
    checkout = _CHECKOUT / "recipes"
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec("zoo.recipes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled recipes are missing: neither recipes/ in a checkout nor zoo.recipes installed")
    return Path(list(spec.submodule_search_locations)[0])


def weights_dir() -> Path:
    """The bundled pretrained folders (``zoo/weights/<model>.<tag>/``), installed with the package."""
    return Path(__file__).resolve().parent / "weights"

