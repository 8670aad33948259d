"""The gathered depthwise convolution (``zoo.blocks.ssm.gathered_conv``), in PyTorch and in its compiled CPU kernel
(``causal_conv_cpu.cpp``), against a loop written from its equation, values and every gradient:

    a[s, b, t, c] = bias[c] + sum_k w[c, k] * x[b, source[s, b, t, k], c]      (source -1: the tap reads zero)
    y = silu(a)                                                               (or a itself)

float64 tolerance 1e-10 (the same sums in another order); float32 1e-5 against the float64 loop. Tables hold
repeated sources, taps reading zero, more or fewer positions than the input; the kernel runs with 1 and 2 threads
(its backward scatters into the input's gradient a sequence per thread) and on a channels-last slice.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from spy import count_calls

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d
from zoo.blocks.ssm.gathered_conv import gathered_depthwise_conv, gathered_depthwise_conv_ref

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")


def conv_loop(x, weight, bias, source, silu):
    """The equation above, one output vector (all channels) at a time."""
    outputs, batch, positions, taps = source.shape
    rows = []
    for s in range(outputs):
        for b in range(batch):
            for t in range(positions):
                a = bias.clone() if bias is not None else x.new_zeros(x.shape[2])
                for k in range(taps):
                    if source[s, b, t, k] >= 0:
                        a = a + weight[:, k] * x[b, source[s, b, t, k]]
                rows.append(a * torch.sigmoid(a) if silu else a)
    return torch.stack(rows).reshape(outputs, batch, positions, x.shape[2])


def inputs(outputs: int, batch: int, length: int, positions: int, channels: int, taps: int, seed: int,
           bias: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, length, channels, generator=g, dtype=torch.float64),
        "weight": torch.randn(channels, taps, generator=g, dtype=torch.float64),
        "bias": torch.randn(channels, generator=g, dtype=torch.float64) if bias else None,
        # about a third of the taps read zero; the rest any position, repeats included
        "source": torch.randint(-length // 2 - 1, length, (outputs, batch, positions, taps), generator=g).clamp_min(-1),
    }


def with_gradients(fn, x: dict, silu: bool, seed: int) -> list[torch.Tensor]:
    """The output and the gradients of a fixed random projection of it w.r.t. x, weight and bias."""
    leaves = {k: v.clone().requires_grad_() for k, v in x.items() if v is not None and v.is_floating_point()}
    out = fn(**{**x, **leaves}, silu=silu)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return [out, *torch.autograd.grad((out * projection).sum(), list(leaves.values()))]


def assert_all_close(got: list, want: list, tolerance: float) -> None:
    for index, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g.double(), w, rtol=tolerance, atol=tolerance * max(1.0, w.abs().max().item()),
                                   msg=lambda m: f"output/gradient {index}: {m}")


SHAPES = [(3, 2, 9, 9, 5, 4), (1, 1, 4, 7, 3, 2), (9, 3, 12, 5, 16, 4), (2, 4, 1, 3, 2, 1)]  # (S, B, L, T, C, K)


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_pytorch_form_matches_loop(shape, silu):
    x = inputs(*shape, seed=sum(shape))
    assert_all_close(with_gradients(gathered_depthwise_conv_ref, x, silu, 1), with_gradients(conv_loop, x, silu, 1), 1e-10)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_loop(shape, silu, threads):
    x = inputs(*shape, seed=sum(shape) + 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = with_gradients(cpu_kernel.gathered_conv_compiled, x, silu, 2)
    finally:
        torch.set_num_threads(before)
    assert_all_close(got, with_gradients(conv_loop, x, silu, 2), 1e-10)


@needs_compiler
def test_kernel_without_bias_float32_and_a_channels_last_slice():
    """float32 against the float64 loop; x a slice of a wider tensor, read in place."""
    x = inputs(4, 3, 10, 8, 6, 4, seed=3, bias=False)
    wide = torch.cat([x["x"], torch.randn(3, 10, 5, dtype=torch.float64)], -1).float()
    x32 = {**x, "x": wide[..., :6], "weight": x["weight"].float()}
    assert not x32["x"].is_contiguous()
    got = with_gradients(cpu_kernel.gathered_conv_compiled, x32, True, 4)
    assert all(g.dtype == torch.float32 for g in got)
    assert_all_close(got, with_gradients(conv_loop, x, True, 4), 1e-5)


def test_the_causal_table_gives_the_causal_convolution():
    """``source[0, b, t, k] = t - K + 1 + k`` (-1 before position 0) is Mamba's causal short convolution."""
    x = inputs(1, 2, 7, 7, 3, 4, seed=5)
    t, k = torch.arange(7).view(7, 1), torch.arange(4).view(1, 4)
    source = (t - 3 + k).clamp_min(-1).expand(1, 2, 7, 4).contiguous()
    got = gathered_depthwise_conv(x["x"], x["weight"], x["bias"], source)
    want = causal_depthwise_conv1d(x["x"].transpose(1, 2), x["weight"], x["bias"], activation="silu").transpose(1, 2)
    torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("setting,expected", [("0", 0), ("1", 1)])
def test_dispatch_follows_the_kernel_switch(setting, expected, monkeypatch):
    calls = count_calls(monkeypatch, cpu_kernel, "gathered_conv_compiled")
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, setting)
    x = inputs(2, 2, 6, 6, 3, 4, seed=0)
    out = gathered_depthwise_conv(**x)
    assert len(calls) == expected
    torch.testing.assert_close(out, conv_loop(**x, silu=True), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("change,message", [
    (lambda x: {**x, "source": x["source"].clamp_max(-2)}, "must lie in \\[-1, 9\\)"),
    (lambda x: {**x, "source": x["source"] + 9}, "must lie in \\[-1, 9\\)"),
    (lambda x: {**x, "source": x["source"].int()}, "int64"),
    (lambda x: {**x, "source": x["source"][:, :1]}, "source \\(S, B, T, K\\)"),
    (lambda x: {**x, "weight": x["weight"][:2]}, "weight \\(C, K\\)"),
])
def test_bad_tables_and_shapes_are_refused(change, message):
    x = inputs(3, 2, 9, 9, 5, 4, seed=6)
    with pytest.raises(ValueError, match=message):
        gathered_depthwise_conv(**change(x))
