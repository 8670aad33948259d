"""Recipe loading: schema, block validation against signatures, error messages, overrides, safety."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

import zoo
from zoo.recipe import apply_overrides, load_recipe, validate_recipe

BASE = """\
name: tiny
d_model: 16
max_len: 10
item_encoder: {block: item_id, positions: learned}
encoder:
  - residual: {block: self_attention, num_heads: 2}
    dropout: 0.1
  - parallel:
      - {block: gru}
      - {block: ffn, expansion: 2}
    fuse: {block: mixing}
readout: last
head: {block: tied_dot, item_bias: true}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> str:
    with pytest.raises(ValidationError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message, "the error must name the recipe file"
    return message


def needs_mixing():
    if "mixing" not in zoo.list_blocks():
        pytest.fail("the 'mixing' fusion block is not registered")


def test_valid_recipe_builds(tmp_path):
    needs_mixing()
    recipe = load_recipe(write(tmp_path, BASE))
    assert recipe.encoder[0].residual.block == "self_attention"
    model = zoo.create(write(tmp_path, BASE), num_items=40)
    assert model.num_items == 40 and model.max_len == 10


def test_unknown_block_suggests_close_name(tmp_path):
    message = errors_of(write(tmp_path, BASE.replace("block: gru}", "block: gur}")))
    assert "encoder[1].parallel[0].block" in message
    assert "did you mean 'gru'" in message
    assert "line 9" in message


def test_unknown_argument_names_path_line_and_allowed(tmp_path):
    message = errors_of(write(tmp_path, BASE.replace("num_heads: 2", "num_head: 2")))
    assert "encoder[0].residual.num_head" in message
    assert "did you mean 'num_heads'" in message
    assert "line 6" in message


def test_wrong_type_argument(tmp_path):
    message = errors_of(write(tmp_path, BASE.replace("expansion: 2", "expansion: lots")))
    assert "encoder[1].parallel[1].expansion" in message
    assert "ffn" in message


def test_missing_required_field_and_unknown_top_level_key(tmp_path):
    message = errors_of(write(tmp_path, BASE.replace("name: tiny\n", "nmae: tiny\n")))
    assert "name" in message and "nmae" in message


def test_fusion_with_one_input(tmp_path):
    needs_mixing()
    text = BASE.replace("      - {block: ffn, expansion: 2}\n", "")
    message = errors_of(write(tmp_path, text))
    assert "encoder[1].fuse" in message and "1 branch" in message


def test_readout_before_encoder_is_rejected(tmp_path):
    text = BASE.replace("encoder:\n", "encoder:\n  - {block: last}\n", 1)
    message = errors_of(write(tmp_path, text))
    assert "encoder[0].block" in message and "readout" in message


def test_block_of_wrong_kind_in_head(tmp_path):
    message = errors_of(write(tmp_path, BASE.replace("head: {block: tied_dot, item_bias: true}", "head: {block: gru}")))
    assert "head.block" in message and "expected head" in message


def test_context_arguments_are_not_set_per_block(tmp_path):
    message = errors_of(write(tmp_path, BASE.replace("positions: learned", "positions: learned, d_model: 8")))
    assert "item_encoder.d_model" in message


def test_layer_with_two_combinators(tmp_path):
    text = BASE.replace("  - residual: {block: self_attention, num_heads: 2}\n", "  - residual: {block: self_attention}\n    sequential: [gru]\n")
    message = errors_of(write(tmp_path, text))
    assert "encoder[0]" in message and "exactly one of" in message


def test_yaml_tags_cannot_run_code(tmp_path):
    path = write(tmp_path, BASE.replace("name: tiny", "name: !!python/object/apply:os.system ['echo pwned']"))
    with pytest.raises(ValueError, match="not valid YAML"):
        load_recipe(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ValueError, match="a recipe is a YAML mapping"):
        load_recipe(write(tmp_path, "- just\n- a list\n"))


def test_dotted_overrides():
    data = {"d_model": 8, "encoder": [{"block": "gru"}, {"residual": {"block": "ffn"}}], "readout": "last"}
    out = apply_overrides(data, {"encoder.0.num_layers": "2", "encoder[1].residual.expansion": 2.5, "d_model": 32})
    assert out["encoder"][0]["num_layers"] == 2 and out["encoder"][1]["residual"]["expansion"] == 2.5
    assert out["d_model"] == 32 and data["d_model"] == 8, "overrides must not touch the input"
    assert apply_overrides(data, {"readout.block": "mean"})["readout"] == {"block": "mean"}
    with pytest.raises(ValueError, match="not an index"):
        apply_overrides(data, {"encoder.5.d_state": 3})


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, BASE)
    needs_mixing()
    assert load_recipe(path, {"encoder.1.parallel.0.num_layers": 2}).encoder[1].parallel[0].args == {"num_layers": 2}
    with pytest.raises(ValidationError, match="encoder\\[1\\].parallel\\[0\\].num_layres"):
        load_recipe(path, {"encoder.1.parallel.0.num_layres": 2})


def test_create_with_overrides_and_missing_num_items():
    model = zoo.create("sasrec", num_items=20, d_model=32, **{"encoder.0.repeat": 1})
    assert model.recipe.d_model == 32 and model.recipe.encoder[0].repeat == 1
    with pytest.raises(ValueError, match="num_items"):
        zoo.create("sasrec")


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match="did you mean 'sasrec'"):
        zoo.create("sasrek", num_items=5)


def test_validate_recipe_from_dict_names_its_source():
    with pytest.raises(ValidationError, match="from-code"):
        validate_recipe({"name": "x", "encoder": [{"block": "nope"}]}, source="from-code")


def test_recipe_objects_from_code_are_checked_too():
    recipe = zoo.Recipe(name="in-code", d_model=8, encoder=[{"block": "gru", "num_layrs": 2}])
    with pytest.raises(ValidationError, match="did you mean 'num_layers'"):
        zoo.create(recipe, num_items=5)
