"""ConvRec's layer norm (zoo.blocks.norms.LayerNormC): the compiled CPU kernel and the PyTorch-operator path
against an independent reference written from the definition with ``Tensor.std``, values and every gradient.

Tolerances: float64 1e-12 (both compute the same formula; only the order of the sums differs), float32 1e-5
relative to the values' scale.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from zoo.blocks import compiled
from zoo.blocks.norms import LayerNormC, layer_norm_c

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")


def reference(x, weight, bias, eps):
    """α ⊙ (x − μ) / (σ_unbiased + eps) + β, σ from Tensor.std (Bessel's correction)."""
    return weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + eps) + bias


def make_norm(width, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    norm = LayerNormC(width, eps=1e-3).to(dtype)
    with torch.no_grad():  # away from 1 and 0, so a kernel that ignores or swaps them fails
        norm.weight.copy_(1 + 0.5 * torch.randn(width, generator=generator, dtype=dtype))
        norm.bias.copy_(0.3 * torch.randn(width, generator=generator, dtype=dtype))
    return norm


def values_and_gradients(function, norm, x, grad):
    x = x.detach().clone().requires_grad_(True)
    norm.zero_grad(set_to_none=True)
    y = function(x)
    y.backward(grad)
    return y.detach(), x.grad, norm.weight.grad, norm.bias.grad


@pytest.fixture
def kernel_on(monkeypatch):
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "1")


@needs_compiler
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shape", [(3, 7, 259), (5, 2), (1, 3), (70, 64)])
def test_kernel_matches_the_definition(shape, dtype, tolerance, kernel_on):
    generator = torch.Generator().manual_seed(1)
    x = 2 + 3 * torch.randn(shape, generator=generator, dtype=dtype)
    grad = torch.randn(shape, generator=generator, dtype=dtype)
    norm = make_norm(shape[-1], dtype)
    got = values_and_gradients(norm, norm, x, grad)
    want = values_and_gradients(lambda v: reference(v, norm.weight, norm.bias, norm.eps), norm, x, grad)
    for name, a, b in zip(("y", "dx", "dweight", "dbias"), got, want):
        scale = b.abs().max().item() + 1
        assert (a - b).abs().max().item() <= tolerance * scale, name


@needs_compiler
def test_kernel_is_what_runs_and_gradcheck(kernel_on, monkeypatch):
    calls = []
    kernel = compiled.load("layer_norm_c")
    monkeypatch.setattr(compiled, "load", lambda name: calls.append(name) or kernel)
    norm = make_norm(6, torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,), eps=1e-6, atol=1e-8)
    assert "layer_norm_c" in calls


@needs_compiler
def test_constant_rows_get_torchs_gradient(kernel_on):
    """Where x − μ is zero the norm's gradient is taken as 0, as torch.linalg.vector_norm's."""
    norm = make_norm(5, torch.float64)
    x = torch.cat([torch.full((2, 5), 3.0, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)])
    grad = torch.randn(4, 5, dtype=torch.float64)
    got = values_and_gradients(norm, norm, x, grad)
    want = values_and_gradients(lambda v: layer_norm_c(v, norm.weight, norm.bias, norm.eps), norm, x, grad)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=0, atol=1e-12)


@needs_compiler
def test_same_result_on_one_and_two_threads(kernel_on):
    norm = make_norm(259, torch.float32)
    x, grad = torch.randn(1000, 259), torch.randn(1000, 259)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(values_and_gradients(norm, norm, x, grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_operator_path_matches_the_definition(monkeypatch):
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "0")
    norm = make_norm(9, torch.float64)
    x, grad = torch.randn(4, 3, 9, dtype=torch.float64), torch.randn(4, 3, 9, dtype=torch.float64)
    got = values_and_gradients(norm, norm, x, grad)
    want = values_and_gradients(lambda v: reference(v, norm.weight, norm.bias, norm.eps), norm, x, grad)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("setting", ["0", "1"])
def test_sixteen_bit_inputs_are_normalised_in_float32(setting, monkeypatch):
    """Under autocast a linear layer hands the norm bf16: it normalises the float32 values of those, not in bf16."""
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, setting)
    norm = make_norm(259, torch.float32)
    x = (100 + torch.randn(64, 259)).to(torch.bfloat16)  # a large mean: centring in bf16 would lose most digits
    got = norm(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference(x.float(), norm.weight, norm.bias, norm.eps), rtol=1e-5, atol=1e-5)


def test_width_one_is_refused():
    with pytest.raises(ValueError, match="width >= 2"):
        LayerNormC(1)
