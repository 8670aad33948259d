"""The compiled GRU kernel (blocks/gru_cpu.cpp via zoo.blocks.gru.masked_gru; its backward in PyTorch) against
torch's ``nn.GRU`` run over each row's real items (right-aligned, as the pure path does), values and gradients.

Tolerances: float64 within 1e-12 (the kernel sums the hidden product in another order and takes tanh through exp);
float32 within 2e-6 absolute (outputs lie in (-1, 1)).
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from torch import nn

from zoo.blocks import compiled
from zoo.blocks.gru import compiled_gru, masked_gru
from zoo.blocks.masking import left_align, right_align, zero_pads

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")

LENGTHS = [9, 0, 1, 5, 9, 3, 8]


def torch_reference(gru: nn.GRU, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's real items through torch's GRU from a zero state, zero at pads."""
    out = torch.zeros(*x.shape[:2], gru.hidden_size, dtype=x.dtype)
    for b, n in enumerate(mask.sum(1).tolist()):
        if n:
            out[b, -n:] = gru(x[b:b + 1, -n:])[0][0]
    return out


def case(dtype: torch.dtype, d_in: int, hidden: int, layers: int, bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    gru = nn.GRU(d_in, hidden, num_layers=layers, bias=bias, batch_first=True).to(dtype).eval()
    width = max(LENGTHS)
    mask = torch.arange(width).expand(len(LENGTHS), width) >= width - torch.tensor(LENGTHS)[:, None]
    x = torch.randn(len(LENGTHS), width, d_in, dtype=dtype) * 2
    return gru, x, mask


SHAPES = [(64, 64, 1, True), (64, 64, 1, False), (16, 24, 2, True), (5, 7, 1, True)]


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("d_in,hidden,layers,bias", SHAPES)
def test_kernel_matches_torch_gru_row_by_row(d_in, hidden, layers, bias, dtype, atol, threads):
    gru, x, mask = case(dtype, d_in, hidden, layers, bias)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got, want = compiled_gru(gru, x, mask), torch_reference(gru, x, mask)
    finally:
        torch.set_num_threads(before)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    assert (got[~mask] == 0).all()


@needs_compiler
def test_pads_never_reach_an_item():
    gru, x, mask = case(torch.float64, 8, 8, 1, True)
    garbled = torch.where(mask.unsqueeze(-1), x, torch.randn_like(x) * 100)
    with torch.no_grad():
        torch.testing.assert_close(compiled_gru(gru, garbled, mask), compiled_gru(gru, x, mask), atol=0, rtol=0)


def test_masked_gru_runs_the_kernel_unless_dropout_is_active_between_layers(monkeypatch):
    calls = []
    monkeypatch.setattr("zoo.blocks.gru.compiled_gru", lambda gru, x, mask: calls.append(1) or torch.zeros(1))
    monkeypatch.setattr(compiled, "enabled", lambda kernel: True)
    gru, x, mask = case(torch.float32, 6, 6, 2, True)
    gru.dropout = 0.3
    with torch.no_grad():
        masked_gru(gru, x, mask)  # inference
    masked_gru(gru, x, mask)  # gradients on: the compiled layer is differentiable
    assert calls == [1, 1]
    gru.train()
    masked_gru(gru, x, mask)  # dropout between the layers is active in training: torch's GRU
    assert calls == [1, 1]
    monkeypatch.setattr(compiled, "enabled", lambda kernel: False)
    gru.eval()
    with torch.no_grad():
        y = masked_gru(gru, x, mask)
    assert calls == [1, 1]
    pure, _ = gru(right_align(x, mask))
    torch.testing.assert_close(y, zero_pads(left_align(pure, mask), mask))


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("d_in,hidden,layers,bias", SHAPES)
def test_gradients_through_the_kernel_match_torch_gru(d_in, hidden, layers, bias, threads):
    """Training through the compiled layer (its backward: the gates recomputed for all steps at once, the adjoint's
    recurrence, the weight gradients as single products): the gradients of the input and of every parameter are
    those of torch's GRU over each row's real items (float64 within 1e-10)."""
    gru, x, mask = case(torch.float64, d_in, hidden, layers, bias, seed=3)
    x = x.requires_grad_()
    grad = torch.randn(*x.shape[:2], hidden, dtype=torch.float64)
    leaves = [x, *gru.parameters()]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got_out = compiled_gru(gru, x, mask)
        got = torch.autograd.grad(got_out, leaves, grad)
    finally:
        torch.set_num_threads(before)
    want_out = torch_reference(gru, x, mask)
    want = torch.autograd.grad(want_out, leaves, grad * mask.unsqueeze(-1))  # the kernel's pads are constant zeros
    torch.testing.assert_close(got_out, want_out, atol=1e-12, rtol=0)
    for name, a, b in zip(["x", *(n for n, _ in gru.named_parameters())], got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m: f"gradient of {name}: {m}")


@needs_compiler
def test_kernel_under_bf16_autocast_keeps_the_recurrence_in_float32():
    """Autocast runs the input product in bf16; the recurrence still runs in float32 and returns the input's dtype."""
    gru, x, mask = case(torch.float32, 16, 16, 1, True)
    with torch.no_grad():
        want = torch_reference(gru, x, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = compiled_gru(gru, x, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=3e-2, rtol=0)
