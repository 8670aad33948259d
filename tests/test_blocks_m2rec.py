"""M2Rec blocks: the time-axis FFT filter, the multi-scale Mamba (AFFM) block and the LLM projector."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.fft_filter import FFTFilter
from zoo.blocks.llm_projector import LLMProjector
from zoo.blocks.multiscale_mamba import MultiScaleMamba

ATOL, RTOL = 2e-5, 1e-4


def impulse_response(weight: torch.Tensor) -> torch.Tensor:
    """``irfft(W, n=2M)`` by the explicit inverse-DFT sum (no torch.fft): ``(2M, C)`` from ``W (M+1, C, 2)``."""
    m = weight.shape[0] - 1
    n = 2 * m
    re, im = weight[..., 0].double(), weight[..., 1].double()
    t = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    h = re[0] + re[m] * torch.cos(math.pi * t)
    for k in range(1, m):
        angle = 2 * math.pi * k * t / n
        h = h + 2 * (re[k] * torch.cos(angle) - im[k] * torch.sin(angle))
    return (h / n).float()


def filter_loop(weight: torch.Tensor, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """``y_t = Σ_s h[t - s] x_s`` over lags ``|t - s| < M`` (``s <= t`` when causal); ``x (n, C)`` unpadded."""
    m = weight.shape[0] - 1
    h = impulse_response(weight)
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for s in range(x.shape[0]):
            lag = t - s
            if abs(lag) < m and (lag >= 0 or not causal):
                y[t] += h[lag % (2 * m)] * x[s]
    return y


def left_pad(x: torch.Tensor, width: int, scale: float = 30.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (n, D)`` behind ``width - n`` garbage pads, batch of one, with its mask."""
    n = x.shape[0]
    garbage = scale * torch.randn(width - n, x.shape[1])
    mask = torch.tensor([[False] * (width - n) + [True] * n])
    return torch.cat([garbage, x]).unsqueeze(0), mask


# ---------------------------------------------------------------- fft_filter


@pytest.mark.parametrize("causal", [False, True])
def test_all_pass_filter_is_the_identity(causal):
    block = FFTFilter(d_model=5, max_len=6, causal=causal, residual=False, norm="none", init="identity")
    x, mask = left_pad(torch.randn(4, 5), 9)
    y = block(x, mask)
    torch.testing.assert_close(y[0, 5:], x[0, 5:], atol=1e-6, rtol=0)
    assert y[0, :5].abs().max() < 1e-6  # pads zeroed, never wrapped in


def test_filter_equals_fmlp_formula_on_the_fixed_grid():
    torch.manual_seed(0)
    m = 6
    block = FFTFilter(d_model=3, max_len=m, residual=False, norm="none")
    weight = torch.view_as_complex(block.filter.weight.detach())
    for n in (1, 4, 6):
        x = torch.randn(1, n, 3)
        spectrum = torch.fft.rfft(x, n=2 * m, dim=1, norm="ortho") * weight
        want = torch.fft.irfft(spectrum, n=2 * m, dim=1, norm="ortho")[:, :n]
        got = block(x, torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [3, 11])
def test_filter_equals_lag_loop_and_ignores_padding(causal, n):
    torch.manual_seed(1)
    block = FFTFilter(d_model=3, max_len=5, causal=causal, residual=False, norm="none")
    x = torch.randn(n, 3)
    want = filter_loop(block.filter.weight.detach(), x, causal)
    with torch.no_grad():
        alone = block(x.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))[0]
        for width in (n + 1, n + 7, 2 * n + 20):
            padded, mask = left_pad(x, width)
            torch.testing.assert_close(block(padded, mask)[0, -n:], want, atol=ATOL, rtol=RTOL)
            # scoring's newest position alone, without the FFT (a dot product over the lags it reads)
            torch.testing.assert_close(block.forward_last(padded, mask)[0, 0], want[-1], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(alone, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n", [3, 11])
def test_causal_filter_gradients_equal_lag_loop(n):
    """The causal filter runs as a direct causal convolution with min(L, max_len) taps (the compiled kernel on the
    CPU): its gradients w.r.t. the input and the frequency-domain weight are the lag loop's."""
    torch.manual_seed(3)
    block = FFTFilter(d_model=3, max_len=5, causal=True, residual=False, norm="none")
    x = torch.randn(n, 3, requires_grad=True)
    grad = torch.randn(n, 3)
    got = torch.autograd.grad(block(x.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))[0], [x, block.filter.weight], grad)
    want = torch.autograd.grad(filter_loop(block.filter.weight, x, True), [x, block.filter.weight], grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=RTOL)


def test_filter_residual_and_norm_follow_fmlp():
    torch.manual_seed(2)
    block = FFTFilter(d_model=4, max_len=5).eval()
    bare = FFTFilter(d_model=4, max_len=5, residual=False, norm="none")
    bare.filter.load_state_dict(block.filter.state_dict())
    x, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.bool)
    want = F.layer_norm(x + bare(x, mask), (4,), block.norm.weight, block.norm.bias, eps=1e-12)
    torch.testing.assert_close(block(x, mask), want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(block.forward_last(x, mask), want[:, -1:], atol=ATOL, rtol=RTOL)
    assert block.causal is False and block.streaming is False
    assert FFTFilter(d_model=4, causal=True).streaming is True


# ---------------------------------------------------------------- multiscale_mamba


def mamba_loop(block: MultiScaleMamba, x: torch.Tensor, causal_filter: bool | None) -> torch.Tensor:
    """The AFFM block for one unpadded sequence ``x (n, D)``, every step a plain loop over time."""
    n = x.shape[0]
    u, z = (x @ block.in_proj.weight.T).chunk(2, -1)
    conv = torch.zeros_like(u)
    for t in range(n):
        for layer in block.convs:
            k = layer.kernel_size[0]
            for j in range(k):
                source = t - (k - 1) + j
                if source >= 0:
                    conv[t] += layer.weight[:, 0, j] * u[source]
            conv[t] += layer.bias
    u = conv / len(block.convs)
    if causal_filter is not None:
        u = filter_loop(block.filter.weight.detach(), u, causal_filter)
    u = F.silu(u)
    dt, B, C = (u @ block.x_proj.weight.T).split([block.dt_rank, block.d_state, block.d_state], -1)
    delta = F.softplus(dt @ block.dt_proj.weight.T + block.dt_proj.bias)
    A = -torch.exp(block.A_log)
    h = torch.zeros(block.d_inner, block.d_state)
    ys = []
    for t in range(n):
        h = torch.exp(delta[t, :, None] * A) * h + delta[t, :, None] * B[t] * u[t, :, None]
        ys.append(h @ C[t] + block.D * u[t])
    y = F.layer_norm(torch.stack(ys), (block.d_inner,), block.norm.weight, block.norm.bias, eps=block.norm.eps)
    return (y * F.silu(z)) @ block.out_proj.weight.T


def _randomise_filter(block: MultiScaleMamba) -> None:
    with torch.no_grad():
        block.filter.weight.add_(0.3 * torch.randn_like(block.filter.weight))


@pytest.mark.parametrize("time_filter,causal", [("causal", True), ("global", False), ("none", None)])
def test_multiscale_mamba_equals_loop_reference(time_filter, causal):
    torch.manual_seed(3)
    block = MultiScaleMamba(d_model=4, max_len=6, d_state=3, kernel_sizes=(2, 3), time_filter=time_filter)
    if block.filter is not None:
        _randomise_filter(block)
    x = torch.randn(8, 4)  # longer than max_len: the filter kernel is truncated at lag 5
    with torch.no_grad():
        want = mamba_loop(block, x, causal)
        got = block(x.unsqueeze(0), torch.ones(1, 8, dtype=torch.bool))[0]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("time_filter", ["causal", "global"])
def test_multiscale_mamba_masked_equals_unpadded(time_filter):
    torch.manual_seed(4)
    block = MultiScaleMamba(d_model=4, max_len=8, d_state=4, time_filter=time_filter)
    _randomise_filter(block)
    with torch.no_grad():
        for n in (1, 3, 8):
            x = torch.randn(n, 4)
            alone = block(x.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))[0]
            for width in (n + 2, 12):
                padded, mask = left_pad(x, width)
                torch.testing.assert_close(block(padded, mask)[0, -n:], alone, atol=ATOL, rtol=RTOL)


def test_multiscale_mamba_filter_starts_as_all_pass():
    torch.manual_seed(5)
    with_filter = MultiScaleMamba(d_model=4, max_len=6, d_state=3)
    without = MultiScaleMamba(d_model=4, max_len=6, d_state=3, time_filter="none")
    without.load_state_dict({k: v for k, v in with_filter.state_dict().items() if not k.startswith("filter.")})
    x, mask = torch.randn(2, 6, 4), torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(with_filter(x, mask), without(x, mask), atol=ATOL, rtol=RTOL)


def test_multiscale_mamba_metadata_and_errors():
    assert MultiScaleMamba(d_model=4).causal and MultiScaleMamba(d_model=4).streaming
    globally = MultiScaleMamba(d_model=4, time_filter="global")
    assert not globally.causal and not globally.streaming
    assert [c.kernel_size[0] for c in MultiScaleMamba(d_model=4).convs] == [3, 5, 7]
    with pytest.raises(ValueError, match="kernel_sizes"):
        MultiScaleMamba(d_model=4, kernel_sizes=())
    with pytest.raises(ValueError, match="dt_min"):
        MultiScaleMamba(d_model=4, dt_min=0.5, dt_max=0.1)
    with pytest.raises(ValueError, match="expected x"):
        MultiScaleMamba(d_model=4)(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


# ---------------------------------------------------------------- llm_projector


def test_projector_equals_adapter_of_frozen_table_with_zero_rows():
    torch.manual_seed(6)
    block = LLMProjector(d_model=4, num_items=5, text_dim=6, hidden_dim=3).eval()
    text = torch.randn(6, 6)
    text[3] = 0.0  # item 3 has no text
    block.set_item_features(text=text)
    assert torch.equal(block.text[0], torch.zeros(6)) and torch.equal(block.text[1:], text[1:])
    assert "text" in block.state_dict() and "text" not in dict(block.named_parameters())
    ids = torch.tensor([[0, 0, 2, 3, 5]])
    mask = ids > 0
    w1, b1 = block.adapter[0].weight, block.adapter[0].bias
    w2, b2 = block.adapter[2].weight, block.adapter[2].bias
    adapter = lambda t: F.gelu(t @ w1.T + b1) @ w2.T + b2  # noqa: E731
    with torch.no_grad():
        got = block(ids, mask)
        table = block.item_table()
        torch.testing.assert_close(got[0, 2:], adapter(text[[2, 3, 5]]))
        assert torch.equal(got[0, :2], torch.zeros(2, 4))  # padding positions
        assert torch.equal(table[0], torch.zeros(4))  # padding row of the table
        torch.testing.assert_close(table[3], adapter(torch.zeros(6)))  # unknown item: the shared A(0)
        torch.testing.assert_close(table[[2, 5]], got[0, [2, 4]])


def test_projector_with_more_positions_than_items_adapts_the_table_once():
    """Values and gradients at a batch with more positions than items (the table is adapted once and gathered)
    equal the adapter applied at each position."""
    torch.manual_seed(8)
    block = LLMProjector(d_model=4, num_items=5, text_dim=6, hidden_dim=3, id_embedding="add").train()
    block.set_item_features(text=torch.randn(6, 6))
    ids = torch.randint(0, 6, (3, 4))
    mask = ids > 0
    assert ids.numel() > block.num_items + 1
    got = block(ids, mask)
    first, second = block.adapter[0], block.adapter[2]
    adapted = F.gelu(block.text[ids] @ first.weight.T + first.bias) @ second.weight.T + second.bias
    want = (adapted + block.id_embedding(ids)) * mask.unsqueeze(-1)
    torch.testing.assert_close(got, want)
    weights = torch.randn(got.shape)
    parameters = list(block.parameters())
    torch.testing.assert_close(torch.autograd.grad((got * weights).sum(), parameters),
                               torch.autograd.grad((want * weights).sum(), parameters))


def test_projector_with_id_embedding_and_unknown_items_sharing_a_vector():
    torch.manual_seed(7)
    block = LLMProjector(d_model=4, num_items=4, text_dim=5, id_embedding="add").eval()
    assert block.adapter[0].out_features == 2  # text_dim // 2
    with torch.no_grad():
        table = block.item_table()
        plain = table - block.id_embedding.weight
        # no text loaded: every item is unknown, so the text part is the same for all of them
        torch.testing.assert_close(plain[1:], plain[1:2].expand(4, 4))
        assert not torch.allclose(table[1], table[2])  # the ID embeddings tell them apart


def test_projector_feature_errors():
    block = LLMProjector(d_model=4, num_items=5, text_dim=6)
    with pytest.raises(ValueError, match=r"shape \(6, 6\)"):
        block.set_item_features(text=torch.zeros(6, 5))
    with pytest.raises(ValueError, match="uses only"):
        block.set_item_features(attributes=torch.zeros(6, 6))
    with pytest.raises(ValueError, match="pass text"):
        block.set_item_features()
    with pytest.raises(ValueError, match="NaN"):
        block.set_item_features(text=torch.full((6, 6), float("nan")))
    with pytest.raises(ValueError, match="must match"):
        block(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    assert LLMProjector(d_model=4, num_items=5).text.shape == (6, 384)
