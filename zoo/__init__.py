"""seqrec-zoo: a model zoo for sequential recommendation.

``zoo.create(name_or_path, pretrained=False, num_items=None, **overrides)`` builds a model from a
bundled recipe, a YAML file or a trained folder; ``zoo.list_models()`` and ``zoo.list_blocks()``
say what is there.
"""

from zoo import blocks  # registers the built-in blocks (zoo.registry, below it, imports nothing of the project)
from zoo.builder import list_models
from zoo.convert import convert_recbole
from zoo.factory import create
from zoo.model import Recommendations, SeqRecModel
from zoo.recipe import Recipe, load_recipe
from zoo.registry import create_block, get_block, list_blocks, register_block
from zoo.version import __version__

__all__ = [
    "create", "list_models", "list_blocks", "create_block", "get_block", "register_block",
    "SeqRecModel", "Recommendations", "Recipe", "load_recipe", "convert_recbole",
]
