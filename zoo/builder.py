"""From a recipe to modules: resolve a recipe by name or path, build its blocks and combinators."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from torch import nn

from zoo import combinators
from zoo.catalog import list_models
from zoo.paths import recipes_dir
from zoo.pretrained import list_pretrained
from zoo.recipe import (
    BUDGET_HINT, LIMITS, BlockSpec, Layer, Parallel, Recipe, RecipeError, Repeat, Residual, Sequential, apply_overrides, checked,
    load_recipe, measure_block, validate_recipe,
)
from zoo.registry import context_kwargs, get_block


def recipe_path(name_or_path: str | Path) -> Path:
    """The recipe file for a bundled name (``"sigma"``) or a path (``"my/hybrid.yaml"``); a folder is refused
    with what to do (a trained folder is loaded with ``local-dir:``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
        return path
    bundled = recipes_dir() / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    if path.is_dir():
        if (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is a trained folder, not a recipe: load it with "
                             f"zoo.create('local-dir:{path}')")
        raise ValueError(f"{str(path)!r} is a folder, not a recipe: pass a bundled model name (zoo.list_models()), a "
                         "recipe file (.yaml), or a trained folder as 'local-dir:DIR'")
    model, _, tag = str(name_or_path).partition(".")
    if tag and (recipes_dir() / f"{model}.yaml").is_file():
        published = list_pretrained(f"{model}.*")
        raise ValueError(
            f"{str(name_or_path)!r} names pretrained weights of {model!r}, not a recipe: load them with "
            f"zoo.create({str(name_or_path)!r}, pretrained=True) (published tags of {model!r}: "
            f"{', '.join(published) or 'none yet'}), or build an untrained model with zoo.create({model!r}, num_items=N)"
        )
    close = difflib.get_close_matches(str(name_or_path), list_models(), n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {str(name_or_path)!r}{hint} (zoo.list_models() lists the bundled recipes; a path must end in .yaml)")


def resolve_recipe(name_or_path: str | Path | Recipe, overrides: dict[str, Any] | None = None) -> Recipe:
    """A validated recipe from a bundled name, a YAML path or a :class:`Recipe` (overrides applied); anything else
    is a ``ValueError`` saying what is accepted."""
    if not isinstance(name_or_path, (str, os.PathLike, Recipe)):
        raise ValueError(f"expected a model name ('sasrec'), a recipe file ('my/hybrid.yaml'), a zoo.recipe.Recipe or "
                         f"a trained folder ('local-dir:DIR', 'hf-hub:org/name'), got {type(name_or_path).__name__} "
                         f"{name_or_path!r:.60}")
    if isinstance(name_or_path, Recipe):
        if not overrides:
            return checked(name_or_path, source=f"recipe {name_or_path.name!r}")
        data = apply_overrides(name_or_path.model_dump(mode="json"), overrides)
        return validate_recipe(data, source=f"recipe {name_or_path.name!r}", overrides=list(overrides))
    return load_recipe(recipe_path(name_or_path), overrides)


class BuildContext:
    """The model-level facts every block may ask for by name, and the parameter budget
    (:attr:`zoo.recipe.Limits.max_parameters`) the blocks share: each block is sized on the meta device
    before it is built, so a model over the budget fails before the block that would pass it allocates."""

    def __init__(self, d_model: int, num_items: int, max_len: int) -> None:
        self.d_model, self.num_items, self.max_len = d_model, num_items, max_len
        self.budget = LIMITS.parameter_budget()
        self.elements = 0  # parameter and buffer elements of the blocks built so far

    def block(self, spec: BlockSpec) -> nn.Module:
        cls = get_block(spec.block)
        facts = context_kwargs(cls, d_model=self.d_model, num_items=self.num_items, max_len=self.max_len)
        self._reserve(spec.block, measure_block(cls, {**facts, **spec.args}, self.budget).elements)
        block = cls(**facts, **spec.args)
        block.recipe_args = dict(spec.args)
        return block

    def _reserve(self, name: str, elements: int) -> None:
        self.elements += elements
        if self.elements > self.budget:
            raise RecipeError(
                f"block {name!r} would bring the model to {self.elements:,} parameter and buffer elements "
                f"({self.num_items:,} items, d_model {self.d_model}), over the limit of {self.budget:,}; {BUDGET_HINT}"
            )

    def layer(self, spec: Layer) -> nn.Module:
        if isinstance(spec, BlockSpec):
            return self.block(spec)
        if isinstance(spec, Sequential):
            return self.layers(spec.sequential)
        if isinstance(spec, Repeat):
            return combinators.Sequential([self.layers(spec.layers) for _ in range(spec.repeat)])
        if isinstance(spec, Parallel):
            return combinators.Parallel([self.layer(b) for b in spec.parallel], self.block(spec.fuse))
        if isinstance(spec, Residual):
            inner = self.layers(spec.residual if isinstance(spec.residual, list) else [spec.residual])
            return combinators.Residual(inner, self.d_model, spec.dropout, spec.norm, spec.norm_eps, spec.norm_first)
        raise TypeError(f"not a recipe layer: {spec!r}")

    def layers(self, specs: list[Layer]) -> nn.Module:
        built = [self.layer(s) for s in specs]
        return built[0] if len(built) == 1 else combinators.Sequential(built)
