"""``zoo.blocks.ssm.ssd.ssd_scan`` against the plain loop over time (``zoo.blocks.ssm.reference``, float64)."""

from __future__ import annotations

import os

import pytest
import torch

from zoo.blocks.ssm import ssd
from zoo.blocks.ssm.reference import ssd_scan_ref as loop_reference
from zoo.blocks.ssm.ssd import ssd_scan

INF = float("inf")


def make_inputs(b=2, l=7, h=4, p=3, g=1, n=5, dtype=torch.float64, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_(requires_grad)

    x = rnd(b, l, h, p)
    dt = rnd(b, l, h, scale=0.5)  # raw; softplus or clamp makes it a step size
    A = (-torch.rand(h, generator=gen, dtype=dtype) * 4 - 0.2).requires_grad_(requires_grad)
    B = rnd(b, l, g, n)
    C = rnd(b, l, g, n)
    return x, dt, A, B, C


@pytest.mark.parametrize("l", [1, 7, 16, 33, 130])
@pytest.mark.parametrize("g", [1, 2])
def test_matches_loop_various_lengths_and_groups(l, g):
    x, dt, A, B, C = make_inputs(l=l, g=g)
    dt = dt.abs()
    y = ssd_scan(x, dt, A, B, C, chunk_size=16)
    y_ref, _ = loop_reference(x, dt, A, B, C)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d_shape", ["h", "hp"])
def test_all_options_with_states(d_shape):
    x, dt, A, B, C = make_inputs(b=3, l=37, h=4, p=3, g=2, n=5)
    gen = torch.Generator().manual_seed(1)
    D = torch.randn(4, dtype=torch.float64, generator=gen) if d_shape == "h" else torch.randn(4, 3, dtype=torch.float64, generator=gen)
    z = torch.randn_like(x)
    dt_bias = torch.randn(4, dtype=torch.float64, generator=gen)
    init = torch.randn(3, 4, 3, 5, dtype=torch.float64, generator=gen)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, initial_states=init, dt_softplus=True, dt_limit=(0.2, 1.1))
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=8, return_final_states=True, **kwargs)
    y_ref, final_ref = loop_reference(x, dt, A, B, C, **kwargs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)


def test_default_dt_limit_clamps_negative_dt_to_zero():
    x, dt, A, B, C = make_inputs(l=9)
    assert (dt < 0).any()
    y = ssd_scan(x, dt, A, B, C, chunk_size=4)
    y_ref, _ = loop_reference(x, dt, A, B, C)
    y_zeroed, _ = loop_reference(x, dt.clamp_min(0), A, B, C)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y_ref, y_zeroed)


def test_final_state_continues_the_scan():
    """Scanning [first half] then [second half] from the first half's final state == one scan."""
    x, dt, A, B, C = make_inputs(l=21, g=2)
    dt = dt.abs()
    y_full, final_full = ssd_scan(x, dt, A, B, C, chunk_size=4, return_final_states=True)
    cut = 10
    y1, s1 = ssd_scan(x[:, :cut], dt[:, :cut], A, B[:, :cut], C[:, :cut], chunk_size=4, return_final_states=True)
    y2, s2 = ssd_scan(x[:, cut:], dt[:, cut:], A, B[:, cut:], C[:, cut:], chunk_size=4, initial_states=s1,
                      return_final_states=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s2, final_full, rtol=1e-10, atol=1e-10)


def test_chunk_size_does_not_change_the_result():
    x, dt, A, B, C = make_inputs(l=50)
    dt = dt.abs()
    results = [ssd_scan(x, dt, A, B, C, chunk_size=q) for q in (1, 3, 16, 64, 256)]
    for y in results[1:]:
        torch.testing.assert_close(y, results[0], rtol=1e-10, atol=1e-10)


def test_strong_decay_is_finite_in_float32():
    """Log-decays far beyond fp32's exp range inside one chunk must not overflow (no exp(+large))."""
    x, dt, A, B, C = make_inputs(l=64, dtype=torch.float32)
    dt = torch.full_like(dt, 4.0)
    A = torch.full_like(A, -30.0)  # log-decay -120 per step
    y = ssd_scan(x, dt, A, B, C, chunk_size=64)
    y_ref, _ = loop_reference(*(t.double() for t in (x, dt, A, B, C)))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_float32_matches_float64_loop():
    x, dt, A, B, C = make_inputs(b=2, l=100, h=4, p=8, g=1, n=16, dtype=torch.float32)
    y = ssd_scan(x, dt, A, B, C, chunk_size=32, dt_softplus=True)
    y_ref, _ = loop_reference(*(t.double() for t in (x, dt, A, B, C)), dt_softplus=True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)


def test_bfloat16_inputs_return_bfloat16():
    x, dt, A, B, C = make_inputs(l=10, dtype=torch.float32)
    y = ssd_scan(x.bfloat16(), dt.bfloat16(), A, B.bfloat16(), C.bfloat16(), chunk_size=4)
    assert y.dtype == torch.bfloat16


def test_gradcheck_all_inputs():
    x, dt, A, B, C = make_inputs(b=2, l=11, h=2, p=2, g=2, n=3, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    D = torch.randn(2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    z = torch.randn(2, 11, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    dt_bias = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    init = torch.randn(2, 2, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)

    def fn(x, dt, A, B, C, D, z, dt_bias, init):
        return ssd_scan(x, dt, A, B, C, chunk_size=4, D=D, z=z, dt_bias=dt_bias, initial_states=init,
                        dt_softplus=True, return_final_states=True)

    assert torch.autograd.gradcheck(fn, (x, dt, A, B, C, D, z, dt_bias, init))


def test_gradients_across_blocks(monkeypatch):
    """With several blocks the state passes from block to block; gradients must equal the loop's."""
    monkeypatch.setattr(ssd, "BLOCK_BUDGET_ELEMENTS", 1)  # one chunk per block
    x, dt, A, B, C = make_inputs(b=2, l=23, h=2, p=2, g=1, n=3, requires_grad=True)
    init = torch.randn(2, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=4, initial_states=init, dt_softplus=True,
                        return_final_states=True)
    y_ref, final_ref = loop_reference(x, dt, A, B, C, initial_states=init, dt_softplus=True)
    weights = torch.randn_like(y), torch.randn_like(final)
    leaves = (x, dt, A, B, C, init)
    grads = torch.autograd.grad((y * weights[0]).sum() + (final * weights[1]).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * weights[0]).sum() + (final_ref * weights[1]).sum(), leaves)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(A=a["A"][:-1]), "A must have shape"),
        (lambda a: a.update(B=a["B"].repeat(1, 1, 3, 1), C=a["C"].repeat(1, 1, 3, 1)), "divisible by ngroups"),
        (lambda a: a.update(D=torch.ones(7)), "D must have shape"),
        (lambda a: a.update(chunk_size=0), "chunk_size must be"),
        (lambda a: a.update(x=a["x"][0]), "x must be"),
    ],
)
def test_bad_shapes_raise_clear_errors(change, message):
    x, dt, A, B, C = make_inputs()
    args = dict(x=x, dt=dt, A=A, B=B, C=C, chunk_size=4)
    change(args)
    with pytest.raises(ValueError, match=message):
        ssd_scan(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernel_matches_pure_path():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    x, dt, A, B, C = make_inputs(b=2, l=300, h=8, p=16, g=2, n=32, dtype=torch.float32)
    D = torch.randn(8)
    z = torch.randn_like(x)
    dt_bias = torch.randn(8)
    init = torch.randn(2, 8, 16, 32)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, initial_states=init, dt_softplus=True, dt_limit=(0.0, 2.0),
                  return_final_states=True)
    y, final = ssd_scan(x, dt, A, B, C, 64, **kwargs)
    cuda = [t.cuda() for t in (x, dt, A, B, C)]
    y_gpu, final_gpu = mamba_chunk_scan_combined(*cuda, 64, **{k: v.cuda() if torch.is_tensor(v) else v
                                                                  for k, v in kwargs.items()})
    torch.testing.assert_close(y_gpu.cpu(), y, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(final_gpu.cpu(), final, rtol=1e-3, atol=1e-3)
    os.environ["SEQREC_ZOO_PURE_SSM"] = "1"
    try:
        y_pure = ssd_scan(*cuda, 64, **{k: v.cuda() if torch.is_tensor(v) else v for k, v in kwargs.items()})[0]
    finally:
        del os.environ["SEQREC_ZOO_PURE_SSM"]
    torch.testing.assert_close(y_pure.cpu(), y, rtol=1e-4, atol=1e-4)


def test_chunk_shrinks_until_the_log_decay_range_fits():
    """``_pure_chunk`` halves the chunk until no chunk spans a log-decay range above the limit."""
    dA = torch.full((1, 64, 2), -1.0)
    assert ssd._pure_chunk(dA, 64) == 64  # range 63 per chunk
    dA[0, 11, 1] = -200.0  # a step beyond the limit: only one-step chunks (range 0) keep it off a range
    assert ssd._pure_chunk(dA, 64) == 1
    dA = torch.full((1, 64, 2), -3.0)
    assert ssd._pure_chunk(dA, 64) == 32  # 63 * 3 > 120 >= 31 * 3


def test_mixed_weak_and_strong_decay_float32_matches_loop():
    """Heads and steps with log-decays from -0.01 to -60 per step: the split decay factors stay finite."""
    x, dt, A, B, C = make_inputs(b=2, l=70, h=4, p=3, g=2, n=5, dtype=torch.float32, seed=4)
    gen = torch.Generator().manual_seed(5)
    dt = torch.rand(2, 70, 4, generator=gen) * 2
    A = torch.tensor([-0.01, -1.0, -8.0, -30.0])
    y, final = ssd_scan(x, dt, A, B, C, chunk_size=64, return_final_states=True)
    y_ref, final_ref = loop_reference(*(t.double() for t in (x, dt, A, B, C)))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.double(), final_ref, rtol=1e-4, atol=1e-4)
