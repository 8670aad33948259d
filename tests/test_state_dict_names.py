"""State-dict names of every bundled recipe, frozen: trained weights are stored under these names.

``tests/data/state_dict_names.json`` holds, per bundled recipe, the names of its model's state dict
in order. Renaming a module or parameter of a recipe would make every published weight file of it
fail to load, so a change here must be deliberate. A new recipe is added to the file with
``python tests/test_state_dict_names.py`` (it writes the names of recipes not yet listed and never
rewrites a listed one).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zoo

STORED = Path(__file__).parent / "data" / "state_dict_names.json"
NUM_ITEMS = 30


def names_of(recipe: str) -> list[str]:
    return list(zoo.create(recipe, num_items=NUM_ITEMS).state_dict())


def stored() -> dict[str, list[str]]:
    return json.loads(STORED.read_text(encoding="utf-8"))


@pytest.mark.parametrize("recipe", zoo.list_models())
def test_state_dict_names_are_the_stored_ones(recipe):
    table = stored()
    assert recipe in table, f"recipe {recipe!r} has no stored state-dict names: run `python {Path(__file__).name}` in tests/"
    assert names_of(recipe) == table[recipe]


def test_every_stored_recipe_is_still_bundled():
    assert sorted(stored()) == zoo.list_models()


if __name__ == "__main__":
    table = stored() if STORED.is_file() else {}
    added = [name for name in zoo.list_models() if name not in table]
    table.update({name: names_of(name) for name in added})
    STORED.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"added {added or 'nothing'} to {STORED}")
