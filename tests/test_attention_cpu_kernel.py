"""The compiled CPU attention for inference (blocks/attention_cpu.cpp, blocks/attention.h) against a
plain loop over sequences, heads and query positions, and the self_attention block's use of it.

Tolerances: float64 inputs agree with the float64 loop to 1e-12; float32 to 1e-5; bfloat16 inputs (the
kernel accumulates in float32 and rounds its output to bfloat16) to one bfloat16 rounding, 1e-2.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch

from zoo.blocks import compiled
from zoo.blocks.attention import SelfAttention

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the CPU kernel with"
)


def loop_attention(q, k, v, mask, heads: int, causal: bool):
    """softmax(Q K^T / sqrt(d_head) + M) V, one sequence, head and query at a time, in float64.

    Query row i of q (B, R, D) sits at position L - R + i; it sees key j when mask[j] and (not causal or
    j <= its position), and always itself."""
    batch, rows, width = q.shape
    length, d_head = k.shape[1], width // heads
    out = torch.zeros(batch, rows, width, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            cols = slice(h * d_head, (h + 1) * d_head)
            for i in range(rows):
                position = length - rows + i
                seen = [j for j in range(length) if (bool(mask[b, j]) and (not causal or j <= position)) or j == position]
                scores = torch.stack([q[b, i, cols].double() @ k[b, j, cols].double() for j in seen])
                weights = torch.softmax(scores / math.sqrt(d_head), 0)
                for weight, j in zip(weights, seen):
                    out[b, i, cols] += weight * v[b, j, cols].double()
    return out


def packed_inputs(batch: int, length: int, width: int, dtype: torch.dtype, seed: int):
    """q, k, v as views into one packed (B, L, 3D) projection, like the block's, and a mask with left
    padding, a row with padding inside, and a row with a single real item."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, length, 3 * width, generator=g, dtype=torch.float64).to(dtype)
    q, k, v = qkv.chunk(3, -1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, : length // 2] = False
    if batch > 1:
        mask[1, :-1] = False
    if batch > 2 and length > 3:
        mask[2, 1:3] = False
    return q, k, v, mask


# Lengths around the kernel's 16-key blocks and 4-query tiles; query rows: all, the newest, a few.
@pytest.mark.parametrize("length", [1, 3, 16, 17, 50])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_matches_loop_in_float64(length, causal, heads):
    q, k, v, mask = packed_inputs(4, length, 8, torch.float64, seed=length)
    kernel = compiled.load("attention")
    for rows in sorted({length, 1, min(length, 6)}):
        got = kernel.attend(q[:, -rows:], k, v, mask, heads, causal)
        torch.testing.assert_close(got, loop_attention(q[:, -rows:], k, v, mask, heads, causal), rtol=1e-12, atol=1e-12)


# Head widths 32 (two whole 16-column blocks) and 24 (one whole, one partial).
@pytest.mark.parametrize("width", [64, 48])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_float32_and_bfloat16_against_the_float64_loop(dtype, tolerance, width):
    q, k, v, mask = packed_inputs(5, 23, width, dtype, seed=3)
    got = compiled.load("attention").attend(q, k, v, mask, 2, True)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.double(), loop_attention(q, k, v, mask, 2, True), rtol=tolerance, atol=tolerance)


def test_bad_arguments_are_errors():
    q, k, v, mask = packed_inputs(2, 5, 8, torch.float32, seed=0)
    kernel = compiled.load("attention")
    with pytest.raises(RuntimeError, match="divisible by the heads"):
        kernel.attend(q, k, v, mask, 3, True)
    with pytest.raises(RuntimeError, match="bool tensor"):
        kernel.attend(q, k, v, mask.float(), 2, True)
    with pytest.raises(RuntimeError, match="between 1 and length"):
        kernel.attend(torch.cat([q, q], 1), k, v, mask, 2, True)


def kernel_off_then_on(monkeypatch: pytest.MonkeyPatch, run) -> tuple:
    """``run()`` without gradients, with SEQREC_ZOO_CPU_KERNEL=0 (the pure path) and then 1 (the kernels)."""
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "0")
    with torch.no_grad():
        pure = run()
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "1")
    with torch.no_grad():
        return pure, run()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_the_block_gives_the_same_outputs_with_the_kernel(monkeypatch, causal, bias):
    torch.manual_seed(0)
    block = SelfAttention(16, num_heads=2, dropout=0.3, causal=causal, bias=bias).double().eval()
    q, _, _, mask = packed_inputs(4, 9, 16, torch.float64, seed=1)
    x = q.contiguous() * 3
    calls = []
    kernel = compiled.load("attention")

    class Spy:
        def attend(self, *args):
            calls.append(1)
            return kernel.attend(*args)

    monkeypatch.setattr(compiled, "load", lambda name: Spy() if name == "attention" else compiled.load(name))
    pure, fused = kernel_off_then_on(monkeypatch, lambda: (block(x, mask), block.forward_last(x, mask)))
    assert len(calls) == 2  # forward and forward_last, with the variable set
    for got, want in zip(fused, pure):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_block_keeps_the_pure_path_for_training(monkeypatch):
    """Gradients (and attention dropout in training mode) need the PyTorch path, with the variable set."""
    monkeypatch.setenv(compiled.KERNEL_ENV_VAR, "1")
    block = SelfAttention(8, num_heads=2, dropout=0.5)
    x = torch.randn(2, 5, 8, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert not block.eval()._use_compiled_kernel(x)  # gradients wanted
    with torch.no_grad():
        assert not block.train()._use_compiled_kernel(x)  # dropout active
        assert block.eval()._use_compiled_kernel(x)
    block.eval()(x, mask).sum().backward()
    assert x.grad is not None
