"""Build a custom hybrid from YAML, inspect it, override it, and see what a mistake looks like.

Run: .venv/bin/python examples/custom_hybrid.py
"""

import tempfile
from pathlib import Path

from pydantic import ValidationError

import zoo
from zoo.info import block_tree, count_parameters

HERE = Path(__file__).parent
recipe_file = HERE / "my_hybrid.yaml"

model = zoo.create(recipe_file, num_items=1682)
print(f"{model.recipe.name}: {count_parameters(model):,} parameters, streaming={model.supports_streaming}")
print("\n".join(block_tree(model)))

# Dotted overrides change any field of the recipe without editing the file.
smaller = zoo.create(recipe_file, num_items=1682, d_model=32, **{"encoder.0.parallel.1.num_layers": 2})
print(f"\nwith d_model=32 and a 2-layer GRU: {count_parameters(smaller):,} parameters")

# A typo fails at load time, naming the file, the place, the line and the fix.
broken = recipe_file.read_text().replace("{block: gru}", "{block: gru, num_layres: 2}")
(bad_file := Path(tempfile.mkdtemp()) / "my_hybrid_typo.yaml").write_text(broken)
try:
    zoo.create(bad_file, num_items=1682)
except ValidationError as error:
    print(f"\n{error}")

top = model.recommend([[1, 50, 172], [258, 100]], k=5)
print("\ntop-5 item indices per history:", top.items.tolist())
