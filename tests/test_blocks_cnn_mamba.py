"""CNN-Mamba's short-term blocks: squeeze-excitation (``se``) and the SE-convolution (``se_conv``).

References are written out here (explicit loops over time, hand-computed numbers); tolerances are
float32 ``atol=1e-5`` unless stated.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.masked_conv import MaskedConv1d
from padding import left_padded
from zoo.registry import create_block

ATOL = 1e-5


def conv_loop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, left: int) -> torch.Tensor:
    """``y_t = b + Σ_j W[:, :, j] x_{t - left + j}`` for one unpadded sequence ``x (n, C)``; zeros outside."""
    n, k = x.shape[0], weight.shape[-1]
    out = []
    for t in range(n):
        acc = bias.clone()
        for j in range(k):
            s = t - left + j
            if 0 <= s < n:
                acc = acc + weight[:, :, j] @ x[s]
        out.append(acc)
    return torch.stack(out)


# ---------------------------------------------------------------- se


def test_se_hand_computed():
    se = create_block("se", d_model=4, reduction=2).eval()
    with torch.no_grad():
        se.squeeze.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0]]))
        se.squeeze.bias.copy_(torch.tensor([0.0, 0.5]))
        se.excite.weight.copy_(torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0], [0, 0]]))
        se.excite.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0]))
    real = torch.tensor([[2.0, 1.0, 0.0, 3.0], [0.0, -3.0, 1.0, 1.0]])
    x = torch.cat([torch.full((1, 4), 1e3), real]).unsqueeze(0)  # one garbage pad first
    mask = torch.tensor([[False, True, True]])
    # mean of the real items: p = (1, -1, 0.5, 2); W1 p + b1 = (1, 1.5); ReLU -> (1, 1.5)
    # W2 h + b2 = (1, 1.5, 2.5, -1) -> w = σ(·)
    sig = lambda v: 1 / (1 + math.exp(-v))
    w = torch.tensor([sig(1.0), sig(1.5), sig(2.5), sig(-1.0)])
    y = se(x, mask)
    torch.testing.assert_close(y[0, 1:], real * w, atol=ATOL, rtol=0)


def test_se_causal_is_the_prefix_squeeze():
    se = create_block("se", d_model=6, causal=True).eval()
    x, mask = left_padded([7, 3], 7, 6)
    full = create_block("se", d_model=6).eval()
    full.load_state_dict(se.state_dict())
    with torch.no_grad():
        y = se(x, mask)
        for b in range(2):
            n = int(mask[b].sum())
            for t in range(n):
                prefix = x[b:b + 1, 7 - n: 7 - n + t + 1]
                want = full(prefix, torch.ones(prefix.shape[:2], dtype=torch.bool))[0, -1]
                torch.testing.assert_close(y[b, 7 - n + t], want, atol=ATOL, rtol=0)
    assert se.causal and se.streaming and not full.causal and not full.streaming


def test_se_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reduction"):
        create_block("se", d_model=8, reduction=0)
    se = create_block("se", d_model=8)
    with pytest.raises(ValueError, match=r"expected x \(B, L, 8\)"):
        se(torch.randn(2, 5, 7), torch.ones(2, 5, dtype=torch.bool))


# ---------------------------------------------------------------- masked convolution


@pytest.mark.parametrize("padding,kernel", [("causal", 3), ("same", 3), ("same", 4), ("causal", 5)])
def test_masked_conv_matches_loop_on_each_unpadded_sequence(padding, kernel):
    torch.manual_seed(0)
    conv = MaskedConv1d(5, 3, kernel, padding)
    x, mask = left_padded([8, 5, 1], 8, 5)
    left = kernel - 1 if padding == "causal" else (kernel - 1) // 2
    with torch.no_grad():
        y = conv(x, mask)
        for b in range(3):
            n = int(mask[b].sum())
            want = conv_loop(x[b, 8 - n:], conv.conv.weight, conv.conv.bias, left)
            torch.testing.assert_close(y[b, 8 - n:], want, atol=ATOL, rtol=0)


def test_masked_conv_step_equals_forward_and_same_padding_refuses_to_stream():
    torch.manual_seed(0)
    conv = MaskedConv1d(4, 4, 3, "causal")
    x, mask = left_padded([6], 6, 4)
    with torch.no_grad():
        y = conv(x, mask)
        window = conv.init_state(1)
        for t in range(6):
            y_t, window = conv.step(x[:, t], window)
            torch.testing.assert_close(y_t, y[:, t], atol=ATOL, rtol=0)
    with pytest.raises(RuntimeError, match="cannot be streamed"):
        MaskedConv1d(4, 4, 3, "same").init_state(1)
    with pytest.raises(ValueError, match="kernel_size"):
        MaskedConv1d(4, 4, 0, "same")


# ---------------------------------------------------------------- se_conv


@pytest.mark.parametrize("input_transform", [False, True])
def test_se_conv_equals_its_equations(input_transform):
    torch.manual_seed(0)
    d, width = 8, 9
    block = create_block("se_conv", d_model=d, kernel_size=5, padding="same", activation="tanh",
                         input_transform=input_transform, reduction=2).eval()
    x, mask = left_padded([9, 4], width, d)
    with torch.no_grad():
        y = block(x, mask)
        for b in range(2):
            n = int(mask[b].sum())
            u = x[b, width - n:]
            if input_transform:
                lin, _, ln = block.input_transform
                u = F.layer_norm(lin(u), (d,), ln.weight, ln.bias, 1e-12)  # Eq. 1 (dropout off in eval)
            c = torch.tanh(conv_loop(u, block.conv.conv.weight, block.conv.conv.bias, left=2))  # Eqs. 2-3
            s = F.layer_norm(c, (d,), block.norm.weight, block.norm.bias, 1e-12)  # Eq. 4
            w = torch.sigmoid(block.se.excite(torch.relu(block.se.squeeze(s.mean(0)))))  # Eq. 5
            torch.testing.assert_close(y[b, width - n:], s * w, atol=ATOL, rtol=0)


def test_se_conv_causal_does_not_look_ahead_and_same_does():
    x, mask = left_padded([10], 10, 6)
    later = x.clone()
    later[:, 6:] += torch.randn(1, 4, 6)
    causal = create_block("se_conv", d_model=6, padding="causal", se_causal=True).eval()
    centred = create_block("se_conv", d_model=6, padding="same", se_causal=True).eval()
    assert causal.causal and causal.streaming and not centred.causal and not centred.streaming
    with torch.no_grad():
        torch.testing.assert_close(causal(x, mask)[:, :6], causal(later, mask)[:, :6], atol=ATOL, rtol=0)
        # the centred window at t = 5 sees t = 6, so the same check must fail there
        assert not torch.allclose(centred(x, mask)[:, 5], centred(later, mask)[:, 5], atol=1e-4)
        # the default squeeze is the whole-sequence mean, which sees the future too
        whole = create_block("se_conv", d_model=6, padding="causal").eval()
        assert not torch.allclose(whole(x, mask)[:, 0], whole(later, mask)[:, 0], atol=1e-4)


def test_se_conv_step_equals_forward():
    block = create_block("se_conv", d_model=6, kernel_size=4, padding="causal", se_causal=True, input_transform=True).eval()
    x, mask = left_padded([7], 7, 6)
    with torch.no_grad():
        full = block(x, mask)
        state = block.init_state(1)
        for t in range(7):
            y_t, state = block.step(x[:, t], state)
            torch.testing.assert_close(y_t, full[:, t], atol=ATOL, rtol=1e-4)
    with pytest.raises(NotImplementedError):
        create_block("se_conv", d_model=6).init_state(1)


def test_se_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation 'mish'.*gelu"):
        create_block("se_conv", d_model=8, activation="mish")
    with pytest.raises(ValueError, match="padding must be 'causal' or 'same'"):
        create_block("se_conv", d_model=8, padding="valid")
    with pytest.raises(ValueError, match="dropout"):
        create_block("se_conv", d_model=8, dropout=1.5)
