"""``zoo.convert_recbole``: RecBole checkpoints become trained folders that score as the originals.

Each original forward pass is written out again below, slowly and independently, in plain torch from the
checkpoint's parameter dict and in RecBole's layout: histories right-padded to ``MAX_ITEM_LIST_LENGTH``
slots (the newest items kept), padding id 0 embedded like an item, the state gathered at ``length - 1``,
scores against the whole item table (RecBole's ``full_sort_predict``). Sources: RecBole 1.2.1's
``sasrec.py``, ``bert4rec.py``, ``gru4rec.py`` and ``layers.py``; the official ``mamba4rec.py``
(chengkai-liu/Mamba4Rec) and ``model/gated_mamba.py`` (Applied-Machine-Learning-Lab/SIMGA @ 018d73a).
The checkpoints are written here in RecBole's on-disk format (``torch.save`` of the trainer's dict, the
config a pickled ``recbole.config.configurator.Config`` object) with random weights under RecBole's
parameter names; neither RecBole nor a network is needed.
"""

from __future__ import annotations

import math
import os
import sys
import types
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.cli import main
from zoo.convert import ConversionError
from zoo.model import left_pad
from zoo.recbole_items import VocabularySourceError, recbole_item_tokens
from zoo.safe_unpickle import Placeholder, UnreadableCheckpointError, load_checkpoint

ITEMS, D, LENGTH = 40, 16, 50
# every history length from 1 to LENGTH, and longer ones that RecBole cuts to their newest LENGTH items
HISTORY_LENGTHS = [*range(1, LENGTH + 1), 51, 64, 90]


# ---------------------------------------------------------------- RecBole's on-disk format


class Config:
    """Stands in for ``recbole.config.configurator.Config``: pickled by reference under RecBole's name."""

    def __init__(self, final: dict) -> None:
        self.final_config_dict = final
        self.model = final["model"]
        self.device = torch.device("cpu")


class ModelType:
    """Stands in for RecBole's ``ModelType`` enum class, another global the reader has never heard of."""


@pytest.fixture
def fake_recbole(monkeypatch):
    """Modules named like RecBole's, so that ``torch.save`` pickles the stand-ins under RecBole's names."""
    configurator = types.ModuleType("recbole.config.configurator")
    for cls, module in ((Config, configurator), (ModelType, configurator)):
        monkeypatch.setattr(cls, "__module__", module.__name__)
        setattr(module, cls.__name__, cls)
    for name, module in (("recbole", types.ModuleType("recbole")), ("recbole.config", types.ModuleType("recbole.config")),
                         ("recbole.config.configurator", configurator)):
        monkeypatch.setitem(sys.modules, name, module)


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> OrderedDict:
    """Random weights: LayerNorm scales near 1, everything else N(0, 0.3^2)."""
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=g)
        state[name] = 1 + 0.1 * noise if name.endswith("LayerNorm.weight") or name.endswith("output_ln.weight") else 0.3 * noise
    return state


def save_checkpoint(path: Path, state: dict, settings: dict) -> Path:
    """The dict RecBole's trainer saves (``Trainer._save_checkpoint``), with protocol 4 as it does."""
    final = {"MAX_ITEM_LIST_LENGTH": LENGTH, "dataset": "toy", "MODEL_TYPE": ModelType(), **settings}
    checkpoint = {
        "config": Config(final), "epoch": 7, "cur_step": 0, "best_valid_score": 0.1234, "state_dict": state,
        "other_parameter": {}, "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                                             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
    }
    torch.save(checkpoint, path, pickle_protocol=4)
    return path


def transformer_shapes(layers: int, inner: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(layers):
        a, f = f"trm_encoder.layer.{i}.multi_head_attention.", f"trm_encoder.layer.{i}.feed_forward."
        for name in ("query", "key", "value", "dense"):
            shapes |= {f"{a}{name}.weight": (D, D), f"{a}{name}.bias": (D,)}
        shapes |= {f"{a}LayerNorm.weight": (D,), f"{a}LayerNorm.bias": (D,), f"{f}dense_1.weight": (inner, D),
                   f"{f}dense_1.bias": (inner,), f"{f}dense_2.weight": (D, inner), f"{f}dense_2.bias": (D,),
                   f"{f}LayerNorm.weight": (D,), f"{f}LayerNorm.bias": (D,)}
    return shapes


def mamba_shapes(prefix: str, expand: int = 2, d_state: int = 8, d_conv: int = 4, dt_rank: int = 1) -> dict:
    inner = expand * D
    return {f"{prefix}A_log": (inner, d_state), f"{prefix}D": (inner,), f"{prefix}in_proj.weight": (2 * inner, D),
            f"{prefix}conv1d.weight": (inner, 1, d_conv), f"{prefix}conv1d.bias": (inner,),
            f"{prefix}x_proj.weight": (dt_rank + 2 * d_state, inner), f"{prefix}dt_proj.weight": (inner, dt_rank),
            f"{prefix}dt_proj.bias": (inner,), f"{prefix}out_proj.weight": (D, inner)}


def ffn_shapes(prefix: str) -> dict:
    return {f"{prefix}w_1.weight": (4 * D, D), f"{prefix}w_1.bias": (4 * D,), f"{prefix}w_2.weight": (D, 4 * D),
            f"{prefix}w_2.bias": (D,), f"{prefix}LayerNorm.weight": (D,), f"{prefix}LayerNorm.bias": (D,)}


def sasrec_shapes(layers: int = 2, inner: int = 3 * D) -> dict:
    return {"item_embedding.weight": (ITEMS + 1, D), "position_embedding.weight": (LENGTH, D),
            "LayerNorm.weight": (D,), "LayerNorm.bias": (D,), **transformer_shapes(layers, inner)}


def bert4rec_shapes(layers: int = 2) -> dict:
    return {"item_embedding.weight": (ITEMS + 2, D), "position_embedding.weight": (LENGTH, D), "LayerNorm.weight": (D,),
            "LayerNorm.bias": (D,), **transformer_shapes(layers, 4 * D), "output_ffn.weight": (D, D),
            "output_ffn.bias": (D,), "output_ln.weight": (D,), "output_ln.bias": (D,), "output_bias": (ITEMS + 1,)}


def gru4rec_shapes(hidden: int, layers: int) -> dict:
    shapes = {"item_embedding.weight": (ITEMS + 1, D)}
    for k in range(layers):
        shapes |= {f"gru_layers.weight_ih_l{k}": (3 * hidden, D if k == 0 else hidden),
                   f"gru_layers.weight_hh_l{k}": (3 * hidden, hidden)}
    return shapes | {"dense.weight": (D, hidden), "dense.bias": (D,)}


def mamba4rec_shapes(layers: int, dt_rank: int = 2) -> dict:
    shapes = {"item_embedding.weight": (ITEMS + 1, D), "LayerNorm.weight": (D,), "LayerNorm.bias": (D,)}
    for i in range(layers):
        shapes |= mamba_shapes(f"mamba_layers.{i}.mamba.", dt_rank=dt_rank) | ffn_shapes(f"mamba_layers.{i}.ffn.")
        shapes |= {f"mamba_layers.{i}.LayerNorm.weight": (D,), f"mamba_layers.{i}.LayerNorm.bias": (D,)}
    return shapes


def sigma_shapes() -> dict:
    g = "mamba_layers.0.gmamba."
    shapes = {"item_embedding.weight": (ITEMS + 1, D), "LayerNorm.weight": (D,), "LayerNorm.bias": (D,),
              f"{g}combining_weights": (3,)}
    for name in ("dense1", "dense2", "projection", "selective_gate_sig.1", "selective_gate_si.1"):
        shapes |= {f"{g}{name}.weight": (D, D), f"{g}{name}.bias": (D,)}
    shapes |= mamba_shapes(f"{g}mamba.") | {f"{g}gru.weight_ih_l0": (3 * D, D), f"{g}gru.weight_hh_l0": (3 * D, D),
                                            f"{g}conv1d.weight": (D, D, 3), f"{g}conv1d.bias": (D,)}
    return shapes | {"mamba_layers.0.LayerNorm.weight": (D,), "mamba_layers.0.LayerNorm.bias": (D,)} | ffn_shapes("mamba_layers.0.ffn.")


# ---------------------------------------------------------------- the original forward passes, plain torch


def right_padded(histories: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RecBole's item_seq (newest ``width`` items from slot 0 on, zeros after) and item_seq_len."""
    kept = [h[-width:] for h in histories]
    seq = torch.zeros(len(kept), width, dtype=torch.long)
    for b, h in enumerate(kept):
        seq[b, : len(h)] = torch.tensor(h)
    return seq, torch.tensor([len(h) for h in kept])


def lin(x, p, name):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def layer_norm(x, p, name, eps=1e-12):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]


def gelu(x):
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gather_last(x, lengths):
    return x[torch.arange(x.shape[0]), lengths - 1]


def transformer(x, p, layers, heads, eps, keys, causal, act):
    """RecBole's TransformerEncoder with its additive mask (0 or -10000)."""
    batch, length, width = x.shape
    allowed = keys[:, None, None, :].expand(batch, 1, length, length)
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    additive = torch.where(allowed, 0.0, -10000.0).to(x.dtype)
    for i in range(layers):
        a, f = f"trm_encoder.layer.{i}.multi_head_attention.", f"trm_encoder.layer.{i}.feed_forward."
        q, k, v = (lin(x, p, a + n).view(batch, length, heads, -1).transpose(1, 2) for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads) + additive, -1)
        context = (probs @ v).transpose(1, 2).reshape(batch, length, width)
        h = layer_norm(lin(context, p, a + "dense") + x, p, a + "LayerNorm", eps)
        x = layer_norm(lin(act(lin(h, p, f + "dense_1")), p, f + "dense_2") + h, p, f + "LayerNorm", eps)
    return x


def sasrec_scores(p, s, histories):
    seq, n = right_padded(histories, LENGTH)
    x = layer_norm(p["item_embedding.weight"][seq] + p["position_embedding.weight"][:LENGTH], p, "LayerNorm", s["layer_norm_eps"])
    act = {"gelu": gelu, "relu": torch.relu}[s["hidden_act"]]
    x = transformer(x, p, 2, s["n_heads"], s["layer_norm_eps"], seq != 0, True, act)
    return gather_last(x, n) @ p["item_embedding.weight"].T


def bert4rec_scores(p, s, histories):
    seq, n = right_padded(histories, LENGTH)
    mask_token = p["item_embedding.weight"].shape[0] - 1
    seq = torch.cat([seq, torch.zeros(len(seq), 1, dtype=torch.long)], 1)
    seq[torch.arange(len(seq)), n] = mask_token  # reconstruct_test_data: [MASK] after the last item,
    seq = seq[:, 1:]  # then every row's first slot dropped
    eps = s["layer_norm_eps"]
    x = layer_norm(p["item_embedding.weight"][seq] + p["position_embedding.weight"][:LENGTH], p, "LayerNorm", eps)
    act = {"gelu": gelu, "relu": torch.relu}[s["hidden_act"]]
    x = transformer(x, p, 2, s["n_heads"], eps, seq != 0, False, act)
    x = layer_norm(gelu(lin(x, p, "output_ffn")), p, "output_ln", eps)
    return gather_last(x, n) @ p["item_embedding.weight"][:mask_token].T + p["output_bias"]


def gru_layer(x, w_ih, w_hh):
    """torch.nn.GRU without biases, gates in the order r, z, n, over every slot."""
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    outputs = []
    for t in range(x.shape[1]):
        r_x, z_x, n_x = (x[:, t] @ w_ih.T).chunk(3, -1)
        r_h, z_h, n_h = (h @ w_hh.T).chunk(3, -1)
        r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
        h = (1 - z) * torch.tanh(n_x + r * n_h) + z * h
        outputs.append(h)
    return torch.stack(outputs, 1)


def gru4rec_scores(p, s, histories):
    seq, n = right_padded(histories, LENGTH)
    x = p["item_embedding.weight"][seq]
    for k in range(s["num_layers"]):
        x = gru_layer(x, p[f"gru_layers.weight_ih_l{k}"], p[f"gru_layers.weight_hh_l{k}"])
    return gather_last(lin(x, p, "dense"), n) @ p["item_embedding.weight"].T


def mamba(x, p, prefix):
    """mamba-ssm's Mamba (v1) forward, its selective scan as a loop over time."""
    length = x.shape[1]
    u, z = (x @ p[prefix + "in_proj.weight"].T).chunk(2, -1)
    weight = p[prefix + "conv1d.weight"][:, 0]  # (E, K), causal depthwise
    width = weight.shape[1]
    padded = F.pad(u, (0, 0, width - 1, 0))
    v = F.silu(sum(padded[:, j: j + length] * weight[:, j] for j in range(width)) + p[prefix + "conv1d.bias"])
    d_state = p[prefix + "A_log"].shape[1]
    dt, B, C = (v @ p[prefix + "x_proj.weight"].T).split([p[prefix + "dt_proj.weight"].shape[1], d_state, d_state], -1)
    delta = F.softplus(dt @ p[prefix + "dt_proj.weight"].T + p[prefix + "dt_proj.bias"])
    A = -torch.exp(p[prefix + "A_log"])
    h = x.new_zeros(x.shape[0], v.shape[-1], d_state)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * v[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + p[prefix + "D"] * v[:, t])
    return (torch.stack(ys, 1) * F.silu(z)) @ p[prefix + "out_proj.weight"].T


def feed_forward(x, p, prefix):
    """The official code's FeedForward: LayerNorm(w_2(GELU(w_1 x)) + x)."""
    return layer_norm(lin(gelu(lin(x, p, prefix + "w_1")), p, prefix + "w_2") + x, p, prefix + "LayerNorm")


def mamba4rec_scores(p, s, histories):
    seq, n = right_padded(histories, LENGTH)
    x = layer_norm(p["item_embedding.weight"][seq], p, "LayerNorm")
    for i in range(s["num_layers"]):
        h = mamba(x, p, f"mamba_layers.{i}.mamba.")
        h = layer_norm(h if s["num_layers"] == 1 else h + x, p, f"mamba_layers.{i}.LayerNorm")
        x = feed_forward(h, p, f"mamba_layers.{i}.ffn.")
    return gather_last(x, n) @ p["item_embedding.weight"].T


def sigma_scores(p, s, histories):
    seq, n = right_padded(histories, LENGTH)
    x = layer_norm(p["item_embedding.weight"][seq], p, "LayerNorm")  # padded slots: LayerNorm of row 0
    g = "mamba_layers.0.gmamba."
    g1 = F.conv1d(x.transpose(1, 2), p[g + "conv1d.weight"], p[g + "conv1d.bias"], padding=1).transpose(1, 2)
    flipped = x.clone()
    flipped[:, :45] = x[:, :45].flip(1)  # the released code's fixed slots
    h2 = lin(flipped, p, g + "dense2") + flipped
    m_f, m = mamba(flipped, p, g + "mamba."), mamba(x, p, g + "mamba.")
    h1 = x + lin(x, p, g + "dense1")
    gate1 = lin(F.silu(h1), p, g + "selective_gate_si.1") + lin(torch.sigmoid(h1), p, g + "selective_gate_sig.1")
    gate2 = lin(F.silu(h2), p, g + "selective_gate_si.1") + lin(torch.sigmoid(gate1), p, g + "selective_gate_sig.1")
    m, m_f = m * gate1 + m, m_f * gate2 + m_f
    f = gru_layer(g1, p[g + "gru.weight_ih_l0"], p[g + "gru.weight_hh_l0"])
    w = p[g + "combining_weights"]
    z = layer_norm(lin(w[2] * m + w[1] * m_f + w[0] * f, p, g + "projection"), p, "mamba_layers.0.LayerNorm")
    return gather_last(feed_forward(z, p, "mamba_layers.0.ffn."), n) @ p["item_embedding.weight"].T


TRANSFORMER = {"n_heads": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-12}
CASES = {
    "sasrec": ("SASRec", sasrec_shapes(), TRANSFORMER, sasrec_scores),
    "bert4rec": ("BERT4Rec", bert4rec_shapes(), {"n_heads": 2, "hidden_act": "relu", "layer_norm_eps": 1e-6}, bert4rec_scores),
    "gru4rec": ("GRU4Rec", gru4rec_shapes(D, 1), {"num_layers": 1}, gru4rec_scores),
    "gru4rec-wide": ("GRU4Rec", gru4rec_shapes(24, 2), {"num_layers": 2}, gru4rec_scores),
    "mamba4rec": ("Mamba4Rec", mamba4rec_shapes(1), {"num_layers": 1}, mamba4rec_scores),
    "mamba4rec-2-layers": ("Mamba4Rec", mamba4rec_shapes(2), {"num_layers": 2}, mamba4rec_scores),
    "sigma-code": ("SIGMA", sigma_shapes(), {"num_layers": 1}, sigma_scores),
}


def histories(seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, ITEMS + 1, (n,), generator=g).tolist() for n in HISTORY_LENGTHS]


def tokens(count: int = ITEMS) -> list[str]:
    return [f"item-{i:03d}" for i in range(count)]


def write_tokens(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def checkpoint_of(case: str, folder: Path, seed: int = 0, **changes) -> tuple[Path, dict, dict]:
    model, shapes, settings, _ = CASES[case]
    state = random_tensors(shapes, seed)
    settings = {"model": model, **settings, **changes}
    return save_checkpoint(folder / f"{model}-{case}.pth", state, settings), state, settings


# ---------------------------------------------------------------- converted scores equal the originals'


@pytest.mark.parametrize("case", list(CASES))
def test_converted_model_scores_as_the_original_for_every_history_length(case, tmp_path, fake_recbole):
    path, state, settings = checkpoint_of(case, tmp_path)
    out = zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=write_tokens(tmp_path / "items.txt", tokens()))
    model = zoo.create(f"local-dir:{out}")
    assert model.recipe.name == case.split("-")[0] + ("-code" if case == "sigma-code" else "")
    want = CASES[case][3]({k: v.double() for k, v in state.items()}, settings, histories())
    with torch.no_grad():
        got = model.score(left_pad(histories()))  # one batch, each row left-padded to the longest history
    torch.testing.assert_close(got[:, 1:].double(), want[:, 1:], atol=2e-5, rtol=1e-5)


def test_scores_of_a_batch_equal_scores_one_by_one(tmp_path, fake_recbole):
    """Padding a batch to its longest history changes nothing, also where padded slots are read (sigma-code)."""
    path, _, _ = checkpoint_of("sigma-code", tmp_path)
    model = zoo.create(f"local-dir:{zoo.convert_recbole(path, tmp_path / 'out', dataset_dir_or_vocab=tokens())}")
    some = histories()[:12]
    with torch.no_grad():
        batch = model.score(left_pad(some))
        alone = torch.cat([model.score(torch.tensor([h])) for h in some])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


def test_sigma_code_reads_padded_slots_as_the_code_does(tmp_path, fake_recbole):
    """Masking the padded slots instead (the zoo's earlier sigma-code) departs from the code below max_len only."""
    path, state, settings = checkpoint_of("sigma-code", tmp_path)
    out = zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens())
    masked = zoo.create(f"local-dir:{out}", **{"encoder.0.parallel.0.pad_slots": "masked",
                                               "encoder.0.parallel.1.sequential.0.pad_slots": "masked"})
    assert not masked.reads_pads and zoo.create(f"local-dir:{out}").reads_pads
    want = sigma_scores({k: v.double() for k, v in state.items()}, settings, histories())
    with torch.no_grad():
        got = torch.cat([masked.score(torch.tensor([h])) for h in histories()])[:, 1:].double()
    short = torch.tensor(HISTORY_LENGTHS) < LENGTH
    torch.testing.assert_close(got[~short], want[~short, 1:], atol=2e-5, rtol=1e-5)
    assert ((got[short] - want[short, 1:]).abs().amax(1) > 1e-3).all()


def test_converted_folder_holds_the_item_tokens_and_provenance(tmp_path, fake_recbole):
    path, _, _ = checkpoint_of("sasrec", tmp_path)
    out = zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=write_tokens(tmp_path / "i.txt", ["[PAD]", *tokens()]))
    model = zoo.create(f"local-dir:{out}")
    assert model.decode_items([1, ITEMS]) == [tokens()[0], tokens()[-1]]
    assert model.encode_items([tokens()[4]]).tolist() == [5]
    facts = zoo.hub.read_config(out)["dataset"]
    assert facts["converted_from"] == {"format": "RecBole checkpoint", "file": path.name, "model": "SASRec",
                                       "epoch": 7, "best_valid_score": 0.1234}
    assert facts["name"] == "toy" and sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "RecBole SASRec checkpoint" in (out / "README.md").read_text()


def test_recipe_sizes_come_from_the_weights_and_settings_from_the_config(tmp_path, fake_recbole):
    path, _, _ = checkpoint_of("sasrec", tmp_path)
    recipe = zoo.create(f"local-dir:{zoo.convert_recbole(path, tmp_path / 'out', 'sasrec', tokens())}").recipe
    layer = recipe.encoder[0].layers[0]
    assert (recipe.d_model, recipe.max_len, recipe.encoder[0].repeat) == (D, LENGTH, 2)
    assert (layer.args["num_heads"], layer.args["expansion"], layer.args["activation"]) == (4, 3.0, "gelu")


# ---------------------------------------------------------------- the restricted unpickler


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evaluates:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


def test_malicious_objects_load_as_inert_placeholders(tmp_path, fake_recbole):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": Evaluates(marker), "x": [RunsShell(marker)]}, path)
    content = load_checkpoint(path)
    assert not marker.exists()
    assert isinstance(content["config"], Placeholder) and content["config"].global_name() == "builtins.eval"
    assert content["x"][0].global_name().endswith(".system") and content["x"][0].args == (f"touch {marker}",)
    assert torch.equal(content["state_dict"]["w"], torch.ones(2))


def test_a_recbole_config_object_is_read_as_data(tmp_path, fake_recbole):
    path, _, _ = checkpoint_of("sasrec", tmp_path)
    config = load_checkpoint(path)["config"]
    assert isinstance(config, Placeholder) and config.global_name() == "recbole.config.configurator.Config"
    assert config.state["final_config_dict"]["n_heads"] == 4
    assert isinstance(config.state["final_config_dict"]["MODEL_TYPE"], Placeholder)


def test_a_state_dict_with_other_objects_is_refused_without_running_them(tmp_path, fake_recbole):
    marker = tmp_path / "ran"
    state = random_tensors(sasrec_shapes(), 0)
    state["trm_encoder.layer.0.feed_forward.dense_1.bias"] = RunsShell(marker)
    path = save_checkpoint(tmp_path / "evil.pth", state, {"model": "SASRec", **TRANSFORMER})
    with pytest.raises(ConversionError, match=r"evil\.pth: state_dict\['trm_encoder.layer.0.feed_forward.dense_1.bias'\] "
                                              r"is a \w+\.system object, not a tensor"):
        zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens())
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_inert_objects_outside_the_weights_do_not_stop_a_conversion(tmp_path, fake_recbole):
    marker = tmp_path / "ran"
    path, _, _ = checkpoint_of("gru4rec", tmp_path)
    content = torch.load(path, weights_only=False)
    content["other_parameter"] = {"hook": Evaluates(marker)}
    torch.save(content, path)
    zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens())
    assert not marker.exists() and (tmp_path / "out" / "model.safetensors").is_file()


def test_a_plain_pickle_is_not_a_checkpoint(tmp_path):
    import pickle

    marker, path = tmp_path / "ran", tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(RunsShell(marker)))
    with pytest.raises(UnreadableCheckpointError, match=r"evil\.pkl: not a torch checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


# ---------------------------------------------------------------- checkpoints that do not fit


def test_missing_and_unexpected_tensors_are_named_with_shapes(tmp_path, fake_recbole):
    state = random_tensors(sasrec_shapes(), 0)
    del state["trm_encoder.layer.1.multi_head_attention.key.bias"]
    state["extra.weight"] = torch.zeros(3, 5)
    path = save_checkpoint(tmp_path / "odd.pth", state, {"model": "SASRec", **TRANSFORMER})
    with pytest.raises(ConversionError, match=r"odd\.pth: its state_dict does not fit recipe 'sasrec'") as error:
        zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens())
    assert "missing (1): trm_encoder.layer.1.multi_head_attention.key.bias" in str(error.value)
    assert "unexpected (1): extra.weight (3, 5)" in str(error.value)


def test_wrong_shapes_are_named_with_both_names(tmp_path, fake_recbole):
    shapes = sasrec_shapes()
    shapes |= {"trm_encoder.layer.1.feed_forward.dense_1.weight": (2 * D, D), "trm_encoder.layer.1.feed_forward.dense_1.bias": (2 * D,)}
    path = save_checkpoint(tmp_path / "odd.pth", random_tensors(shapes, 0), {"model": "SASRec", **TRANSFORMER})
    with pytest.raises(ConversionError, match=r"odd\.pth: tensor shapes do not fit recipe 'sasrec'") as error:
        zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens())
    assert (f"trm_encoder.layer.1.feed_forward.dense_1.weight -> encoder.layers.1.ffn.w1.weight: checkpoint ({2 * D}, {D}), "
            f"recipe ({3 * D}, {D})") in str(error.value)


def test_a_checkpoint_of_another_model_is_refused(tmp_path, fake_recbole):
    path, _, _ = checkpoint_of("gru4rec", tmp_path)
    with pytest.raises(ConversionError, match="RecBole 'GRU4Rec' model, which does not convert to recipe 'sasrec'"):
        zoo.convert_recbole(path, tmp_path / "out", "sasrec", tokens())
    path = save_checkpoint(tmp_path / "unnamed.pth", random_tensors(gru4rec_shapes(D, 1), 0), {"model": None})
    with pytest.raises(ConversionError, match=r"unnamed\.pth: its state_dict does not fit recipe 'sasrec'"):
        zoo.convert_recbole(path, tmp_path / "out", "sasrec", tokens(), config=TRANSFORMER)


def test_settings_the_weights_do_not_show_come_from_the_config_or_the_caller(tmp_path, fake_recbole):
    path, state, settings = checkpoint_of("sasrec", tmp_path, n_heads=None)
    with pytest.raises(ConversionError, match=r"does not give 'n_heads'.*config=\{'n_heads': \.\.\.\}"):
        zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens())
    out = zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=tokens(), config={"n_heads": 4})
    with torch.no_grad():
        got = zoo.create(f"local-dir:{out}").score(torch.tensor([histories()[9]]))
    want = sasrec_scores({k: v.double() for k, v in state.items()}, settings | {"n_heads": 4}, [histories()[9]])
    torch.testing.assert_close(got[:, 1:].double(), want[:, 1:], atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- item tokens


def test_a_token_list_must_match_the_item_table(tmp_path, fake_recbole):
    path, _, _ = checkpoint_of("mamba4rec", tmp_path)
    short = write_tokens(tmp_path / "short.txt", tokens(ITEMS - 1))
    with pytest.raises(ConversionError, match=rf"short\.txt gives {ITEMS - 1} item tokens, but the item table of .*"
                                              rf"{path.name} has rows for {ITEMS} items"):
        zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=short)
    repeated = write_tokens(tmp_path / "repeated.txt", [*tokens(ITEMS - 1), tokens()[0]])
    with pytest.raises(ConversionError, match=r"repeated\.txt: item vocabulary has repeated raw ids"):
        zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=repeated)
    with pytest.raises(ConversionError, match="stores item ids, not the raw item tokens"):
        zoo.convert_recbole(path, tmp_path / "out")


def recbole_numbering(rows, user_interval, item_interval, rating_interval):
    """RecBole's filtering and numbering, written plainly: drop rows without a user or item, keep ratings in
    their interval, then ban users and items whose counts leave their intervals, round after round."""
    na = {"", "NA", "null", "None", "nan"}
    rows = [r for r in rows if r[0] not in na and r[1] not in na and rating_interval(float(r[2]))]
    while True:
        users, items = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        banned_users = {u for u, c in users.items() if not user_interval(c)}
        banned_items = {i for i, c in items.items() if not item_interval(c)}
        if not banned_users and not banned_items:
            return list(dict.fromkeys(r[1] for r in rows))
        rows = [r for r in rows if r[0] not in banned_users and r[1] not in banned_items]


def random_log(seed: int, count: int = 400) -> list[tuple[str, str, str, str]]:
    g = torch.Generator().manual_seed(seed)
    users = [f"u{int(i)}" for i in torch.randint(0, 30, (count,), generator=g)]
    items = [f"i{int(i)}" for i in (torch.rand(count, generator=g) ** 2 * 60).long()]
    ratings = [str(int(r)) for r in torch.randint(1, 6, (count,), generator=g)]
    for k in range(0, count, 37):
        items[k] = ["NA", "", "null"][k % 3]
    return [(u, i, r, str(1000 + k)) for k, (u, i, r) in enumerate(zip(users, items, ratings))]


def write_inter(folder: Path, rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float", *("\t".join(r) for r in rows)]
    path = folder / f"{folder.name}.inter"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_item_tokens_from_the_inter_file_follow_recbole_numbering(seed, tmp_path):
    rows = random_log(seed)
    settings = {"user_inter_num_interval": "[3,inf)", "item_inter_num_interval": "[2,9)", "val_interval": {"rating": "[2,5]"}}
    want = recbole_numbering(rows, lambda c: c >= 3, lambda c: 2 <= c < 9, lambda r: 2 <= r <= 5)
    assert recbole_item_tokens(write_inter(tmp_path / "toy", rows), settings) == want
    assert recbole_item_tokens(write_inter(tmp_path / "toy", rows), {}) == list(dict.fromkeys(
        r[1] for r in rows if r[1] not in ("NA", "", "null")))


def test_a_conversion_from_the_dataset_folder(tmp_path, fake_recbole):
    rows = random_log(4)
    settings = {"user_inter_num_interval": "[2,inf)", "item_inter_num_interval": "(1,inf)"}
    items = recbole_numbering(rows, lambda c: c >= 2, lambda c: c > 1, lambda r: True)
    shapes = gru4rec_shapes(D, 1) | {"item_embedding.weight": (len(items) + 1, D)}
    path = save_checkpoint(tmp_path / "g.pth", random_tensors(shapes, 0), {"model": "GRU4Rec", **settings})
    out = zoo.convert_recbole(path, tmp_path / "out", dataset_dir_or_vocab=write_inter(tmp_path / "toy", rows).parent)
    assert zoo.create(f"local-dir:{out}").decode_items(range(1, len(items) + 1)) == items


def test_settings_that_renumber_items_otherwise_are_refused(tmp_path):
    inter = write_inter(tmp_path / "toy", random_log(0))
    with pytest.raises(VocabularySourceError, match=r"toy\.inter: the checkpoint's RecBole settings \{'rm_dup_inter': 'first'\}"
                                                    r".*field2id_token"):
        recbole_item_tokens(inter, {"rm_dup_inter": "first"})
    with pytest.raises(VocabularySourceError, match=r"'load_col': \['item'\]"):
        recbole_item_tokens(inter, {"load_col": {"inter": ["user_id", "item_id"], "item": ["item_id"]}})
    assert recbole_item_tokens(inter, {"load_col": None})  # every file is loaded, and there is only the .inter
    (inter.parent / "toy.user").write_text("user_id:token\nu1\n", encoding="utf-8")
    with pytest.raises(VocabularySourceError, match=r"'load_col': \['user'\]"):
        recbole_item_tokens(inter, {"load_col": None})


# ---------------------------------------------------------------- the command line, the blocks, the init


def test_zoo_convert_command(tmp_path, fake_recbole, capsys):
    path, _, _ = checkpoint_of("bert4rec", tmp_path)
    items = write_tokens(tmp_path / "items.txt", tokens())
    assert main(["convert", str(path), "--out", str(tmp_path / "out"), "--items", str(items)]) == 0
    assert "bert4rec" in capsys.readouterr().out and zoo.create(f"local-dir:{tmp_path / 'out'}").num_items == ITEMS
    assert main(["convert", str(path), "--recipe", "sigma-code", "--out", str(tmp_path / "x"), "--items", str(items)]) == 2
    assert "does not convert to recipe 'sigma-code'" in capsys.readouterr().err
    path, _, _ = checkpoint_of("sasrec", tmp_path, n_heads=None)
    assert main(["convert", str(path), "--out", str(tmp_path / "s"), "--items", str(items), "--config", "n_heads=4"]) == 0


def test_blocks_reading_pads_need_max_len_slots():
    block = zoo.create_block("fe_gru", d_model=4, pad_slots="read", max_len=6)
    with pytest.raises(ValueError, match="exactly that wide, got 5"):
        block(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs padding='same'"):
        zoo.create_block("fe_gru", d_model=4, pad_slots="read", padding="causal")
    with pytest.raises(ValueError, match="belongs to flip='code'"):
        zoo.create_block("bidirectional_mamba", d_model=4, pad_slots="read", flip="partial")


def test_recbole_gru4rec_init_is_xaviers():
    torch.manual_seed(0)
    model = zoo.create("gru4rec", num_items=300, init="recbole_gru4rec")
    table, gru = model.item_encoder.embedding.weight, model.encoder.layers[0].gru
    assert table.std().item() == pytest.approx(math.sqrt(2 / (301 + 64)), rel=0.05)
    bound = math.sqrt(6 / (3 * 64 + 64))
    assert bound * 0.95 < gru.weight_hh_l0.abs().max().item() <= bound
    assert zoo.create("gru4rec", num_items=300).encoder.layers[0].gru.weight_hh_l0.abs().max().item() <= 1 / 8
