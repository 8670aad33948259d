"""Dropout with the compiled hash mask (zoo.blocks.dropout): torch.nn.Dropout's semantics, checked by
counting: the drop rate, the scale, the same mask in the backward pass, independence between neighbours
and between calls, reproducibility under torch.manual_seed, and the same mask on 1 and 2 threads.

Statistical checks use bounds of 6 standard deviations of the binomial count (a false alarm about once in
500 million runs; a mask off by a few tenths of a percent fails).
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks import compiled
from zoo.blocks.dropout import HashDropout, hash_dropout
from zoo.blocks.transformer_layer import TransformerLayer

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")


@pytest.fixture
def kernel_on(monkeypatch):
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "1")


def assert_rate(count: int, trials: int, probability: float, what: str) -> None:
    sd = math.sqrt(trials * probability * (1 - probability))
    assert abs(count - trials * probability) <= 6 * sd, f"{what}: {count} of {trials}, expected {trials * probability:.0f} ± {6 * sd:.0f}"


@needs_compiler
@pytest.mark.parametrize("p", [0.1, 0.2, 0.35, 0.5, 0.9])
def test_drop_rate_and_scale(p, kernel_on):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    y = hash_dropout(x, p, training=True)
    dropped = y == 0
    assert_rate(int(dropped.sum()), x.numel(), p, "dropped")
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p), rtol=1e-6, atol=0)


@needs_compiler
def test_neighbours_and_calls_are_independent(kernel_on):
    """P(both kept) = (1 - p)^2 for adjacent elements, for elements a kernel block (4,096) apart, and for one
    element in two consecutive calls."""
    p, n = 0.3, 2_000_000
    torch.manual_seed(1)
    ones = torch.ones(n)
    first, second = hash_dropout(ones, p, True) != 0, hash_dropout(ones, p, True) != 0
    assert_rate(int((first[1:] & first[:-1]).sum()), n - 1, (1 - p) ** 2, "adjacent pairs kept")
    assert_rate(int((first[4096:] & first[:-4096]).sum()), n - 4096, (1 - p) ** 2, "pairs 4096 apart kept")
    assert_rate(int((first & second).sum()), n, (1 - p) ** 2, "kept in two calls")


@needs_compiler
def test_backward_uses_the_forward_mask(kernel_on):
    torch.manual_seed(2)
    x = torch.randn(64, 50, 32, requires_grad=True)
    y = hash_dropout(x, 0.25, True)
    grad = torch.randn_like(y)
    y.backward(grad)
    kept = y != 0
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.75, torch.zeros_like(grad)), rtol=1e-6, atol=0)


@needs_compiler
def test_reproducible_under_manual_seed_and_threads(kernel_on):
    x = torch.randn(300, 257, dtype=torch.float64)
    before = torch.get_num_threads()
    masks = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(7)
            masks.append(hash_dropout(x, 0.2, True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(masks[0], masks[1])
    assert masks[0].dtype == torch.float64
    torch.manual_seed(7)
    hash_dropout(x, 0.2, True)
    assert not torch.equal(hash_dropout(x, 0.2, True), masks[0])  # the next call draws a new mask


@needs_compiler
def test_non_contiguous_input(kernel_on):
    torch.manual_seed(3)
    x = torch.rand(40, 30).t() + 1
    y = hash_dropout(x, 0.5, True)
    assert y.shape == x.shape
    torch.testing.assert_close(y[y != 0], x[y != 0] * 2, rtol=1e-6, atol=0)


def test_identity_outside_training_and_at_zero():
    x = torch.randn(5, 6)
    assert hash_dropout(x, 0.5, training=False) is x
    assert hash_dropout(x, 0.0, training=True) is x
    assert torch.equal(hash_dropout(x, 1.0, training=True), torch.zeros_like(x))


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sixteen_bit_values_get_the_float32_mask_and_scale(dtype, kernel_on):
    """Under autocast activations are 16-bit: the same mask as float32 for the same seed, and each kept value
    scaled in float32 and rounded once (not by a factor itself rounded to 16 bits)."""
    x = (torch.rand(300, 257) + 0.5).to(dtype)
    x[0, :12] = torch.tensor([float("inf"), float("nan"), -float("inf")]).repeat(4).to(dtype)  # kept or dropped alike
    torch.manual_seed(8)
    got = hash_dropout(x, 0.35, True)
    torch.manual_seed(8)
    want = hash_dropout(x.float(), 0.35, True)
    assert got.dtype == dtype
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want.to(dtype), rtol=0, atol=0, equal_nan=True)
    assert_rate(int((got[1:] == 0).sum()), x[1:].numel(), 0.35, "dropped")


@needs_compiler
def test_sixteen_bit_backward_uses_the_forward_mask(kernel_on):
    torch.manual_seed(9)
    x = torch.randn(64, 50, 32, dtype=torch.bfloat16, requires_grad=True)
    y = hash_dropout(x, 0.25, True)
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, torch.where(y != 0, (grad.float() * (1 / 0.75)).to(torch.bfloat16), torch.zeros_like(grad)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_dropout_where_the_kernel_does_not_apply(dtype, monkeypatch):
    """Kernels off: torch's own dropout, draw for draw."""
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "0")
    x = torch.randn(20, 30).to(dtype)
    torch.manual_seed(4)
    got = hash_dropout(x, 0.3, True)
    torch.manual_seed(4)
    assert torch.equal(got, F.dropout(x, 0.3, training=True))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_probability(p):
    with pytest.raises(ValueError, match="p must be in \\[0, 1\\]"):
        HashDropout(p)
    with pytest.raises(ValueError, match="p must be in \\[0, 1\\]"):
        hash_dropout(torch.zeros(2), p, True)


def test_blocks_use_it():
    layer = TransformerLayer(8, 2, dropout=0.1)
    assert isinstance(layer.attention_dropout, HashDropout) and repr(layer.attention_dropout) == "HashDropout(p=0.1)"
