"""The bundled recipes: headers, rendering with ``zoo info``, and parameter counts from the papers/code."""

from __future__ import annotations

import pytest

import zoo
from zoo.builder import recipe_path, resolve_recipe
from zoo.cli import main as cli_main
from zoo.info import count_parameters

BEAUTY_ITEMS = 12_101  # Amazon Beauty: 12,102 rows with padding (docs/models/mamba4rec.md, "Defaults and parameter count")


@pytest.mark.parametrize("name", zoo.list_models())
def test_header_names_paper_fidelity_and_deviations(name):
    recipe = resolve_recipe(name)
    assert recipe.name == name == recipe_path(name).stem
    assert len(recipe.description.strip()) >= 80, f"{name}: describe the model in its header"
    if recipe.fidelity in ("paper", "code", "baseline"):
        assert recipe.paper, f"{name}: a {recipe.fidelity} recipe names its paper"
        assert recipe.deviations, f"{name}: list where it departs from the paper/code (or say it does not)"
    if recipe.fidelity == "hybrid":
        assert len(recipe.description.split()) >= 40, f"{name}: a hybrid needs a one-paragraph rationale"


def sentences(text: str) -> set[str]:
    """The sentences of a description, whitespace-normalised; short fragments ("D 64.") are left out."""
    flat = " ".join(text.split())
    return {s.strip() for s in flat.replace("; ", ". ").split(". ") if len(s.strip()) >= 40}


ABLATIONS = [n for n in zoo.list_models() if resolve_recipe(n).description.startswith("Ablation")]


def test_some_recipes_are_ablations():
    assert {"sigma-no-flip", "cnn-mamba-cnn-only", "convrec-one-conv"} <= set(ABLATIONS)


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablations_describe_themselves_not_their_full_model(name):
    """An ablation's description is about the ablated model, not a copy of the full model's (shared
    sentences about unchanged parts, such as the head, are fine; most of the full model's are not)."""
    parent = max((n for n in zoo.list_models() if name.startswith(n + "-")), key=len)
    full = sentences(resolve_recipe(parent).description)
    copied = sentences(resolve_recipe(name).description) & full
    assert len(copied) < len(full) / 2, f"{name} repeats {parent}'s description: {sorted(copied)}"


@pytest.mark.parametrize("name", zoo.list_models())
def test_zoo_info_renders_the_block_tree(name, capsys):
    assert cli_main(["info", name, "--num-items", "300", "--length", "20"]) == 0
    out = capsys.readouterr().out
    for part in ("item_encoder:", "encoder:", "readout:", "head:", "parameters", "FLOPs / sequence"):
        assert part in out, f"{name}: `zoo info` output lacks {part!r}"


def test_mamba4rec_matches_the_official_parameter_count():
    # Mamba4Rec on Beauty (12,102 items incl. padding), D 64, 1 layer = 846,784
    # (docs/models/mamba4rec.md, "Defaults and parameter count").
    assert count_parameters(zoo.create("mamba4rec", num_items=BEAUTY_ITEMS)) == 846_784


def test_sasrec_parameter_count_by_hand():
    d, v, length = 64, BEAUTY_ITEMS, 50
    embeddings = (v + 1) * d + length * d + 2 * d  # items, positions, LayerNorm
    attention = 4 * (d * d + d) + 2 * d  # Q, K, V, O with biases + residual LayerNorm
    ffn = (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d
    assert count_parameters(zoo.create("sasrec", num_items=v)) == embeddings + 2 * (attention + ffn)


def test_convrec_parameter_count_by_hand():
    # ConvRec paper §4.1-4.2 with the code's widths, D 256, 19 attributes
    # (docs/models/convrec.md, "Item encoder" and "Convolution down-scaling").
    d, v, f = 256, BEAUTY_ITEMS, 19
    known = int(0.75 * v)  # frequent-item ID trick: the 75% most frequent items, one shared row, padding
    encoder = (
        (known + 2) * d  # ID embedding
        + (f * 4 * d + 4 * d)  # attributes -> 4D
        + (6 * d + d)  # calendar context -> D
        + (5 * d * 4 * d + 4 * d)  # [attributes; context] -> 4D
        + (5 * d * d + d)  # [ID; attributes-context] -> D
        + 2 * (d + 3) + ((d + 3) * d + d)  # intervals: LayerNormC(D+3) and Linear(D+3, D)
    )
    pyramid = sum((d * d * k + d) + (d * d + d) + 2 + 2 * d for k in (2, 5, 7))  # conv, out linear, w1/w2, norm
    assert count_parameters(zoo.create("convrec", num_items=v)) == encoder + pyramid


def test_sigma_code_matches_the_official_parameter_count():
    # docs/models/sigma.md, "Parameter count": the released SIGMA on Beauty (12,102 items incl. padding), D 64 = 904,515.
    assert count_parameters(zoo.create("sigma-code", num_items=BEAUTY_ITEMS)) == 904_515


def mamba1_parameters(d: int, d_state: int, expand: int = 2, d_conv: int = 4) -> int:
    """mamba-ssm's Mamba: in_proj, depthwise conv (+bias), x_proj, dt_proj (+bias), A_log, D, out_proj."""
    inner, rank = expand * d, -(-d // 16)
    return d * 2 * inner + inner * d_conv + inner + inner * (rank + 2 * d_state) + rank * inner + inner + inner * d_state + inner + inner * d


def test_sigma_paper_parameter_count_by_hand():
    d, v = 64, BEAUTY_ITEMS
    linear = d * d + d
    conv3 = d * d * 3 + d
    pf_mamba = 2 * mamba1_parameters(d, 32) + (linear + conv3 + linear)  # two Mambas; DS gate W1, Conv1d, Wδ (Eqs. 4-5)
    fe_gru = conv3 + 3 * (2 * d * d + 2 * d)  # Conv1d, GRU with biases (Eq. 7)
    pffn = (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d  # Eq. 10 + LayerNorm
    expected = (v + 1) * d + pf_mamba + fe_gru + 2 + linear + pffn  # + mixing a1, a2 (Eq. 8) + Eq. 9
    assert count_parameters(zoo.create("sigma", num_items=v)) == expected


def test_cnn_mamba_parameter_count_by_hand():
    d, v, length, layers = 32, BEAUTY_ITEMS, 50, 2
    linear = d * d + d
    se = (d * (d // 4) + d // 4) + ((d // 4) * d + d)
    inner, heads, d_state = 2 * d, 2 * d // 8, 32
    mamba2 = d * (2 * inner + 2 * d_state + heads) + (inner + 2 * d_state) * 5 + 3 * heads + inner + inner * d
    layer = (linear + 2 * d) + (d * d * 7 + d + 2 * d + se) + (mamba2 + se) + linear  # Eq. 1, Eqs. 2-5, 6-9, 10-12
    expected = (v + 1) * d + length * d + 2 * d + layers * layer + linear + (v + 1)  # embeddings; Eq. 13 map and item bias
    assert count_parameters(zoo.create("cnn-mamba", num_items=v)) == expected
