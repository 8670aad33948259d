"""The fused post-norm Transformer layer for inference (zoo/fused_layer.py, blocks/transformer_layer_cpu.cpp)
and the item encoder's fused pass against plain loops over positions, and when they are used.

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
from blocks import compiled
from blocks.attention import SelfAttention
from blocks.basic import FeedForward
from blocks.item_id import ItemIdEncoder
from zoo import fused_layer
from zoo.combinators import Residual, Sequential

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the CPU kernel with"
)

ACTIVATIONS = ["gelu", "relu", "silu", "tanh", "sigmoid", "identity"]


def make_pair(width=16, heads=2, causal=True, activation="gelu", bias=True, norm="layernorm", norm_first=False, seed=0):
    torch.manual_seed(seed)
    first = Residual(SelfAttention(width, heads, dropout=0.1, causal=causal, bias=bias), width, 0.2, norm, 1e-12, norm_first)
    second = Residual(FeedForward(width, 4, activation, dropout=0.1), width, 0.2, norm, 1e-5, norm_first)
    for parameter in [*first.parameters(), *second.parameters()]:  # norms' weights and biases away from 1 and 0
        torch.nn.init.normal_(parameter, std=0.3)
    return first.eval(), second.eval()


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


def loop_layer(first, second, x, mask, newest_only=False):
    """LayerNorm_2(h + FFN(h)), h = LayerNorm_1(x + zero_pads(MHA(zero_pads(x)))), one position at a time
    in float64 (attention from the test loop over sequences, heads and queries)."""
    att, ffn = first.inner, second.inner
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
            h = layer_norm(x[b, t] + (linear(att.out, attended[b, i]) if mask[b, t] else 0), first.norm)
            out[b, i] = layer_norm(h + linear(ffn.w2, act(linear(ffn.w1, h))), second.norm)
    return out


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("newest_only", [False, True])
def test_matches_loop_in_float64(activation, causal, newest_only):
    first, second = (m.double() for m in make_pair(causal=causal, activation=activation))
    x, mask = inputs(3, 7, 16)
    with torch.no_grad():
        got = fused_layer.forward(first, second, x, mask, newest_only=newest_only)
    torch.testing.assert_close(got, loop_layer(first, second, x, mask, newest_only), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("length", [1, 17])
@pytest.mark.parametrize("heads,bias", [(1, True), (4, False)])
def test_lengths_heads_and_no_bias_in_float32(length, heads, bias):
    first, second = make_pair(heads=heads, bias=bias, seed=length)
    x, mask = inputs(4, length, 16, dtype=torch.float32)
    with torch.no_grad():
        for newest_only in (False, True):
            got = fused_layer.forward(first, second, x, mask, newest_only=newest_only)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), loop_layer(first, second, x, mask, newest_only), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("newest_only", [False, True])
def test_bf16_autocast_as_close_to_the_loop_as_pytorchs_own_autocast(newest_only):
    first, second = make_pair(width=32, seed=3)
    x, mask = inputs(4, 20, 32, dtype=torch.float32)
    want = loop_layer(first, second, x, mask, newest_only)
    real = mask[:, -want.shape[1]:, None].expand_as(want)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_layer.forward(first, second, x, mask, newest_only=newest_only)
        pure = second(first(x, mask), mask)[:, -want.shape[1]:]
    assert fused.dtype == torch.float32
    for got in (fused, pure):
        torch.testing.assert_close(got.double()[real], want[real], rtol=0.1, atol=0.1)
    assert (fused.double() - want)[real].abs().max() > 1e-4  # the products did run in bf16


def test_buffers_kept_between_calls_serve_larger_and_smaller_batches():
    """Calls of different sizes in turn -- several chunks of sequences, one sequence longer than a chunk,
    then small ones reusing larger buffers: each equals the pure path."""
    first, second = make_pair(width=16, seed=5)
    with torch.no_grad():
        for batch, length in [(3, 5), (700, 50), (2, 9), (1, 5000), (40, 50), (1, 1)]:
            x, mask = inputs(batch, length, 16, seed=batch, dtype=torch.float32)
            torch.testing.assert_close(fused_layer.forward(first, second, x, mask), second(first(x, mask), mask),
                                       rtol=1e-4, atol=1e-4)


def test_fusable_pairs():
    assert fused_layer.fusable(*make_pair())
    assert fused_layer.fusable(*make_pair(causal=False, activation="relu", bias=False))
    assert not fused_layer.fusable(*make_pair(norm_first=True))
    assert not fused_layer.fusable(*make_pair(norm="rmsnorm"))
    first, second = make_pair()
    assert not fused_layer.fusable(second, first)
    second.inner.activation = torch.nn.GELU(approximate="tanh")
    assert not fused_layer.fusable(first, second)
    for name in ("sasrec", "bert4rec"):
        encoder = zoo.create(name, num_items=20).encoder
        assert all(layer._fusable == {0} for layer in encoder.layers)


def run_both(sequential: Sequential, x, mask):
    return sequential(x, mask), sequential.forward_last(x, mask)


def test_sequential_fuses_only_for_inference_when_asked(monkeypatch):
    first, second = make_pair()
    sequential = Sequential([first, second]).eval()
    x, mask = inputs(3, 8, 16, dtype=torch.float32)
    calls = count_calls(monkeypatch, fused_layer, "forward")
    pure, fused = kernel_off_then_on(monkeypatch, lambda: run_both(sequential, x, mask))
    assert len(calls) == 2  # forward and forward_last, with the variable set
    for got, want in zip(fused, pure):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    run_both(sequential, x, mask)[0].sum()  # gradients wanted: the pure path
    with torch.no_grad():
        run_both(sequential.train(), x, mask)  # dropout active: the pure path
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_models_score_the_same_with_the_kernel(monkeypatch, name):
    torch.manual_seed(0)
    model = zoo.create(name, num_items=40).eval()
    ids = torch.randint(1, 41, (5, 12))
    ids[0, :6] = 0
    ids[1, :11] = 0
    calls = count_calls(monkeypatch, fused_layer, "forward")
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
