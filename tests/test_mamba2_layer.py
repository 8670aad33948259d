"""The Mamba2 layer: mamba-ssm's parameter table, forward against a loop reference, mask, step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.ssm.mamba2 import Mamba2
from padding import left_mask

# Written from mamba-ssm's modules/mamba2.py: d_inner = expand·d_model, nheads = d_inner / headdim,
# in_proj: d_model -> 2·d_inner + 2·ngroups·d_state + nheads, conv_dim = d_inner + 2·ngroups·d_state.
STATE_DICT_TABLE = [
    (
        dict(d_model=64, headdim=16, d_state=64),
        {"in_proj.weight": (392, 64), "conv1d.weight": (256, 1, 4), "conv1d.bias": (256,), "dt_bias": (8,),
         "A_log": (8,), "D": (8,), "norm.weight": (128,), "out_proj.weight": (64, 128)},
    ),
    (
        dict(d_model=32, headdim=8, d_state=32),
        {"in_proj.weight": (200, 32), "conv1d.weight": (128, 1, 4), "conv1d.bias": (128,), "dt_bias": (8,),
         "A_log": (8,), "D": (8,), "norm.weight": (64,), "out_proj.weight": (32, 64)},
    ),
    (
        dict(d_model=64, headdim=16, d_state=16, ngroups=2),
        {"in_proj.weight": (328, 64), "conv1d.weight": (192, 1, 4), "conv1d.bias": (192,), "dt_bias": (8,),
         "A_log": (8,), "D": (8,), "norm.weight": (128,), "out_proj.weight": (64, 128)},
    ),
    (
        dict(d_model=32, headdim=8, d_state=16, D_has_hdim=True, d_conv=3),
        {"in_proj.weight": (168, 32), "conv1d.weight": (96, 1, 3), "conv1d.bias": (96,), "dt_bias": (8,),
         "A_log": (8,), "D": (64,), "norm.weight": (64,), "out_proj.weight": (32, 64)},
    ),
    (
        dict(d_model=32, headdim=16, d_state=8, rmsnorm=False, bias=True, conv_bias=False, expand=1),
        {"in_proj.weight": (82, 32), "in_proj.bias": (82,), "conv1d.weight": (48, 1, 4), "dt_bias": (2,),
         "A_log": (2,), "D": (2,), "out_proj.weight": (32, 32), "out_proj.bias": (32,)},
    ),
    (
        dict(d_model=256),  # mamba-ssm's defaults: d_state 128, headdim 64
        {"in_proj.weight": (1288, 256), "conv1d.weight": (768, 1, 4), "conv1d.bias": (768,), "dt_bias": (8,),
         "A_log": (8,), "D": (8,), "norm.weight": (512,), "out_proj.weight": (256, 512)},
    ),
]


@pytest.mark.parametrize("kwargs, expected", STATE_DICT_TABLE)
def test_state_dict_names_and_shapes_match_mamba_ssm(kwargs, expected):
    layer = Mamba2(**kwargs)
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == expected
    copy = Mamba2(**kwargs)
    copy.load_state_dict(layer.state_dict())  # strict round trip


def test_initialisation_follows_mamba_ssm():
    torch.manual_seed(0)
    layer = Mamba2(d_model=64, headdim=4, d_state=8, dt_min=0.01, dt_max=0.05, A_init_range=(2.0, 5.0))
    dt = F.softplus(layer.dt_bias.detach())
    assert layer.nheads == 32
    assert ((dt >= 0.01 - 1e-6) & (dt <= 0.05 + 1e-6)).all()
    assert math.log(0.05) - math.log(dt.max()) < 0.5 and math.log(dt.min()) - math.log(0.01) < 0.5  # log-uniform spread
    A = layer.A_log.detach().exp()
    assert ((A >= 2.0) & (A <= 5.0)).all()
    assert torch.equal(layer.D.detach(), torch.ones(32)) and torch.equal(layer.norm.weight.detach(), torch.ones(128))
    assert all(getattr(p, "_no_weight_decay", False) for p in (layer.A_log, layer.D, layer.dt_bias))
    assert not getattr(layer.in_proj.weight, "_no_weight_decay", False)


def test_dt_init_floor_applies():
    layer = Mamba2(d_model=16, headdim=4, d_state=4, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-3)
    torch.testing.assert_close(F.softplus(layer.dt_bias.detach()), torch.full((8,), 1e-3))


def reference_forward(layer: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's non-fused forward, written with explicit loops over conv taps and time steps."""
    b, l, _ = u.shape
    h, p, g, n, K = layer.nheads, layer.headdim, layer.ngroups, layer.d_state, layer.d_conv
    zxbcdt = u @ layer.in_proj.weight.T
    if layer.in_proj.bias is not None:
        zxbcdt = zxbcdt + layer.in_proj.bias
    d_in = layer.d_inner
    z, xBC, dt = zxbcdt[..., :d_in], zxbcdt[..., d_in:d_in + layer.conv_dim], zxbcdt[..., d_in + layer.conv_dim:]
    w = layer.conv1d.weight[:, 0]  # (conv_dim, K)
    conv = torch.zeros_like(xBC)
    for t in range(l):
        for k in range(K):
            src = t - (K - 1) + k
            if src >= 0:
                conv[:, t] += w[:, k] * xBC[:, src]
    if layer.conv1d.bias is not None:
        conv = conv + layer.conv1d.bias
    xBC = F.silu(conv)
    x = xBC[..., :d_in].reshape(b, l, h, p)
    B = xBC[..., d_in:d_in + g * n].reshape(b, l, g, n)
    C = xBC[..., d_in + g * n:].reshape(b, l, g, n)
    dt = F.softplus(dt + layer.dt_bias).clamp(*layer.dt_limit)
    A = -torch.exp(layer.A_log)
    D = layer.D.reshape(h, p) if layer.D_has_hdim else layer.D[:, None].expand(h, p)
    state = u.new_zeros(b, h, p, n)
    ys = []
    for t in range(l):
        head_rows = []
        for head in range(h):
            grp = head // (h // g)
            s = state[:, head] * torch.exp(dt[:, t, head] * A[head])[:, None, None]
            s = s + (dt[:, t, head, None] * x[:, t, head])[:, :, None] * B[:, t, grp][:, None, :]
            head_rows.append(s)
        state = torch.stack(head_rows, 1)
        C_heads = C[:, t].repeat_interleave(h // g, dim=1)  # (b, h, n)
        ys.append((state * C_heads[:, :, None, :]).sum(-1) + D * x[:, t])
    y = torch.stack(ys, 1).reshape(b, l, d_in)
    gate = F.silu(z)
    if layer.rmsnorm:
        if not layer.norm_before_gate:
            y = y * gate
        grouped = y.reshape(b, l, g, d_in // g)
        y = (grouped / torch.sqrt(grouped.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(b, l, d_in)
        y = y * layer.norm.weight
        if layer.norm_before_gate:
            y = y * gate
    else:
        y = y * gate
    out = y @ layer.out_proj.weight.T
    return out + layer.out_proj.bias if layer.out_proj.bias is not None else out


CONFIGS = [
    dict(d_model=16, headdim=8, d_state=6),
    dict(d_model=16, headdim=4, d_state=5, ngroups=2, D_has_hdim=True),
    dict(d_model=16, headdim=8, d_state=4, rmsnorm=False, bias=True),
    dict(d_model=16, headdim=4, d_state=4, ngroups=4, norm_before_gate=True, dt_limit=(0.01, 0.05)),
    dict(d_model=12, headdim=6, d_state=3, d_conv=2, conv_bias=False),
]


def randomised(kwargs: dict, chunk_size: int = 4) -> Mamba2:
    """A float64 layer with non-trivial D, norm weight and biases (the init leaves them at 1 / 0)."""
    torch.manual_seed(0)
    layer = Mamba2(**kwargs, chunk_size=chunk_size).double()
    with torch.no_grad():
        layer.D.uniform_(0.5, 1.5)
        if layer.rmsnorm:
            layer.norm.weight.uniform_(0.5, 1.5)
        layer.dt_bias.add_(1.0)  # larger steps: decays matter within the test's lengths
    return layer


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_forward_matches_loop_reference(kwargs):
    layer = randomised(kwargs)
    u = torch.randn(2, 11, kwargs["d_model"], dtype=torch.float64)
    torch.testing.assert_close(layer(u), reference_forward(layer, u), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs", CONFIGS[:3])
def test_padding_does_not_reach_real_positions(kwargs):
    layer = randomised(kwargs)
    lengths, width = [9, 4, 1, 13], 13
    u = torch.randn(len(lengths), width, kwargs["d_model"], dtype=torch.float64)
    mask = left_mask(lengths, width)
    garbage = 100 * torch.randn_like(u)
    out = layer(torch.where(mask[..., None], u, garbage), mask)
    for row, n in enumerate(lengths):
        alone = layer(u[row:row + 1, width - n:])
        torch.testing.assert_close(out[row, width - n:], alone[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_step_equals_forward(kwargs):
    layer = randomised(kwargs)
    u = torch.randn(3, 10, kwargs["d_model"], dtype=torch.float64)
    full = layer(u)
    state = layer.init_state(3)
    assert state[0].shape == (3, layer.conv_dim, layer.d_conv)
    assert state[1].shape == (3, layer.nheads, layer.headdim, layer.d_state)
    for t in range(u.shape[1]):
        y_t, state = layer.step(u[:, t], state)
        torch.testing.assert_close(y_t, full[:, t], rtol=1e-9, atol=1e-9)


def test_step_continues_after_masked_prefix():
    """Streaming a user's real items gives the masked forward's outputs at real positions."""
    layer = randomised(CONFIGS[1])
    u = torch.randn(1, 8, 16, dtype=torch.float64)
    mask = torch.tensor([[False, False, False, True, True, True, True, True]])
    full = layer(u, mask)
    state = layer.init_state(1, dtype=torch.float64)
    for t in range(3, 8):
        y_t, state = layer.step(u[:, t], state)
        torch.testing.assert_close(y_t, full[:, t], rtol=1e-9, atol=1e-9)


def test_gradients_reach_every_parameter():
    layer = Mamba2(d_model=16, headdim=4, d_state=8, chunk_size=4)
    u = torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False
    layer(u, mask).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_small_d_model_builds_with_defaults():
    layer = Mamba2(d_model=16)  # d_inner 32 < default headdim 64: headdim capped at 32
    assert (layer.nheads, layer.headdim) == (1, 32)
    assert layer(torch.randn(2, 5, 16)).shape == (2, 5, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=24, headdim=32), "divisible by headdim"),
        (dict(d_model=16, headdim=8, ngroups=3), "divisible by ngroups"),
        (dict(d_model=16, A_init_range=(0.0, 1.0)), "A_init_range"),
        (dict(d_model=16, dt_min=0.2, dt_max=0.1), "dt_min"),
        (dict(d_model=0), "d_model must be"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mamba2(**kwargs)


def test_bad_input_shapes_raise():
    layer = Mamba2(d_model=16, headdim=8, d_state=4)
    with pytest.raises(ValueError, match="expected x of shape"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))


def test_registered_as_mamba2_and_ssd():
    from zoo.registry import get_block

    assert get_block("mamba2") is Mamba2 and get_block("ssd") is Mamba2
    assert Mamba2.kind == "sequence" and Mamba2.causal and Mamba2.streaming


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_state_dict_moves_to_and_from_mamba_ssm():
    mamba_ssm = pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    kwargs = dict(d_model=64, headdim=16, d_state=64, chunk_size=64)
    torch.manual_seed(0)
    theirs = mamba_ssm.Mamba2(**kwargs, use_mem_eff_path=False).cuda()
    ours = Mamba2(**kwargs)
    ours.load_state_dict({k: v.cpu() for k, v in theirs.state_dict().items()})
    u = torch.randn(2, 150, 64)
    with torch.no_grad():
        expected = theirs(u.cuda()).cpu()
        got = ours(u)
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    theirs.load_state_dict({k: v.cuda() for k, v in ours.state_dict().items()})  # and back
    ours.cuda()
    with torch.no_grad():
        torch.testing.assert_close(ours(u.cuda()).cpu(), expected, rtol=2e-3, atol=2e-3)  # our layer, their kernels
