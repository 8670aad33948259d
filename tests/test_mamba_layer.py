"""The Mamba (v1) layer: mamba-ssm's parameters and init, forward math, padding mask, streaming."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.ssm.mamba import Mamba
from zoo.registry import get_block

# Written from mamba-ssm's mamba_simple.py (v1): d_inner = expand * d_model, dt_rank = ceil(d_model / 16)
# unless given; state_dict order = the module's own parameters, then submodules in creation order.
EXPECTED_STATE_DICTS = {
    "sigma-default": (
        dict(d_model=64, d_state=32, d_conv=4, expand=2),
        [
            ("A_log", (128, 32)),
            ("D", (128,)),
            ("in_proj.weight", (256, 64)),
            ("conv1d.weight", (128, 1, 4)),
            ("conv1d.bias", (128,)),
            ("x_proj.weight", (68, 128)),
            ("dt_proj.weight", (128, 4)),
            ("dt_proj.bias", (128,)),
            ("out_proj.weight", (64, 128)),
        ],
    ),
    "explicit-dt-rank-with-bias": (
        dict(d_model=32, d_state=16, dt_rank=8, bias=True),
        [
            ("A_log", (64, 16)),
            ("D", (64,)),
            ("in_proj.weight", (128, 32)),
            ("in_proj.bias", (128,)),
            ("conv1d.weight", (64, 1, 4)),
            ("conv1d.bias", (64,)),
            ("x_proj.weight", (40, 64)),
            ("dt_proj.weight", (64, 8)),
            ("dt_proj.bias", (64,)),
            ("out_proj.weight", (32, 64)),
            ("out_proj.bias", (32,)),
        ],
    ),
    "no-conv-bias-expand1": (
        dict(d_model=48, d_conv=3, expand=1, conv_bias=False),
        [
            ("A_log", (48, 16)),
            ("D", (48,)),
            ("in_proj.weight", (96, 48)),
            ("conv1d.weight", (48, 1, 3)),
            ("x_proj.weight", (35, 48)),
            ("dt_proj.weight", (48, 3)),
            ("dt_proj.bias", (48,)),
            ("out_proj.weight", (48, 48)),
        ],
    ),
}


@pytest.mark.parametrize("config", list(EXPECTED_STATE_DICTS))
def test_state_dict_names_and_shapes_match_mamba_ssm(config):
    kwargs, expected = EXPECTED_STATE_DICTS[config]
    got = [(name, tuple(t.shape)) for name, t in Mamba(**kwargs).state_dict().items()]
    assert got == expected


def test_parameter_count_matches_notes():
    assert sum(p.numel() for p in Mamba(64, d_state=32).parameters()) == 38_784  # docs/models/mamba4rec.md, "The Mamba layer"


def test_state_dict_round_trip():
    a, b = Mamba(32, d_state=8), Mamba(32, d_state=8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(a(x), b(x))


def test_initialisation():
    torch.manual_seed(0)
    dt_min, dt_max = 0.002, 0.05
    m = Mamba(64, d_state=12, dt_min=dt_min, dt_max=dt_max)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 13, dtype=torch.float32)).expand(128, 12))
    torch.testing.assert_close(m.D, torch.ones(128))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= dt_min * (1 - 1e-4) and dt.max() <= dt_max * (1 + 1e-4)
    assert dt.std() > 0  # log-uniform draws, not a constant
    std = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= std and m.dt_proj.weight.std() > 0
    constant = Mamba(64, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(constant.dt_proj.weight, torch.full((128, 4), 2.0 * 4**-0.5))
    floored = Mamba(16, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    torch.testing.assert_close(F.softplus(floored.dt_proj.bias.detach()), torch.full((32,), 1e-4))


def reference_forward(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's non-fused forward, with the scan as a plain loop over time."""
    length = x.shape[1]
    u, z = F.linear(x, m.in_proj.weight, m.in_proj.bias).chunk(2, dim=-1)  # (B, L, E)
    u = F.conv1d(u.transpose(1, 2), m.conv1d.weight, m.conv1d.bias, padding=m.d_conv - 1, groups=m.d_inner)
    u = F.silu(u[..., :length]).transpose(1, 2)  # (B, L, E)
    dt, B, C = F.linear(u, m.x_proj.weight).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = F.softplus(F.linear(dt, m.dt_proj.weight, m.dt_proj.bias))  # (B, L, E)
    A = -torch.exp(m.A_log)
    h = x.new_zeros(x.shape[0], m.d_inner, m.d_state)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + m.D * u[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return F.linear(y, m.out_proj.weight, m.out_proj.bias)


@pytest.mark.parametrize("kwargs", [dict(d_state=8), dict(d_state=4, dt_rank=3, bias=True, conv_bias=False, d_conv=2)])
def test_forward_matches_loop_reference(kwargs):
    torch.manual_seed(1)
    m = Mamba(16, **kwargs).double()
    x = torch.randn(3, 37, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference_forward(m, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m(x, torch.ones(3, 37, dtype=torch.bool)), reference_forward(m, x), rtol=1e-10, atol=1e-10)


def test_padding_does_not_reach_real_positions():
    torch.manual_seed(2)
    m = Mamba(16, d_state=8).double()
    length = 25
    x = torch.randn(3, length, 16, dtype=torch.float64)
    lengths = [25, 11, 1]
    mask = torch.arange(length)[None, :] >= (length - torch.tensor(lengths))[:, None]
    garbage = x.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 16, dtype=torch.float64)
    out = m(garbage, mask)
    for row, n in enumerate(lengths):
        alone = m(x[row : row + 1, length - n :])
        torch.testing.assert_close(out[row, length - n :], alone[0], rtol=1e-10, atol=1e-10)


def test_step_equals_forward():
    torch.manual_seed(3)
    m = Mamba(16, d_state=8, d_conv=3).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    full = m(x)
    state = m.init_state(2)
    assert state.conv.shape == (2, 32, 3) and state.ssm.shape == (2, 32, 8)
    assert state.conv.dtype == torch.float64
    for t in range(12):
        y_t, state = m.step(x[:, t], state)
        torch.testing.assert_close(y_t, full[:, t], rtol=1e-10, atol=1e-10)


def test_float32_training_step_has_finite_gradients():
    m = Mamba(16, d_state=8)
    x = torch.randn(4, 30, 16, requires_grad=True)
    mask = torch.ones(4, 30, dtype=torch.bool)
    mask[1, :20] = False
    m(x, mask)[mask].pow(2).sum().backward()
    grads = [p.grad for p in m.parameters()] + [x.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_registered_as_streaming_causal_sequence_block():
    cls = get_block("mamba")
    assert cls is Mamba
    assert cls.kind == "sequence" and cls.causal and cls.streaming


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(d_state=0), "d_state"),
        (dict(dt_rank=0), "dt_rank"),
        (dict(dt_min=0.5, dt_max=0.1), "dt_min"),
        (dict(dt_init="normal"), "dt_init"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mamba(16, **kwargs)


def test_bad_input_shapes_raise():
    m = Mamba(16)
    with pytest.raises(ValueError, match="expected x"):
        m(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="mask"):
        m(torch.randn(2, 5, 16), torch.ones(2, 4, dtype=torch.bool))


def _mamba_ssm_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


@pytest.mark.skipif(not _mamba_ssm_available(), reason="needs a CUDA device and mamba_ssm installed")
def test_matches_mamba_ssm_module_both_ways(monkeypatch):
    from mamba_ssm import Mamba as ReferenceMamba

    torch.manual_seed(4)
    ours = Mamba(64, d_state=32).cuda()
    theirs = ReferenceMamba(64, d_state=32).cuda()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 200, 64, device="cuda")
    want = theirs(x)
    torch.testing.assert_close(ours(x), want, rtol=2e-3, atol=2e-3)  # our layer on mamba-ssm's kernels
    monkeypatch.setenv("SEQREC_ZOO_PURE_SSM", "1")
    torch.testing.assert_close(ours(x), want, rtol=2e-3, atol=2e-3)  # our pure-PyTorch path
    ours.load_state_dict(theirs.state_dict())
    assert math.isclose(float(ours.D.sum()), float(theirs.D.sum()))
