"""Untrusted recipes: bounded in what they may cost, never read as something else, errors that locate.

Each test stands for a recipe that, before the limits, exhausted memory or time (alias bombs, repeat
bombs, huge models), built a model other than the one written (duplicate keys, ``true`` for an
integer), or failed without saying where (constraints checked only when a block was built, bad bytes,
bad ``--set`` values). The fuzz tests at the end mutate the bundled recipes at random and ask only
that the library answers with its documented errors, quickly.
"""

from __future__ import annotations

import copy
import json
import math
import resource
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import zoo
from zoo.cli import main
from zoo.paths import recipes_dir
from zoo.recipe import LIMITS, PARAMETERS_ENV, RecipeError, apply_overrides, load_recipe, parse_yaml, validate_recipe

pytestmark = pytest.mark.kernel_independent  # the kernels-off pass leaves it out (pyproject.toml)

BASE = """\
name: tiny
d_model: 16
max_len: 10
item_encoder: {block: item_id, positions: learned}
encoder:
  - repeat: 2
    layers:
      - {block: transformer_layer, num_heads: 2}
readout: last
head: tied_dot
"""

BOMB = "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&{name} [{', '.join([f'*{previous}'] * 10)}]" for previous, name in zip("abcdefgh", "bcdefghi")
) + "]"  # a list of lists: 10**9 strings once expanded, in 500 bytes


def write(tmp_path: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    return path


def error_of(call: Callable[[], Any], kind: type[Exception] = ValueError) -> str:
    with pytest.raises(kind) as info:
        call()
    return str(info.value)


def bounded(call: Callable[[], Any], seconds: float = 2.0, python_mb: float = 20.0) -> str:
    """The message of the ValueError ``call`` raises, which must come within ``seconds`` and ``python_mb``
    of Python allocations."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = error_of(call)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert peak < python_mb, f"allocated {peak:.0f} MB"
    assert len(message) < 20_000, "an error message must not grow with the input"
    return message


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module", autouse=True)
def warm():
    """The first block built on the meta device imports torch's reference kernels once (about a second):
    done here, so the time and memory bounds below measure the recipe alone."""
    zoo.create("sasrec", num_items=10)


# ---------------------------------------------------------------- 1. bounded recipes


def test_alias_bomb_inside_the_encoder_is_rejected_fast(tmp_path):
    path = write(tmp_path, BASE.replace("head: tied_dot", "head: tied_dot\n").replace(
        "      - {block: transformer_layer, num_heads: 2}", f"      - parallel: [gru, gru]\n        fuse: {{block: mixing, init: {BOMB}}}"))
    message = bounded(lambda: load_recipe(path))
    assert str(path) in message and "YAML alias" in message and "max_nodes" in message


def test_alias_bomb_under_a_rejected_key_is_rejected_fast(tmp_path, capsys):
    path = write(tmp_path, BASE + f"unknown_key: {BOMB}\n")
    assert "max_nodes" in bounded(lambda: load_recipe(path))
    start = time.perf_counter()
    assert main(["info", str(path)]) == 2
    assert time.perf_counter() - start < 2.0 and "max_nodes" in capsys.readouterr().err


def test_a_few_aliases_are_fine(tmp_path):
    layer = "      - &layer {block: transformer_layer, num_heads: 2}\n      - *layer"
    recipe = load_recipe(write(tmp_path, BASE.replace("      - {block: transformer_layer, num_heads: 2}", layer)))
    assert [layer.args for layer in recipe.encoder[0].layers] == [{"num_heads": 2}] * 2


def test_recursive_anchor_is_rejected(tmp_path):
    path = write(tmp_path, BASE.replace("readout: last", "readout: &r {block: last, loop: [*r]}"))
    assert "nested more than" in bounded(lambda: load_recipe(path))


def test_shared_structure_in_a_trained_folder_config_is_bounded():
    """A config.json's recipe skips YAML but goes through the same validation: a DAG in memory is counted
    as its expansion (a JSON document cannot share, but Python data handed to validate_recipe can)."""
    layer: Any = ["x"] * 10
    for _ in range(8):
        layer = [layer] * 10
    data = yaml.safe_load(BASE) | {"deviations": layer}
    assert "max_nodes" in bounded(lambda: validate_recipe(data, source="runs/x/config.json"))


def test_nesting_is_bounded(tmp_path):
    deep = "[" * 40 + "]" * 40
    message = bounded(lambda: load_recipe(write(tmp_path, BASE + f"deviations: {deep}\n")))
    assert "line 11" in message and "nested more than 32 levels" in message
    data = yaml.safe_load(BASE) | {"deviations": json.loads(deep)}
    assert "deviations" in bounded(lambda: validate_recipe(data, source="config.json"))


def test_file_size_is_bounded(tmp_path):
    path = write(tmp_path, BASE + "description: " + "x" * LIMITS.max_bytes + "\n")
    assert "max_bytes" in bounded(lambda: load_recipe(path))


def test_repeat_bomb_is_rejected_before_anything_is_built(tmp_path):
    path = write(tmp_path, BASE.replace("repeat: 2", "repeat: 10000000"))
    message = bounded(lambda: load_recipe(path))
    assert "encoder[0].repeat" in message and "line 6" in message and "max_blocks" in message


def test_nested_repeats_multiply(tmp_path):
    text = BASE.replace("      - {block: transformer_layer, num_heads: 2}",
                        "      - repeat: 1000\n        layers: [{block: gru}]").replace("repeat: 2", "repeat: 1000")
    assert "inside repeats of 1,000" in bounded(lambda: load_recipe(write(tmp_path, text)))


def test_parameter_budget_is_checked_at_validation_with_the_line(tmp_path):
    path = write(tmp_path, BASE.replace("d_model: 16", "d_model: 4096").replace("num_heads: 2}", "num_heads: 2, expansion: 64}"))
    before = max_rss_mb()
    message = bounded(lambda: load_recipe(path))
    assert max_rss_mb() - before < 100, "nothing may be allocated for a model over the budget"
    assert "encoder[0].layers[0]" in message and "line 8" in message
    assert "max_parameters" in message and PARAMETERS_ENV in message


def test_parameter_budget_is_checked_before_the_item_table_is_allocated():
    before = max_rss_mb()
    message = bounded(lambda: zoo.create("sasrec", num_items=10**9))  # 64 G floats
    assert max_rss_mb() - before < 100
    assert "item_id" in message and "max_parameters" in message


def test_num_items_in_the_recipe_counts_at_validation(tmp_path):
    path = write(tmp_path, BASE.replace("max_len: 10", "max_len: 10\nnum_items: 100000000"))
    assert "item_encoder" in bounded(lambda: load_recipe(path))


def test_the_budget_can_be_raised_or_lowered(monkeypatch, tmp_path):
    path = write(tmp_path, BASE)
    monkeypatch.setenv(PARAMETERS_ENV, "1000")
    assert "1,000" in error_of(lambda: zoo.create(path, num_items=10))
    monkeypatch.setenv(PARAMETERS_ENV, "lots")
    assert PARAMETERS_ENV in error_of(lambda: load_recipe(path), RecipeError)
    monkeypatch.setattr(LIMITS, "max_parameters", 10**6)  # the attribute wins over the environment
    assert zoo.create(path, num_items=10).num_items == 10


def test_a_block_that_registers_too_many_tensors_stops_early(tmp_path):
    path = write(tmp_path, BASE.replace("{block: transformer_layer, num_heads: 2}", "{block: gru, num_layers: 1000000000, hidden_size: 1}"))
    assert "max_block_tensors" in bounded(lambda: load_recipe(path))


def test_huge_values_are_not_rendered_whole(tmp_path):
    name = "x" * 100_000
    message = bounded(lambda: load_recipe(write(tmp_path, BASE.replace("readout: last", f"readout: {name}"))))
    assert "100,000 characters" in message
    arguments = ", ".join(f"a{i}: [{', '.join(['1'] * 50)}]" for i in range(50))
    message = bounded(lambda: load_recipe(write(tmp_path, BASE.replace("head: tied_dot", f"head: {{block: tied_dot, {arguments}}}"))))
    assert "unknown argument 'a0'" in message


# ---------------------------------------------------------------- 2. YAML that means something else


def test_duplicate_keys_name_the_file_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, BASE.replace("max_len: 10", "max_len: 10\nd_model: 64"))
    message = error_of(lambda: load_recipe(path), RecipeError)
    assert str(path) in message and "duplicate key 'd_model'" in message and "lines 2 and 4" in message


def test_duplicate_keys_in_a_flow_mapping_and_in_an_override(tmp_path):
    path = write(tmp_path, BASE.replace("num_heads: 2}", "num_heads: 2, num_heads: 4}"))
    assert "duplicate key 'num_heads'" in error_of(lambda: load_recipe(path), RecipeError)
    message = error_of(lambda: apply_overrides({}, {"head": "{block: tied_dot, block: x}"}), RecipeError)
    assert "override 'head'" in message and "duplicate key" in message


def test_merge_keys_may_override(tmp_path):
    text = BASE.replace("readout: last\nhead: tied_dot", "readout: &r {block: last}\nhead: {<<: *r, block: tied_dot, item_bias: true}")
    assert load_recipe(write(tmp_path, text)).head.args == {"item_bias": True}


@pytest.mark.parametrize("old, new, where", [
    ("num_heads: 2}", "num_heads: true}", "encoder[0].layers[0].num_heads"),
    ("num_heads: 2}", "num_heads: 2.0}", "encoder[0].layers[0].num_heads"),
    ("d_model: 16", "d_model: true", "d_model"),
    ("repeat: 2", "repeat: 2.0", "encoder[0].repeat"),
    ("num_heads: 2}", "num_heads: 2, causal: 1}", "encoder[0].layers[0].causal"),
    ("head: tied_dot", "head: tied_dot\ntrain: {epochs: true}", "train.epochs"),
    ("head: tied_dot", "head: tied_dot\ntrain: {lr: true}", "train.lr"),
    ("head: tied_dot", "head: tied_dot\ntrain: {lr: .nan}", "train.lr"),
])
def test_scalars_are_strict(tmp_path, old, new, where):
    path = write(tmp_path, BASE.replace(old, new))
    message = error_of(lambda: load_recipe(path), ValidationError)
    assert where in message and "line" in message


def test_yaml_natural_numbers_still_work(tmp_path):
    text = BASE.replace("num_heads: 2}", "num_heads: 2, dropout: 1e-1, expansion: 4}") + "train: {lr: 1e-3, weight_decay: 0, ema_decay: 9.9e-1}\n"
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.train.lr == 1e-3 and recipe.train.weight_decay == 0 and recipe.train.ema_decay == 0.99
    assert recipe.encoder[0].layers[0].args["dropout"] == 0.1
    assert load_recipe(write(tmp_path, BASE), {"train.lr": "3e-4"}).train.lr == 3e-4


# ---------------------------------------------------------------- 3. errors a user can act on


@pytest.mark.parametrize("old, new, words", [
    ("num_heads: 2}", "num_heads: 3}", "divisible by num_heads 3"),
    ("num_heads: 2}", "num_heads: 0}", "num_heads 0"),
    ("num_heads: 2}", "num_heads: 2, attention_dropout: 1.5}", "attention_dropout must be in [0, 1)"),
    ("num_heads: 2}", "num_heads: 2, expansion: 0}", "hidden width of 0"),
    ("num_heads: 2}", "num_heads: 2, norm_eps: 0}", "norm_eps must be > 0"),
    ("{block: transformer_layer, num_heads: 2}", "{block: gru, num_layers: 0}", "num_layers must be >= 1"),
    ("{block: transformer_layer, num_heads: 2}", "{block: gru, dropout: 1.5}", "dropout must be in [0, 1)"),
    ("{block: transformer_layer, num_heads: 2}", "{block: ffn, dropout: -0.1}", "dropout must be in [0, 1)"),
    ("{block: transformer_layer, num_heads: 2}", "{block: mamba, d_state: 0}", "d_state"),
])
def test_constructor_constraints_are_located(tmp_path, old, new, words):
    path = write(tmp_path, BASE.replace(old, new))
    message = error_of(lambda: load_recipe(path), ValidationError)
    assert str(path) in message and "encoder[0].layers[0]" in message and "(line 8)" in message
    assert words in message


def test_item_encoder_constraint_is_located(tmp_path):
    path = write(tmp_path, BASE.replace("positions: learned}", "positions: learned, dropout: 1.0}"))
    message = error_of(lambda: load_recipe(path), ValidationError)
    assert "item_encoder" in message and "(line 4)" in message and "dropout must be in [0, 1)" in message


def test_fusion_inputs_must_match_the_branches(tmp_path):
    layer = "      - parallel: [gru, gru]\n        fuse: {block: mixing, num_inputs: 1000000000}"
    path = write(tmp_path, BASE.replace("      - {block: transformer_layer, num_heads: 2}", layer))
    message = bounded(lambda: load_recipe(path))
    assert "encoder[0].layers[0].fuse.num_inputs" in message and "2 branch(es)" in message
    path = write(tmp_path, BASE.replace("      - {block: transformer_layer, num_heads: 2}", layer.replace("num_inputs: 1000000000", "init: [1, 2, 3]")))
    assert "combines exactly 3 streams" in error_of(lambda: load_recipe(path), ValidationError)


def test_non_utf8_recipe_names_the_file_and_line(tmp_path):
    path = write(tmp_path, BASE.encode() + b"description: caf\xe9\n")
    message = error_of(lambda: load_recipe(path), RecipeError)
    assert str(path) in message and "line 11" in message and "UTF-8" in message


def test_bad_override_values_name_the_override(capsys):
    message = error_of(lambda: load_recipe(recipes_dir() / "sasrec.yaml", {"d_model": "[1,"}), RecipeError)
    assert "override 'd_model'" in message and "not valid YAML" in message
    assert main(["info", "sasrec", "--set", "encoder=[{block: gru"]) == 2
    assert "override 'encoder'" in capsys.readouterr().err


@pytest.mark.parametrize("override, expected", [
    ({"encoder.0.layers.0.num_head": 3}, "did you mean 'num_heads'"),
    ({"trian.lr": "1e-4"}, "did you mean 'train'"),
    ({"train.lrr": "1e-4"}, "did you mean 'lr'"),
    ({"encoder.0.repaet": "3"}, "did you mean 'repeat'"),
])
def test_override_typos_point_at_the_override(override, expected):
    message = error_of(lambda: load_recipe(recipes_dir() / "sasrec.yaml", override), ValidationError)
    (path,) = override
    assert expected in message and f"(override {path!r})" in message
    assert "(line" not in message, "the line of the bundled file is not where the typo is"


def test_override_that_breaks_a_constraint_points_at_it(capsys):
    assert main(["info", "sasrec", "--set", "encoder.0.layers.0.num_heads=3"]) == 2
    err = capsys.readouterr().err
    assert "divisible by num_heads 3" in err and "(override 'encoder.0.layers.0.num_heads')" in err


def test_every_bundled_recipe_is_within_the_limits():
    for name in zoo.list_models():
        load_recipe(recipes_dir() / f"{name}.yaml")


# ---------------------------------------------------------------- fuzzing the bundled recipes

BUNDLED = {path.stem: path.read_text() for path in sorted(recipes_dir().glob("*.yaml"))}
KEYS = sorted({"block", "repeat", "layers", "parallel", "fuse", "residual", "sequential", "num_heads", "d_state",
               "expansion", "dropout", "num_layers", "num_inputs", "init", "kernel_size", "max_len", "d_model",
               "num_items", "train", "lr", "epochs", "positions", "hidden_size", "text_dim", "remain", "schedule"})
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.integers(-(10**12), 10**12), st.sampled_from([0.0, 0.5, 1.0, 1.5, -1e-3, 2.0]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(zoo.list_blocks() + KEYS),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def paths(value: Any, here: tuple = ()) -> list[tuple]:
    """Every place in a recipe's data: the top, each mapping value and each list item."""
    found = [here]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found += paths(child, (*here, key))
    return found


@st.composite
def mutated_recipes(draw: st.DrawFn) -> str:
    """A bundled recipe with one to three random edits: a value replaced, a key added or removed, a list item repeated."""
    data = yaml.safe_load(BUNDLED[draw(st.sampled_from(sorted(BUNDLED)))])
    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(paths(data)))
        parent = data
        for key in place[:-1]:
            parent = parent[key]
        target = parent[place[-1]] if place else data
        action = draw(st.sampled_from(["replace", "add", "remove", "repeat"]))
        if action == "replace" and place:
            parent[place[-1]] = draw(VALUES)
        elif action == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(KEYS))] = draw(VALUES)
        elif action == "remove" and isinstance(target, dict) and target:
            del target[draw(st.sampled_from(sorted(target, key=str)))]
        elif action == "repeat" and isinstance(target, list) and target:
            target.append(copy.deepcopy(draw(st.sampled_from(target))))
    return yaml.safe_dump(data, sort_keys=False)


def only_documented_errors(call: Callable[[], Any], seconds: float) -> Any:
    """``call()``'s result, else a ValueError with a message; anything else, or a slow answer, fails."""
    start = time.perf_counter()
    try:
        return call()
    except ValueError as exc:
        assert str(exc).strip(), "an error must say what is wrong"
        return None
    finally:
        assert time.perf_counter() - start < seconds


FUZZ = settings(max_examples=50, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(text=mutated_recipes())
def test_mutated_recipes_raise_only_recipe_errors_and_build_when_valid(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_text(text)
        recipe = only_documented_errors(lambda: load_recipe(path), seconds=3.0)
    if recipe is not None:  # what validates builds, within a small budget
        budget, LIMITS.max_parameters = LIMITS.max_parameters, 2_000_000
        try:
            only_documented_errors(lambda: zoo.create(recipe, num_items=30), seconds=5.0)
        finally:
            LIMITS.max_parameters = budget


@FUZZ
@given(name=st.sampled_from(sorted(BUNDLED)), at=st.floats(0, 1), junk=st.binary(min_size=1, max_size=8))
def test_corrupted_recipe_bytes_raise_only_recipe_errors(name, at, junk):
    raw = BUNDLED[name].encode()
    cut = math.floor(at * len(raw))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        path.write_bytes(raw[:cut] + junk + raw[cut:])
        only_documented_errors(lambda: load_recipe(path), seconds=3.0)


@FUZZ
@given(value=st.text(max_size=30))
def test_override_values_raise_only_recipe_errors(value):
    only_documented_errors(lambda: parse_yaml(value, "override"), seconds=1.0)
    only_documented_errors(lambda: load_recipe(recipes_dir() / "gru4rec.yaml", {"encoder.0.num_layers": value}), seconds=3.0)
