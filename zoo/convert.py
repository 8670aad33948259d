"""``zoo.convert_recbole``: a RecBole checkpoint as a zoo trained folder that gives the original's scores.

Supported: RecBole 1.2's SASRec, GRU4Rec and BERT4Rec (``recbole/model/sequential_recommender/``), the
official Mamba4Rec (``chengkai-liu/Mamba4Rec``, ``mamba4rec.py``) and the official SIGMA
(``Applied-Machine-Learning-Lab/SIMGA``, ``model/gated_mamba.py``), as the recipes ``sasrec``,
``gru4rec``, ``bert4rec``, ``mamba4rec`` and ``sigma-code``. The checkpoint is the file RecBole's
trainer writes (``torch.save`` of a dict with ``config``, ``epoch``, ``cur_step``,
``best_valid_score``, ``state_dict``, ``other_parameter``, ``optimizer``). It is read by
:func:`zoo.safe_unpickle.load_checkpoint`, which rebuilds tensors and plain containers only and never
runs code from the file; RecBole's ``Config`` object becomes an inert placeholder whose recorded
attributes give the settings the weights do not show (attention heads, activation, LayerNorm eps,
maximum length). The recipe's sizes come from the weights' shapes; its training settings (dropout,
``train:``) stay the bundled recipe's. The item tokens come from the dataset or a token list
(:mod:`zoo.recbole_items`). See docs/converting.md.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from zoo.builder import resolve_recipe
from zoo.data.vocab import Vocabulary
from zoo.model import SeqRecModel
from zoo.recbole_items import inter_file, read_token_list, recbole_item_tokens
from zoo.recipe import Recipe, apply_overrides, validate_recipe
from zoo.safe_unpickle import Placeholder, load_checkpoint

RECIPE_OF_MODEL = {"SASRec": "sasrec", "GRU4Rec": "gru4rec", "BERT4Rec": "bert4rec", "Mamba4Rec": "mamba4rec",
                   "SIGMA": "sigma-code"}
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "swish": "silu", "tanh": "tanh", "sigmoid": "sigmoid"}
MAMBA_PARAMETERS = ("A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                    "dt_proj.weight", "dt_proj.bias", "out_proj.weight")
SIGMA_FLIPPED_SLOTS = 45  # gated_mamba.py @ 018d73a flips `input_tensor[:, :45]` of the padded batch


class ConversionError(ValueError):
    """A checkpoint (or item source) that does not convert to the chosen recipe; the message names the file."""


@dataclass(frozen=True)
class Rule:
    """One zoo tensor ``target`` built from RecBole tensors ``sources`` (``combine`` joins or slices them)."""

    target: str
    sources: tuple[str, ...]
    combine: Callable[[list[Tensor]], Tensor] = lambda tensors: tensors[0]


@dataclass
class Plan:
    """How one checkpoint becomes a recipe and its weights."""

    overrides: dict[str, Any]
    rules: list[Rule]
    num_items: int
    sizes: str
    edit: Callable[[dict[str, Any]], None] = lambda data: None
    notes: list[str] = field(default_factory=list)
    stale_deviations: tuple[str, ...] = ()


@dataclass
class Checkpoint:
    """A RecBole checkpoint as read: its path, tensors by RecBole name, and its settings (config values)."""

    path: Path
    state: dict[str, Tensor]
    settings: dict[str, Any]
    facts: dict[str, Any]
    recipe: str = ""

    def tensor(self, name: str) -> Tensor:
        """The tensor ``name``; a clear error when the checkpoint has none of that name."""
        if name not in self.state:
            held = ", ".join(list(self.state)[:12]) + (" ..." if len(self.state) > 12 else "")
            raise ConversionError(f"{self.path}: its state_dict does not fit recipe {self.recipe!r} (RecBole "
                                  f"{MODEL_OF_RECIPE.get(self.recipe)}): it has no {name!r} (it holds: {held})")
        return self.state[name]

    def setting(self, key: str, needed_for: str) -> Any:
        """A value of RecBole's config; a clear error saying how to pass it when the checkpoint lacks it."""
        value = self.settings.get(key)
        if value is None or isinstance(value, Placeholder):
            raise ConversionError(
                f"{self.path}: its RecBole config does not give {key!r}, which {needed_for} needs; pass it: "
                f"convert_recbole(..., config={{{key!r}: ...}}) or `zoo convert ... --config {key}=VALUE`"
            )
        return value

    def count_layers(self, prefix: str) -> int:
        """How many ``prefix{i}.`` layers the state dict has (at least 1, so a wrong file names layer 0 missing)."""
        found = {int(m.group(1)) for name in self.state if (m := re.match(re.escape(prefix) + r"(\d+)\.", name))}
        return max(len(found), 1)


# ---------------------------------------------------------------- reading the checkpoint


def read_checkpoint(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> Checkpoint:
    """Read a RecBole checkpoint safely; its ``state_dict`` must hold tensors only."""
    path = Path(path)
    content = load_checkpoint(path)
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        kind = f"a dict with keys {sorted(map(str, content))[:10]}" if isinstance(content, dict) else type(content).__name__
        raise ConversionError(f"{path}: not a RecBole checkpoint (a dict with a 'state_dict'); it holds {kind}")
    state = {}
    for name, value in content["state_dict"].items():
        if not isinstance(value, Tensor):
            what = f"a {value.global_name()} object" if isinstance(value, Placeholder) else f"a {type(value).__name__}"
            raise ConversionError(f"{path}: state_dict[{name!r}] is {what}, not a tensor; the file holds more than weights "
                                  "and is not converted")
        state[str(name)] = value.detach().clone()
    settings = {**recbole_settings(content.get("config")), **dict(config or {})}
    facts = {key: content[key] for key in ("epoch", "best_valid_score") if isinstance(content.get(key), (int, float))}
    return Checkpoint(path, state, settings, facts)


def recbole_settings(config: Any) -> dict[str, Any]:
    """RecBole's final config values from a checkpoint's ``config``: a placeholder of RecBole's ``Config``
    (its recorded ``final_config_dict``) or a plain dict; empty when neither."""
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, Placeholder) and isinstance(config.state, dict):
        final = config.state.get("final_config_dict")
        if isinstance(final, dict):
            return dict(final)
    return {}


# ---------------------------------------------------------------- shared pieces of the plans


def shape(checkpoint: Checkpoint, name: str) -> tuple[int, ...]:
    """The shape of the checkpoint's tensor ``name``."""
    return tuple(checkpoint.tensor(name).shape)


def concat(tensors: list[Tensor]) -> Tensor:
    """Tensors stacked along their first axis (``query``, ``key``, ``value`` -> ``qkv``)."""
    return torch.cat(tensors, 0)


def same_names(target_prefix: str, source_prefix: str, names: Sequence[str]) -> list[Rule]:
    """``target_prefix + n`` from ``source_prefix + n`` for every ``n``."""
    return [Rule(target_prefix + n, (source_prefix + n,)) for n in names]


def linear(target: str, source: str) -> list[Rule]:
    """A Linear layer's (or a LayerNorm's, or a Conv1d's) weight and bias."""
    return same_names(target + ".", source + ".", ("weight", "bias"))


norm = linear  # a LayerNorm has the same two tensors


def transformer_rules(layers: int, target: str) -> list[Rule]:
    """RecBole's ``TransformerEncoder`` layers as the zoo's ``transformer_layer`` blocks ``target{i}``.

    ``query``, ``key``, ``value`` stack into the fused ``qkv`` projection (heads split the same way:
    consecutive slices of the width)."""
    rules = []
    for i in range(layers):
        layer, zoo = f"trm_encoder.layer.{i}.", f"{target}{i}."
        attention, ffn = f"{layer}multi_head_attention.", f"{layer}feed_forward."
        for p in ("weight", "bias"):
            qkv = tuple(f"{attention}{n}.{p}" for n in ("query", "key", "value"))
            rules.append(Rule(f"{zoo}attention.qkv.{p}", qkv, concat))
        rules += linear(f"{zoo}attention.out", f"{attention}dense") + norm(f"{zoo}attention_norm", f"{attention}LayerNorm")
        rules += linear(f"{zoo}ffn.w1", f"{ffn}dense_1") + linear(f"{zoo}ffn.w2", f"{ffn}dense_2")
        rules += norm(f"{zoo}ffn_norm", f"{ffn}LayerNorm")
    return rules


def transformer_settings(checkpoint: Checkpoint, recipe: str, layer_path: str) -> dict[str, Any]:
    """Overrides of a ``transformer_layer`` (at ``layer_path``) and the item encoder from RecBole's config."""
    d_model = shape(checkpoint, "item_embedding.weight")[1]
    heads = int(checkpoint.setting("n_heads", recipe))
    if heads < 1 or d_model % heads:
        raise ConversionError(f"{checkpoint.path}: n_heads {heads} does not divide the hidden size {d_model}")
    act = str(checkpoint.setting("hidden_act", recipe))
    if act not in ACTIVATIONS:
        raise ConversionError(f"{checkpoint.path}: hidden_act {act!r} is not one of RecBole's {sorted(ACTIVATIONS)}")
    eps = float(checkpoint.setting("layer_norm_eps", recipe))
    inner = shape(checkpoint, "trm_encoder.layer.0.feed_forward.dense_1.weight")[0]
    return {
        "d_model": d_model, "max_len": shape(checkpoint, "position_embedding.weight")[0], "item_encoder.norm_eps": eps,
        f"{layer_path}.num_heads": heads, f"{layer_path}.activation": ACTIVATIONS[act], f"{layer_path}.norm_eps": eps,
        f"{layer_path}.expansion": inner / d_model,
    }


def mamba_sizes(checkpoint: Checkpoint, prefix: str) -> dict[str, int]:
    """``d_state``, ``d_conv``, ``expand`` and ``dt_rank`` of a mamba-ssm ``Mamba`` from its tensors' shapes."""
    d_model = shape(checkpoint, "item_embedding.weight")[1]
    inner, d_state = shape(checkpoint, prefix + "A_log")
    if inner % d_model:
        raise ConversionError(f"{checkpoint.path}: {prefix}A_log has {inner} rows, not a multiple of the width {d_model}")
    return {"d_state": d_state, "d_conv": shape(checkpoint, prefix + "conv1d.weight")[-1], "expand": inner // d_model,
            "dt_rank": shape(checkpoint, prefix + "x_proj.weight")[0] - 2 * d_state}


def sequence_length(checkpoint: Checkpoint, recipe: str) -> int:
    """RecBole's ``MAX_ITEM_LIST_LENGTH``: the newest items a history keeps, and the padded width."""
    return int(checkpoint.setting("MAX_ITEM_LIST_LENGTH", recipe))


def item_count(checkpoint: Checkpoint, other_rows: int = 1) -> int:
    """Items in the checkpoint's table: its rows less padding (and BERT4Rec's ``[MASK]``)."""
    return shape(checkpoint, "item_embedding.weight")[0] - other_rows


def embedding_rules(extra: Sequence[Rule] = ()) -> list[Rule]:
    """The item table, then ``extra``."""
    return [Rule("item_encoder.embedding.weight", ("item_embedding.weight",)), *extra]


# ---------------------------------------------------------------- one plan per model


def sasrec_plan(checkpoint: Checkpoint) -> Plan:
    """RecBole's SASRec: item + position embeddings, LayerNorm, dropout, post-norm Transformer layers."""
    layers = checkpoint.count_layers("trm_encoder.layer.")
    overrides = transformer_settings(checkpoint, "sasrec", "encoder.0.layers.0") | {"encoder.0.repeat": layers}
    rules = embedding_rules([Rule("item_encoder.position.weight", ("position_embedding.weight",)),
                             *norm("item_encoder.norm", "LayerNorm")])
    rules += transformer_rules(layers, "encoder.layers.")
    return Plan(overrides, rules, item_count(checkpoint), _sizes(overrides, layers=layers))


def bert4rec_plan(checkpoint: Checkpoint) -> Plan:
    """RecBole 1.2's BERT4Rec: SASRec's encoder without the causal mask, an output transform
    (``output_ffn`` -> GELU -> ``output_ln``), the tied table plus ``output_bias``; at inference
    ``reconstruct_test_data`` appends ``[MASK]`` and drops every row's first slot."""
    layers = checkpoint.count_layers("trm_encoder.layer.")
    overrides = transformer_settings(checkpoint, "bert4rec", "encoder.0.layers.0") | {
        "encoder.0.repeat": layers, "item_encoder.mask_displaces_oldest": True, "head.item_bias": True}
    eps = overrides["item_encoder.norm_eps"]

    def add_output_transform(data: dict[str, Any]) -> None:
        data["encoder"] += [{"block": "linear", "activation": "gelu"}, {"block": "layernorm", "eps": eps}]

    rules = embedding_rules([Rule("item_encoder.position.weight", ("position_embedding.weight",)),
                             *norm("item_encoder.norm", "LayerNorm")])
    rules += transformer_rules(layers, "encoder.layers.0.layers.")
    rules += linear("encoder.layers.1.linear", "output_ffn") + norm("encoder.layers.2.norm", "output_ln")
    rules.append(Rule("head.bias", ("output_bias",)))
    notes = [
        "The output layer is RecBole's: Linear -> GELU -> LayerNorm on the [MASK] state (two encoder layers after the "
        "Transformer), then the tied item table plus a per-item bias (the paper's has no LayerNorm).",
        "At inference the appended [MASK] always displaces the oldest item (item_encoder mask_displaces_oldest), as "
        "RecBole 1.2's reconstruct_test_data does: a history shorter than max_len loses its oldest item too.",
    ]
    return Plan(overrides, rules, item_count(checkpoint, other_rows=2), _sizes(overrides, layers=layers),
                add_output_transform, notes, stale_deviations=("Full-softmax cross-entropy over all items (as the paper)",))


def gru4rec_plan(checkpoint: Checkpoint) -> Plan:
    """RecBole's GRU4Rec: item embeddings, dropout, a bias-free GRU (``num_layers``), ``dense`` back to the
    embedding width, the state at the newest item."""
    d_model = shape(checkpoint, "item_embedding.weight")[1]
    hidden = shape(checkpoint, "gru_layers.weight_hh_l0")[1]
    layers = len([n for n in checkpoint.state if re.fullmatch(r"gru_layers\.weight_ih_l\d+", n)]) or 1
    overrides = {"d_model": d_model, "max_len": sequence_length(checkpoint, "gru4rec"), "encoder.0.num_layers": layers}
    gru = [f"{kind}_l{k}" for k in range(layers) for kind in ("weight_ih", "weight_hh")]
    if hidden == d_model:
        rules = embedding_rules(same_names("encoder.layers.0.gru.", "gru_layers.", gru)
                                + linear("encoder.layers.1.linear", "dense"))
        return Plan(overrides, rules, item_count(checkpoint), _sizes(overrides, layers=layers))

    def gru_with_projection(data: dict[str, Any]) -> None:
        data["encoder"] = [data["encoder"][0] | {"hidden_size": hidden}]  # the gru block's proj replaces the linear

    rules = embedding_rules(same_names("encoder.gru.", "gru_layers.", gru) + linear("encoder.proj", "dense"))
    notes = [f"The GRU is {hidden} wide and its proj layer (RecBole's dense) maps it back to d_model {d_model}."]
    return Plan(overrides, rules, item_count(checkpoint), _sizes(overrides, layers=layers, gru_hidden=hidden),
                gru_with_projection, notes,
                stale_deviations=("The GRU's hidden width equals the embedding width",))


def mamba4rec_plan(checkpoint: Checkpoint) -> Plan:
    """The official Mamba4Rec: embeddings -> Dropout -> LayerNorm; per layer Mamba, then Dropout -> LayerNorm
    (plus the layer's input when there is more than one layer), then the feed-forward with residual."""
    layers = checkpoint.count_layers("mamba_layers.")
    sizes = mamba_sizes(checkpoint, "mamba_layers.0.mamba.")
    overrides = {"d_model": shape(checkpoint, "item_embedding.weight")[1],
                 "max_len": sequence_length(checkpoint, "mamba4rec"), **{f"encoder.0.{k}": v for k, v in sizes.items()}}
    rules = embedding_rules(norm("item_encoder.norm", "LayerNorm"))
    if layers == 1:
        rules += mamba_layer_rules("mamba_layers.0.", "encoder.layers.0.", "encoder.layers.2.norm", "encoder.layers.3.")
        return Plan(overrides, rules, item_count(checkpoint), _sizes(overrides, layers=1))

    def residual_layers(data: dict[str, Any]) -> None:
        mamba, dropout, _, ffn = data["encoder"]
        data["encoder"] = [{"repeat": layers, "layers": [{"residual": mamba, "dropout": dropout["p"]}, ffn]}]

    for i in range(layers):
        zoo = f"encoder.layers.{i}.layers."
        rules += mamba_layer_rules(f"mamba_layers.{i}.", f"{zoo}0.inner.", f"{zoo}0.norm", f"{zoo}1.")
    notes = [f"{layers} Mamba layers, each LayerNorm(x + Dropout(Mamba(x))) then the feed-forward, as the official "
             "code builds more than one layer."]
    return Plan(overrides, rules, item_count(checkpoint), _sizes(overrides, layers=layers), residual_layers, notes)


def mamba_layer_rules(source: str, mamba: str, norm_target: str, ffn: str) -> list[Rule]:
    """One official ``MambaLayer``: its Mamba, its LayerNorm and its ``FeedForward`` (w_1, w_2, LayerNorm)."""
    return (same_names(mamba, source + "mamba.", MAMBA_PARAMETERS) + norm(norm_target, source + "LayerNorm")
            + linear(f"{ffn}inner.w1", source + "ffn.w_1") + linear(f"{ffn}inner.w2", source + "ffn.w_2")
            + norm(f"{ffn}norm", source + "ffn.LayerNorm"))


def sigma_plan(checkpoint: Checkpoint) -> Plan:
    """The official SIGMA (one G-Mamba layer; docs/models/sigma.md, "Released code") as ``sigma-code``."""
    layers = checkpoint.count_layers("mamba_layers.")
    if layers != 1:
        raise ConversionError(f"{checkpoint.path}: {layers} SIGMA layers; sigma-code reproduces the released code's one "
                              "layer (with more, the padded slots' values of each layer would matter)")
    max_len = sequence_length(checkpoint, "sigma-code")
    sizes = mamba_sizes(checkpoint, "mamba_layers.0.gmamba.mamba.")
    auto_rank = math.ceil(shape(checkpoint, "item_embedding.weight")[1] / 16)
    if sizes.pop("dt_rank") != auto_rank:
        raise ConversionError(f"{checkpoint.path}: its Mamba's dt_rank is not mamba-ssm's default ceil(d_model / 16) = "
                              f"{auto_rank}, the only one bidirectional_mamba builds")
    overrides = {"d_model": shape(checkpoint, "item_embedding.weight")[1], "max_len": max_len,
                 "encoder.0.parallel.0.remain": max(max_len - SIGMA_FLIPPED_SLOTS, 0),
                 **{f"encoder.0.parallel.0.{k}": v for k, v in sizes.items()}}
    g, pf, fe = "mamba_layers.0.gmamba.", "encoder.layers.0.branches.0.", "encoder.layers.0.branches.1.layers."
    weights = g + "combining_weights"  # [GRU, flipped, forward]
    rules = embedding_rules(norm("item_encoder.norm", "LayerNorm"))
    rules += [Rule(pf + "stream_weights", (weights,), lambda t: t[0][[2, 1]]),
              Rule(fe + "1.weight", (weights,), lambda t: t[0][:1])]
    rules += same_names(pf + "mamba.", g + "mamba.", MAMBA_PARAMETERS)
    rules += linear(pf + "gate.dense", g + "dense1") + linear(pf + "gate.silu_proj", g + "selective_gate_si.1")
    rules += linear(pf + "gate.sigmoid_proj", g + "selective_gate_sig.1") + linear(pf + "flipped_dense", g + "dense2")
    rules += linear(fe + "0.conv.conv", g + "conv1d") + same_names(fe + "0.gru.", g + "gru.", ("weight_ih_l0", "weight_hh_l0"))
    rules += linear("encoder.layers.1.linear", g + "projection") + norm("encoder.layers.3.norm", "mamba_layers.0.LayerNorm")
    rules += linear("encoder.layers.4.inner.w1", "mamba_layers.0.ffn.w_1")
    rules += linear("encoder.layers.4.inner.w2", "mamba_layers.0.ffn.w_2")
    rules += norm("encoder.layers.4.norm", "mamba_layers.0.ffn.LayerNorm")
    return Plan(overrides, rules, item_count(checkpoint), _sizes(overrides, layers=1))


def _sizes(overrides: Mapping[str, Any], **extra: Any) -> str:
    """The converted sizes, for the recipe's description."""
    shown = {"d_model": overrides["d_model"], "max_len": overrides["max_len"], **extra}
    return ", ".join(f"{k} {v}" for k, v in shown.items())


PLANS: dict[str, Callable[[Checkpoint], Plan]] = {
    "sasrec": sasrec_plan, "gru4rec": gru4rec_plan, "bert4rec": bert4rec_plan, "mamba4rec": mamba4rec_plan,
    "sigma-code": sigma_plan,
}
MODEL_OF_RECIPE = {recipe: model for model, recipe in RECIPE_OF_MODEL.items()}


# ---------------------------------------------------------------- recipe, weights, vocabulary


def choose_recipe(checkpoint: Checkpoint, recipe: str | None) -> str:
    """The recipe to convert to: ``recipe`` if given (checked against the config's ``model``), else the config's."""
    model = checkpoint.settings.get("model")
    model = model if isinstance(model, str) else None
    supported = ", ".join(f"{m} -> {r}" for m, r in RECIPE_OF_MODEL.items())
    if recipe is None:
        if model not in RECIPE_OF_MODEL:
            said = f"says model {model!r}" if model else "does not name the model"
            raise ConversionError(f"{checkpoint.path}: its RecBole config {said}; pass recipe= one of: {supported}")
        return RECIPE_OF_MODEL[model]
    if recipe not in PLANS:
        raise ConversionError(f"recipe {recipe!r} cannot be converted to; supported: {supported}")
    if model is not None and RECIPE_OF_MODEL.get(model) != recipe:
        raise ConversionError(f"{checkpoint.path} holds a RecBole {model!r} model, which does not convert to recipe "
                              f"{recipe!r} (it takes {MODEL_OF_RECIPE[recipe]})")
    return recipe


def converted_recipe(name: str, plan: Plan, checkpoint: Checkpoint) -> Recipe:
    """The bundled recipe ``name`` with the checkpoint's sizes and the plan's structure."""
    data = apply_overrides(resolve_recipe(name).model_dump(mode="json"), plan.overrides)
    plan.edit(data)
    data["pretrained"] = {}
    data["description"] = (data["description"].rstrip() + f" Converted from a RecBole {MODEL_OF_RECIPE[name]} "
                           f"checkpoint ({plan.sizes}); where these sizes differ from the text above, they hold.")
    kept = [d for d in data["deviations"] if not d.startswith(plan.stale_deviations)]  # () keeps them all
    data["deviations"] = kept + plan.notes
    return validate_recipe(data, source=f"recipe {name!r} converted from {checkpoint.path}")


def translate(checkpoint: Checkpoint, rules: list[Rule], recipe: str) -> dict[str, Tensor]:
    """The zoo state dict from RecBole's, after checking that the checkpoint has exactly the tensors expected."""
    expected = list(dict.fromkeys(name for rule in rules for name in rule.sources))
    missing = [name for name in expected if name not in checkpoint.state]
    unexpected = [name for name in checkpoint.state if name not in set(expected)]
    if missing or unexpected:
        parts = [f"{checkpoint.path}: its state_dict does not fit recipe {recipe!r} "
                 f"(RecBole {MODEL_OF_RECIPE[recipe]} with the sizes its tensors show):"]
        if missing:
            parts.append(f"missing ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            shown = ", ".join(f"{name} {tuple(checkpoint.state[name].shape)}" for name in unexpected[:20])
            parts.append(f"unexpected ({len(unexpected)}): {shown}" + (" ..." if len(unexpected) > 20 else ""))
        raise ConversionError("\n  ".join(parts))
    return {rule.target: rule.combine([checkpoint.state[name] for name in rule.sources]) for rule in rules}


def load_converted(model: SeqRecModel, weights: dict[str, Tensor], rules: list[Rule], checkpoint: Checkpoint) -> None:
    """Load ``weights`` into ``model`` strictly; shape mismatches are reported with the RecBole names."""
    expected = model.state_dict()
    if set(expected) != set(weights):
        raise ConversionError(f"{checkpoint.path}: the converted tensors do not match recipe {model.recipe.name!r}: "
                              f"without a tensor: {sorted(set(expected) - set(weights))[:10]}, "
                              f"not in the recipe: {sorted(set(weights) - set(expected))[:10]}")
    wrong = [f"{'+'.join(rule.sources)} -> {rule.target}: checkpoint {tuple(weights[rule.target].shape)}, "
             f"recipe {tuple(expected[rule.target].shape)}"
             for rule in rules if weights[rule.target].shape != expected[rule.target].shape]
    if wrong:
        raise ConversionError(f"{checkpoint.path}: tensor shapes do not fit recipe {model.recipe.name!r}:\n  "
                              + "\n  ".join(wrong[:20]))
    model.load_state_dict(weights, strict=True)


def item_vocabulary(source: str | os.PathLike | Sequence[str] | None, checkpoint: Checkpoint,
                    num_items: int) -> tuple[Vocabulary, str]:
    """The raw item tokens of ids ``1..num_items`` and where they came from (see :mod:`zoo.recbole_items`)."""
    if source is None:
        raise ConversionError(
            f"{checkpoint.path}: a RecBole checkpoint stores item ids, not the raw item tokens; pass "
            "dataset_dir_or_vocab= the RecBole dataset folder or its .inter file, or a token list file "
            "(one raw item token per line, in id order)"
        )
    if isinstance(source, (list, tuple)):
        tokens, where = [str(token) for token in source], "the token list passed"
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: expected a RecBole dataset folder, a .inter file or a token list")
        if path.is_dir() or path.suffix == ".inter":
            path = inter_file(path, checkpoint.settings)
            tokens = recbole_item_tokens(path, checkpoint.settings)
        else:
            tokens = read_token_list(path)
        where = str(path)
    if len(tokens) != num_items:
        raise ConversionError(
            f"{where} gives {len(tokens)} item tokens, but the item table of {checkpoint.path} has rows for {num_items} "
            "items (plus padding): the tokens must be those of the dataset and filtering the model was trained with"
        )
    try:
        return Vocabulary(tokens), where
    except ValueError as exc:
        raise ConversionError(f"{where}: {exc}") from None


# ---------------------------------------------------------------- the front door


def convert_recbole(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    recipe: str | None = None,
    dataset_dir_or_vocab: str | os.PathLike | Sequence[str] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a RecBole checkpoint into a zoo trained folder (Hub layout) at ``out_dir``; returns it.

    ``recipe`` is ``sasrec``, ``gru4rec``, ``bert4rec``, ``mamba4rec`` or ``sigma-code`` (default: the one
    the checkpoint's ``config['model']`` names). ``dataset_dir_or_vocab`` gives the raw item tokens: the
    RecBole dataset folder or its ``.inter`` file (RecBole's numbering is reproduced from it with the
    checkpoint's filtering settings), a token list file (one token per line, id 1 first), or a list of
    tokens. ``config`` adds or replaces RecBole config values (``{"n_heads": 2}``) where the checkpoint's
    config does not give them.

    The checkpoint is a pickle, read by a restricted unpickler (:mod:`zoo.safe_unpickle`) that rebuilds only
    tensors and plain containers and turns every other object into an inert placeholder: no code from the
    file runs, and RecBole need not be installed. A ``state_dict`` holding anything but tensors, a
    ``state_dict`` that does not fit the recipe (missing / unexpected names, shapes) and a token list whose
    length is not the item table's raise :class:`ConversionError` naming the file.

    The converted model gives the original implementation's scores (``model.score`` against RecBole's
    ``full_sort_predict``, item 0 aside) for histories of every length; docs/converting.md.
    """
    checkpoint = read_checkpoint(checkpoint_path, config)
    name = checkpoint.recipe = choose_recipe(checkpoint, recipe)
    plan = PLANS[name](checkpoint)
    weights = translate(checkpoint, plan.rules, name)
    vocab, vocab_source = item_vocabulary(dataset_dir_or_vocab, checkpoint, plan.num_items)
    model = SeqRecModel(converted_recipe(name, plan, checkpoint), plan.num_items)
    load_converted(model, weights, plan.rules, checkpoint)
    model.item_vocab = vocab
    facts = {
        "name": str(checkpoint.settings.get("dataset") or "unknown"),
        "item_source": vocab_source,
        "converted_from": {"format": "RecBole checkpoint", "file": checkpoint.path.name,
                           "model": MODEL_OF_RECIPE[name], **checkpoint.facts},
    }
    notes = (f"Converted by zoo.convert_recbole from the RecBole {MODEL_OF_RECIPE[name]} checkpoint "
             f"`{checkpoint.path.name}`. Its scores equal the original implementation's for histories of every length "
             "(docs/converting.md); the zoo has not evaluated it.")
    return model.eval().save_pretrained(out_dir, dataset_facts=facts, card={"notes": notes,
                                                                             "protocol": "not evaluated by the zoo"})
