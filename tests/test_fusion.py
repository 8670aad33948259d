"""Fusions: mixing, adaptive (CNN-Mamba Eqs. 10-12), gate, softmax_gate -- equations by hand."""

from __future__ import annotations

import math

import pytest
import torch

from padding import left_padded
from zoo.registry import create_block

ATOL = 1e-5


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def inputs(k: int, lengths: list[int], width: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, mask = left_padded(lengths, width, d, generator=g)
    streams = [torch.randn(len(lengths), width, d, generator=g) for _ in range(k)]
    return streams, mask, x


# ---------------------------------------------------------------- mixing


def test_mixing_default_is_the_mean_and_init_sets_the_scalars():
    streams, mask, x = inputs(2, [4, 2], 4, 3)
    mix = create_block("mixing", d_model=3)
    torch.testing.assert_close(mix(streams, mask, x), (streams[0] + streams[1]) / 2)
    code = create_block("mixing", d_model=3, init=[0.1, 0.1, 0.8])  # SIGMA code: GRU, flipped, forward
    assert code.min_inputs == code.max_inputs == 3
    three, mask, x = inputs(3, [4, 2], 4, 3)
    torch.testing.assert_close(code(three, mask, x), 0.1 * three[0] + 0.1 * three[1] + 0.8 * three[2])
    with torch.no_grad():
        code.weights.copy_(torch.tensor([2.0, -1.0, 0.0]))  # raw scalars, no softmax
    torch.testing.assert_close(code(three, mask, x), 2 * three[0] - three[1])
    y, state = code.step([s[:, -1] for s in three], code.init_state(2), x[:, -1])
    torch.testing.assert_close(y, 2 * three[0][:, -1] - three[1][:, -1])
    assert state is None and code.causal and code.streaming


def test_mixing_rejects_wrong_stream_counts():
    with pytest.raises(ValueError, match="at least 2"):
        create_block("mixing", d_model=3, init=[1.0])
    streams, mask, x = inputs(3, [2], 2, 3)
    with pytest.raises(ValueError, match="expected 2 streams, got 3"):
        create_block("mixing", d_model=3)(streams, mask, x)
    with pytest.raises(ValueError, match="stream 1 has shape"):
        create_block("mixing", d_model=3)([streams[0], streams[1][:, :1]], mask, x)


# ---------------------------------------------------------------- adaptive (CNN-Mamba Eqs. 10-12)


def test_adaptive_channel_weights_by_hand():
    fusion = create_block("adaptive", d_model=2)
    with torch.no_grad():
        fusion.score.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))
        fusion.score.bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.tensor([[[99.0, -99.0], [1.0, 2.0], [3.0, -2.0]]])  # garbage pad, then items
    mask = torch.tensor([[False, True, True]])
    s1, s2 = torch.randn(1, 3, 2), torch.randn(1, 3, 2)
    # p = mean of real items = (2, 0); a = σ(p W^T + b) = (σ(2), σ(2.5))
    a = torch.tensor([sig(2.0), sig(2.5)])
    y = fusion([s1, s2], mask, x)
    torch.testing.assert_close(y[0, 1:], a * s1[0, 1:] + (1 - a) * s2[0, 1:], atol=ATOL, rtol=0)
    assert not fusion.causal and not fusion.streaming


def test_adaptive_scalar_weight_with_linear_pool_projection():
    fusion = create_block("adaptive", d_model=2, weight="scalar", pool_proj="linear")
    with torch.no_grad():
        fusion.pool_proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        fusion.pool_proj.bias.copy_(torch.tensor([1.0, 0.0]))
        fusion.score.weight.copy_(torch.tensor([[1.0, 1.0]]))
        fusion.score.bias.zero_()
    x = torch.tensor([[[1.0, 2.0], [3.0, -2.0]], [[-5.0, 5.0], [0.5, 0.5]]])
    mask = torch.tensor([[True, True], [False, True]])
    s1, s2 = torch.randn(2, 2, 2), torch.randn(2, 2, 2)
    # Out(x) = (2 x0 + 1, x1); row 0: mean = (5, 0) -> a = σ(5); row 1: only (0.5, 0.5) -> (2, 0.5) -> σ(2.5)
    a = torch.tensor([sig(5.0), sig(2.5)]).view(2, 1, 1)
    want = a * s1 + (1 - a) * s2
    y = fusion([s1, s2], mask, x)
    torch.testing.assert_close(y[mask], want[mask], atol=ATOL, rtol=0)


def test_adaptive_causal_uses_the_running_mean_and_streams():
    fusion = create_block("adaptive", d_model=4, causal=True)
    whole = create_block("adaptive", d_model=4)
    whole.load_state_dict(fusion.state_dict())
    (s1, s2), mask, x = inputs(2, [6], 6, 4)
    with torch.no_grad():
        y = fusion([s1, s2], mask, x)
        state = fusion.init_state(1)
        for t in range(6):
            prefix = torch.ones(1, t + 1, dtype=torch.bool)
            want = whole([s1[:, : t + 1], s2[:, : t + 1]], prefix, x[:, : t + 1])[:, -1]
            torch.testing.assert_close(y[:, t], want, atol=ATOL, rtol=0)
            y_t, state = fusion.step([s1[:, t], s2[:, t]], state, x[:, t])
            torch.testing.assert_close(y_t, y[:, t], atol=ATOL, rtol=0)
    assert fusion.causal and fusion.streaming


def test_adaptive_takes_exactly_two_streams():
    streams, mask, x = inputs(3, [2], 2, 4)
    fusion = create_block("adaptive", d_model=4)
    assert fusion.min_inputs == fusion.max_inputs == 2
    with pytest.raises(ValueError, match="expected 2 streams, got 3"):
        fusion(streams, mask, x)
    with pytest.raises(ValueError, match="weight must be"):
        create_block("adaptive", d_model=4, weight="head")


# ---------------------------------------------------------------- gate


def test_gate_equation_by_hand():
    fusion = create_block("gate", d_model=2)
    with torch.no_grad():
        fusion.proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
        fusion.proj.bias.copy_(torch.tensor([0.0, 1.0]))
    s1 = torch.tensor([[[2.0, 3.0]]])
    s2 = torch.tensor([[[-1.0, 4.0]]])
    # g = σ(W [s1; s2] + b) = (σ(2), σ(-4 + 1))
    g = torch.tensor([sig(2.0), sig(-3.0)])
    want = g * s1 + (1 - g) * s2
    mask = torch.ones(1, 1, dtype=torch.bool)
    torch.testing.assert_close(fusion([s1, s2], mask, s1), want, atol=ATOL, rtol=0)
    y, _ = fusion.step([s1[:, 0], s2[:, 0]], fusion.init_state(1), s1[:, 0])
    torch.testing.assert_close(y, want[:, 0], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- softmax gate


@pytest.mark.parametrize("source", ["streams", "input"])
def test_softmax_gate_matches_explicit_weights(source):
    torch.manual_seed(0)
    fusion = create_block("softmax_gate", d_model=3, source=source)
    streams, mask, x = inputs(3, [4], 4, 3)
    u = torch.cat(streams, -1) if source == "streams" else x
    with torch.no_grad():
        y = fusion(streams, mask, x)
    for t in range(4):
        logits = [float((fusion.score.weight[k] @ u[0, t] + fusion.score.bias[k]).detach()) for k in range(3)]
        z = sum(math.exp(v) for v in logits)
        want = sum(math.exp(v) / z * streams[k][0, t] for k, v in enumerate(logits))
        torch.testing.assert_close(y[0, t], want, atol=ATOL, rtol=0)


def test_softmax_gate_with_zero_scores_averages_and_counts_streams():
    fusion = create_block("softmax_gate", d_model=3, num_inputs=2)
    with torch.no_grad():
        fusion.score.weight.zero_()
        fusion.score.bias.zero_()
    streams, mask, x = inputs(2, [3], 3, 3)
    torch.testing.assert_close(fusion(streams, mask, x), (streams[0] + streams[1]) / 2)
    assert fusion.min_inputs == fusion.max_inputs == 2 and fusion.causal and fusion.streaming
    with pytest.raises(ValueError, match="expected 2 streams, got 3"):
        fusion(inputs(3, [3], 3, 3)[0], mask, x)
    with pytest.raises(ValueError, match="source must be"):
        create_block("softmax_gate", d_model=3, source="both")
