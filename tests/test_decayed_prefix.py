"""The decayed prefix readout (zoo.blocks.ssm.decayed_prefix): its PyTorch form and its compiled CPU
kernel against a plain double loop over (position, earlier position), values and gradients.

float64 tolerance 1e-10 (the same sums in another order); float32 1e-5 relative to the output's scale.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.decayed_prefix import decayed_prefix_readout, decayed_prefix_readout_ref

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")
NAMES = ["before", "w", "B", "A", "after", "C"]


def make_inputs(batch: int, length: int, dim: int, n: int, seed: int, dtype=torch.float64) -> dict:
    """Shapes and signs as in SIGMA: steps positive, ``before``/``after`` sums of steps, ``A`` negative."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.rand(batch, length, dim, generator=g, dtype=dtype) * 0.5
    return {
        "before": steps.cumsum(1) - steps,
        "w": torch.randn(batch, length, dim, generator=g, dtype=dtype),
        "B": torch.randn(batch, length, n, generator=g, dtype=dtype),
        "A": -torch.rand(dim, n, generator=g, dtype=dtype) * 2 - 0.1,
        "after": torch.rand(batch, length, dim, generator=g, dtype=dtype) * 2,
        "C": torch.randn(batch, length, n, generator=g, dtype=dtype),
    }


def loop_reference(before, w, B, A, after, C):
    """``out[b, s, e] = sum_n C[b,s,n] exp(A[e,n] after[b,s,e]) sum_{j<=s} exp(A[e,n] before[b,j,e]) w[b,j,e] B[b,j,n]``,
    one position pair at a time."""
    batch, length, dim = w.shape
    rows = []
    for s in range(length):
        total = torch.zeros(batch, dim, A.shape[1], dtype=w.dtype)
        for j in range(s + 1):
            total = total + torch.exp(A * before[:, j, :, None]) * w[:, j, :, None] * B[:, j, None, :]
        rows.append((C[:, s, None, :] * torch.exp(A * after[:, s, :, None]) * total).sum(-1))
    return torch.stack(rows, 1)


def with_gradients(fn, inputs: dict, seed: int) -> tuple:
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return (out, *torch.autograd.grad((out * weights).sum(), list(leaves.values())))


@pytest.mark.parametrize("batch,length,dim,n", [(3, 9, 5, 4), (1, 1, 3, 2), (2, 17, 8, 32)])
def test_pytorch_form_matches_loop(batch, length, dim, n):
    x = make_inputs(batch, length, dim, n, seed=length)
    for name, got, want in zip(["out", *NAMES], with_gradients(decayed_prefix_readout_ref, x, 1),
                               with_gradients(loop_reference, x, 1)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,length,dim,n", [(3, 9, 5, 4), (1, 1, 3, 2), (2, 17, 8, 32), (1, 6, 1, 3)])
def test_compiled_kernel_matches_loop(batch, length, dim, n, threads):
    x = make_inputs(batch, length, dim, n, seed=length + dim)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = with_gradients(cpu_kernel.decayed_prefix_compiled, x, 2)
    finally:
        torch.set_num_threads(before)
    for name, g, w in zip(["out", *NAMES], got, with_gradients(loop_reference, x, 2)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@needs_compiler
def test_compiled_kernel_float32_and_strided_inputs():
    """float32 (the training dtype) against the float64 loop; inputs that are slices, not contiguous."""
    x = make_inputs(4, 20, 6, 8, seed=7)
    wide = {k: torch.cat([v, v], -1)[..., : v.shape[-1]] if k != "A" else v for k, v in x.items()}
    assert not wide["w"].is_contiguous()
    got = with_gradients(cpu_kernel.decayed_prefix_compiled, {k: v.float() for k, v in wide.items()}, 3)
    for name, g, w in zip(["out", *NAMES], got, with_gradients(loop_reference, x, 3)):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item(), msg=name)


def test_dispatch_follows_the_kernel_switch(monkeypatch):
    x = make_inputs(2, 5, 3, 4, seed=1)
    calls = []
    monkeypatch.setattr(cpu_kernel, "decayed_prefix_compiled", lambda *a: calls.append(1) or decayed_prefix_readout_ref(*a))
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    decayed_prefix_readout(**x)
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    decayed_prefix_readout(**x)
    assert calls == [1]


def test_mismatched_shapes_are_refused():
    x = make_inputs(2, 5, 3, 4, seed=1)
    with pytest.raises(ValueError, match="A \\(e, n\\)"):
        decayed_prefix_readout(**{**x, "A": x["A"][:, :3]})
    with pytest.raises(ValueError, match="one \\(b, l, e\\) shape"):
        decayed_prefix_readout(**{**x, "after": x["after"][:, :4]})
