"""The ``transformer_layer`` block's compiled inference pass (blocks/transformer_layer_cpu.cpp) and the item
encoder's fused pass against plain loops over positions, and when they are used.

Tolerances: float64 agrees with the float64 loop to 1e-10; float32 to 1e-4 (LayerNorm with eps 1e-12
divides by small deviations); under bf16 autocast (four bf16 products) to 0.1, the size of bf16
rounding carried through two LayerNorms — the pure PyTorch path under autocast is checked against the
same loop with the same tolerance.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from spy import count_calls
from test_attention_cpu_kernel import kernel_off_then_on, loop_attention

import zoo
from zoo.blocks import compiled
from zoo.blocks.item_id import ItemIdEncoder
from zoo.blocks.transformer_layer import TransformerLayer

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the CPU kernel with"
)

ACTIVATIONS = ["gelu", "relu", "silu", "tanh", "sigmoid", "identity"]


def make_layer(width=16, heads=2, causal=True, activation="gelu", bias=True, seed=0) -> TransformerLayer:
    torch.manual_seed(seed)
    layer = TransformerLayer(width, heads, causal, dropout=0.2, attention_dropout=0.1, expansion=4, activation=activation,
                             ffn_dropout=0.1, norm_eps=1e-12, bias=bias)
    layer.ffn_norm.eps = 1e-5  # the two norms' eps differ, so a kernel that mixes them up fails
    for parameter in layer.parameters():  # norms' weights and biases away from 1 and 0
        torch.nn.init.normal_(parameter, std=0.3)
    return layer.eval()


def inputs(batch: int, length: int, width: int, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, width, generator=g, dtype=torch.float64).to(dtype)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, : length // 2] = False
    if batch > 1:
        mask[1, :-1] = False
    if batch > 2:  # the newest position padded, earlier ones real
        mask[2, -1] = False
    return x, mask


def activation_name(module) -> str:
    return {torch.nn.GELU: "gelu", torch.nn.ReLU: "relu", torch.nn.SiLU: "silu", torch.nn.Tanh: "tanh",
            torch.nn.Sigmoid: "sigmoid", torch.nn.Identity: "identity"}[type(module)]


ACTIVATION_FUNCTIONS = {
    "gelu": lambda z: 0.5 * z * (1 + torch.erf(z / 2**0.5)),
    "relu": lambda z: z.clamp_min(0),
    "silu": lambda z: z / (1 + torch.exp(-z)),
    "tanh": torch.tanh,
    "sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
    "identity": lambda z: z,
}


def loop_layer(layer, x, mask, newest_only=False):
    """LayerNorm_2(h + FFN(h)), h = LayerNorm_1(x + zero_pads(MHA(zero_pads(x)))), one position at a time
    in float64 (attention from the test loop over sequences, heads and queries)."""
    att, ffn = layer.attention, layer.ffn
    f64 = lambda t: t.detach().double()
    act = ACTIVATION_FUNCTIONS[activation_name(ffn.activation)]
    batch, length = mask.shape
    width = x.shape[-1]
    x = x.double()

    def linear(layer, z):
        return f64(layer.weight) @ z + (0 if layer.bias is None else f64(layer.bias))

    def layer_norm(z, norm):
        centred = z - z.mean()
        return centred / torch.sqrt((centred**2).mean() + norm.eps) * f64(norm.weight) + f64(norm.bias)

    qkv = torch.zeros(batch, length, 3 * width, dtype=torch.float64)
    for b in range(batch):
        for t in range(length):
            qkv[b, t] = linear(att.qkv, x[b, t] if mask[b, t] else torch.zeros(width, dtype=torch.float64))
    rows = 1 if newest_only else length
    q, k, v = qkv.chunk(3, -1)
    attended = loop_attention(q[:, -rows:], k, v, mask, att.num_heads, att.causal)
    out = torch.zeros(batch, rows, width, dtype=torch.float64)
    for b in range(batch):
        for i in range(rows):
            t = length - rows + i
            h = layer_norm(x[b, t] + (linear(att.out, attended[b, i]) if mask[b, t] else 0), layer.attention_norm)
            out[b, i] = layer_norm(h + linear(ffn.w2, act(linear(ffn.w1, h))), layer.ffn_norm)
    return out


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("newest_only", [False, True])
def test_matches_loop_in_float64(activation, causal, newest_only):
    layer = make_layer(causal=causal, activation=activation).double()
    x, mask = inputs(3, 7, 16)
    with torch.no_grad():
        got = layer._forward_compiled(x, mask, newest_only=newest_only)
    torch.testing.assert_close(got, loop_layer(layer, x, mask, newest_only), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 17])
@pytest.mark.parametrize("heads,bias", [(1, True), (4, False)])
def test_lengths_heads_and_no_bias_in_float32(length, heads, bias):
    layer = make_layer(heads=heads, bias=bias, seed=length)
    x, mask = inputs(4, length, 16, dtype=torch.float32)
    with torch.no_grad():
        for newest_only in (False, True):
            got = layer._forward_compiled(x, mask, newest_only=newest_only)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), loop_layer(layer, x, mask, newest_only), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("newest_only", [False, True])
def test_bf16_autocast_as_close_to_the_loop_as_pytorchs_own_autocast(newest_only):
    layer = make_layer(width=32, seed=3)
    x, mask = inputs(4, 20, 32, dtype=torch.float32)
    want = loop_layer(layer, x, mask, newest_only)
    real = mask[:, -want.shape[1]:, None].expand_as(want)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = layer._forward_compiled(x, mask, newest_only=newest_only)
        pure = layer(x, mask)[:, -want.shape[1]:]
    assert fused.dtype == torch.float32
    for got in (fused, pure):
        torch.testing.assert_close(got.double()[real], want[real], rtol=0.1, atol=0.1)
    assert (fused.double() - want)[real].abs().max() > 1e-4  # the products did run in bf16


def test_buffers_kept_between_calls_serve_larger_and_smaller_batches():
    """Calls of different sizes in turn -- several chunks of sequences, one sequence longer than a chunk,
    then small ones reusing larger buffers: each equals the pure path."""
    layer = make_layer(width=16, seed=5)
    with torch.no_grad():
        for batch, length in [(3, 5), (700, 50), (2, 9), (1, 5000), (40, 50), (1, 1)]:
            x, mask = inputs(batch, length, 16, seed=batch, dtype=torch.float32)
            torch.testing.assert_close(layer._forward_compiled(x, mask, newest_only=False), layer(x, mask),
                                       rtol=1e-4, atol=1e-4)


def test_activations_the_kernel_knows():
    assert make_layer().activation_code() == 2
    assert make_layer(activation="relu").activation_code() == 1
    layer = make_layer()
    layer.ffn.activation = torch.nn.GELU(approximate="tanh")
    assert layer.activation_code() is None


def run_both(layer: TransformerLayer, x, mask):
    return layer(x, mask), layer.forward_last(x, mask)


def test_the_layer_uses_the_kernel_only_for_inference_when_asked(monkeypatch):
    layer = make_layer()
    x, mask = inputs(3, 8, 16, dtype=torch.float32)
    calls = count_calls(monkeypatch, TransformerLayer, "_forward_compiled")
    pure, fused = kernel_off_then_on(monkeypatch, lambda: run_both(layer, x, mask))
    assert len(calls) == 2  # forward and forward_last, with the variable set
    for got, want in zip(fused, pure):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    run_both(layer, x, mask)[0].sum()  # gradients wanted: the pure path
    with torch.no_grad():
        run_both(layer.train(), x, mask)  # dropout active: the pure path
        layer.eval().ffn.activation = torch.nn.GELU(approximate="tanh")
        run_both(layer, x, mask)  # an activation the kernel lacks: the pure path
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_models_score_the_same_with_the_kernel(monkeypatch, name):
    torch.manual_seed(0)
    model = zoo.create(name, num_items=40).eval()
    ids = torch.randint(1, 41, (5, 12))
    ids[0, :6] = 0
    ids[1, :11] = 0
    calls = count_calls(monkeypatch, TransformerLayer, "_forward_compiled")
    pure, fused = kernel_off_then_on(monkeypatch, lambda: model.score(ids))
    assert len(calls) == 2  # both layers, with the variable set
    torch.testing.assert_close(fused, pure, rtol=1e-5, atol=1e-5)


def loop_item_encoder(encoder: ItemIdEncoder, ids, mask):
    """E[item] scale + P[position] (positions: real items so far - 1, capped), then LayerNorm, one position at
    a time in float64."""
    table = encoder.embedding.weight.detach().double()
    out = torch.zeros(*ids.shape, table.shape[1], dtype=torch.float64)
    for b in range(ids.shape[0]):
        seen = 0
        for t in range(ids.shape[1]):
            seen += int(mask[b, t])
            x = table[ids[b, t]] * encoder.scale
            if encoder.position is not None:
                x = x + encoder.position.weight.detach().double()[min(max(seen - 1, 0), encoder.position.num_embeddings - 1)]
            if isinstance(encoder.norm, torch.nn.LayerNorm):
                centred = x - x.mean()
                x = centred / torch.sqrt((centred**2).mean() + encoder.norm.eps) * encoder.norm.weight.detach().double() \
                    + encoder.norm.bias.detach().double()
            out[b, t] = x
    return out


@pytest.mark.parametrize("positions,norm,scale", [("learned", "layernorm", False), ("none", "none", True),
                                                  ("learned", "none", True), ("none", "layernorm", False)])
def test_item_encoder_fused_pass_matches_loop(monkeypatch, positions, norm, scale):
    torch.manual_seed(0)
    encoder = ItemIdEncoder(8, 20, max_len=5, positions=positions, norm=norm, scale=scale, dropout=0.3).double().eval()
    for parameter in encoder.norm.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    ids = torch.randint(1, 21, (4, 7))
    ids[1, :4] = 0
    ids[2, :6] = 0  # one real item; rows 0 and 3 are longer than the 5 positions: the last position repeats
    mask = ids > 0
    calls = count_calls(monkeypatch, ItemIdEncoder, "_forward_compiled")
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "1")
    with torch.no_grad():
        got = encoder(ids, mask)
    assert len(calls) == 1
    torch.testing.assert_close(got, loop_item_encoder(encoder, ids, mask), rtol=1e-12, atol=1e-12)
    encoder(ids, mask)  # gradients wanted: the PyTorch path
    with torch.no_grad():
        encoder.train()(ids, mask)  # dropout active: the PyTorch path
    assert len(calls) == 1
