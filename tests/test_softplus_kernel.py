"""The step size's softplus (zoo.blocks.ssm.softplus) in its compiled CPU kernel against the formula
``log(1 + exp(x))`` (``x`` above 20) written with Python's ``math`` in double precision, values and gradients.

Tolerances: float64 within 1e-15 relative (the vectorised exp and log1p are within a few units in the last
place, not correctly rounded); float32 within 4e-7 relative of the double result (about 3 units in the last
place; torch's own softplus is within 1); gradients likewise against ``exp(x) / (1 + exp(x))`` (exactly 1 above
20). Below ``x = -87`` in float32 and ``-708`` in float64, where the value is under about 1.6e-38 and 3.3e-308 (the
denormal range, which the scans flush to zero), the kernel's value and gradient are exactly 0 (step_size.h).

The projected form ``valid * softplus(bias + low @ W^T)`` (:func:`projected_softplus`, Mamba's step from its rank-R
input) against the same operations in float64 PyTorch, values and the gradients of low, W and bias: 1e-12 in
float64, 1e-5 in float32.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.softplus import projected_softplus, softplus

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")

EDGES = [-3.4e38, -1e4, -709.0, -708.0, -707.0, -104.0, -100.0, -90.0, -88.0, -87.01, -87.0, -86.99, -20.0, -1e-3, 0.0, 1e-3, 19.99, 20.0, 20.01, 88.0, 1e4]


def points(dtype: torch.dtype) -> torch.Tensor:
    """Values from far below to far above the threshold, the edges included, in an odd count (no whole vector)."""
    g = torch.Generator().manual_seed(0)
    spread = torch.cat([torch.randn(3001, generator=g) * 8, torch.rand(1001, generator=g) * 240 - 120])
    return torch.cat([spread, torch.tensor(EDGES)]).to(dtype)


FLUSHED_BELOW = {torch.float64: -708.0, torch.float32: -87.0}


def formula(x: float, flushed_below: float) -> float:
    return 0.0 if x < flushed_below else x if x > 20 else math.log1p(math.exp(x))


def formula_slope(x: float, flushed_below: float) -> float:
    return 0.0 if x < flushed_below else 1.0 if x > 20 else math.exp(x) / (1.0 + math.exp(x))


def close_to(got: torch.Tensor, want: list[float], rel: float) -> None:
    want_ = torch.tensor(want, dtype=torch.float64)
    err = (got.double() - want_).abs()
    assert (err <= rel * want_.abs()).all(), \
        f"worst at x-index {int((err / want_.abs().clamp_min(1e-300)).argmax())}: {err.max().item():.3e}"


@needs_compiler
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-15), (torch.float32, 4e-7)])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_values_and_gradient_follow_the_formula(dtype, rel, threads):
    x = points(dtype).requires_grad_()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = cpu_kernel.softplus_compiled(x)
        y.backward(torch.ones_like(y))
    finally:
        torch.set_num_threads(before)
    assert y.dtype == dtype and x.grad.dtype == dtype
    flushed_below = FLUSHED_BELOW[dtype]
    close_to(y.detach(), [formula(v, flushed_below) for v in x.tolist()], rel)
    close_to(x.grad, [formula_slope(v, flushed_below) for v in x.tolist()], rel)
    above = x.detach() > 20
    assert torch.equal(y.detach()[above], x.detach()[above]) and (x.grad[above] == 1).all()


@needs_compiler
def test_kernel_keeps_the_dtype_and_shape_of_its_input():
    x = torch.randn(3, 5, 7, dtype=torch.float64).transpose(1, 2)  # not contiguous
    assert cpu_kernel.softplus_compiled(x).shape == (3, 7, 5)
    torch.testing.assert_close(cpu_kernel.softplus_compiled(x), F.softplus(x), rtol=1e-15, atol=0)
    half = torch.randn(64, dtype=torch.bfloat16)
    got = cpu_kernel.softplus_compiled(half)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, F.softplus(half.float()).bfloat16(), rtol=0, atol=0)


@needs_compiler
def test_kernel_walks_a_transposed_input_as_it_lies():
    """A dense transposed view is read in place, the result takes its strides, and a gradient in another layout is
    matched to them."""
    x = torch.randn(4, 9, 6, dtype=torch.float64).transpose(1, 2).requires_grad_()
    y = cpu_kernel.softplus_compiled(x)
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, F.softplus(x), rtol=1e-15, atol=0)
    grad = torch.randn(4, 6, 9, dtype=torch.float64)  # contiguous, unlike x
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad * torch.sigmoid(x.detach()), rtol=1e-15, atol=0)


@needs_compiler
def test_gradcheck_in_double():
    x = (torch.rand(41, dtype=torch.float64) * 50 - 25).requires_grad_()
    assert torch.autograd.gradcheck(cpu_kernel.softplus_compiled, (x,))


def test_dispatch_follows_the_kernel_switch(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernel, "softplus_compiled", lambda x: calls.append(1) or F.softplus(x))
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    softplus(torch.randn(4))
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    softplus(torch.randn(4))
    assert calls == [1]


def projected_inputs(rows: int, rank: int, channels: int, seed: int, bias: bool = True, valid: bool = True) -> dict:
    """low as a slice of a wider tensor (x_proj's output), pre-activations from about -25 to 25."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(rows, rank + 5, generator=g, dtype=torch.float64) * 3
    return {"low": wide[:, 2:2 + rank], "weight": torch.randn(channels, rank, generator=g, dtype=torch.float64) * 2,
            "bias": torch.randn(channels, generator=g, dtype=torch.float64) * 4 if bias else None,
            "valid": (torch.rand(rows, generator=g) < 0.7) if valid else None}


def projected_gradients(fn, x: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    leaves = {k: v.to(dtype).requires_grad_() for k, v in x.items() if v is not None and v.is_floating_point()}
    out = fn(**{**x, **leaves})
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    return [out, *torch.autograd.grad((out * weights).sum(), list(leaves.values()))]


def projected_by_torch(low, weight, bias=None, valid=None):
    delta = F.softplus(F.linear(low, weight, bias))
    return delta if valid is None else delta * valid.unsqueeze(-1).to(delta.dtype)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,bias,valid", [((300, 4, 128), True, True), ((7, 1, 5), True, False),
                                              ((65, 3, 17), False, True), ((1, 2, 40), False, False)])
def test_projected_kernel_matches_torch(shape, bias, valid, threads):
    x = projected_inputs(*shape, seed=sum(shape), bias=bias, valid=valid)
    want = projected_gradients(projected_by_torch, x, torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            got = projected_gradients(cpu_kernel.projected_softplus_compiled, x, dtype)
            assert all(g.dtype == dtype for g in got)
            for g, w in zip(got, want):
                torch.testing.assert_close(g.double(), w, rtol=tolerance, atol=tolerance * max(1.0, w.abs().max().item()))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("setting", ["0", "1"])
def test_projected_softplus_takes_leading_dimensions_and_broadcasts_valid(setting, monkeypatch):
    """(S, B, L, R) input, valid (S, B, L) or a scalar broadcast over it; a mismatched weight is refused."""
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, setting)
    x = projected_inputs(2 * 3 * 5, 4, 8, seed=3)
    low, valid = x["low"].reshape(2, 3, 5, 4), x["valid"].reshape(2, 3, 5)
    got = projected_softplus(low, x["weight"], x["bias"], valid)
    assert got.shape == (2, 3, 5, 8)
    torch.testing.assert_close(got.reshape(30, 8), projected_by_torch(**x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(projected_softplus(low, x["weight"], x["bias"], torch.tensor(0.0)), torch.zeros(2, 3, 5, 8,
                               dtype=torch.float64))
    with pytest.raises(ValueError, match="weight \\(E, R\\)"):
        projected_softplus(low, x["weight"][:, :3], x["bias"])
