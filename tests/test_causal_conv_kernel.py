"""The compiled CPU causal depthwise convolution (``causal_conv_cpu.cpp``) against a loop written from its
equation, values and every gradient:

    a[b, c, t] = bias[c] + sum_k w[c, k] * x[b, c, t - K + 1 + k]      (zero before position 0)
    y = silu(a) = a * sigmoid(a)                                       (or a itself)

float64 tolerance 1e-10 (the same sums in another order); float32 1e-5 against the float64 loop. The
kernel runs with 1 and 2 threads, on channels-last slices (how the Mamba layers hand it their input
projection) and time-major tensors alike, with lengths shorter than the kernel.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from spy import count_calls

from zoo.blocks.ssm import Mamba, Mamba2, cpu_kernel
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")


def conv_loop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool) -> torch.Tensor:
    """The equation above, one output value at a time."""
    batch, channels, length = x.shape
    taps = weight.shape[1]
    rows = []
    for b in range(batch):
        for c in range(channels):
            for t in range(length):
                a = bias[c] if bias is not None else x.new_zeros(())
                for k in range(taps):
                    if t - taps + 1 + k >= 0:
                        a = a + weight[c, k] * x[b, c, t - taps + 1 + k]
                rows.append(a * torch.sigmoid(a) if silu else a)
    return torch.stack(rows).reshape(batch, channels, length)


def inputs(batch: int, channels: int, length: int, taps: int, seed: int, bias: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, channels, length, generator=g, dtype=torch.float64),
        "weight": torch.randn(channels, taps, generator=g, dtype=torch.float64),
        "bias": torch.randn(channels, generator=g, dtype=torch.float64) if bias else None,
    }


def with_gradients(fn, x: dict, silu: bool, seed: int) -> list[torch.Tensor]:
    """The output and the gradients of a fixed random projection of it w.r.t. every given input."""
    leaves = {k: v.clone().requires_grad_() for k, v in x.items() if v is not None}
    out = fn(**{**x, **leaves}, silu=silu)
    g = torch.Generator().manual_seed(seed)
    projection = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return [out, *torch.autograd.grad((out * projection).sum(), list(leaves.values()))]


def assert_all_close(got: list, want: list, tolerance: float) -> None:
    for index, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g.double(), w, rtol=tolerance, atol=tolerance * max(1.0, w.abs().max().item()),
                                   msg=lambda m: f"output/gradient {index}: {m}")


SHAPES = [(2, 3, 9, 4), (1, 5, 2, 4), (3, 4, 1, 3), (2, 6, 70, 2)]  # (batch, channels, length, taps)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_loop(shape, silu, threads):
    x = inputs(*shape, seed=sum(shape))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = with_gradients(cpu_kernel.causal_conv_compiled, x, silu, seed=1)
    finally:
        torch.set_num_threads(before)
    assert_all_close(got, with_gradients(conv_loop, x, silu, seed=1), 1e-10)


@needs_compiler
def test_kernel_without_bias():
    x = inputs(2, 3, 8, 4, seed=5, bias=False)
    assert_all_close(with_gradients(cpu_kernel.causal_conv_compiled, x, True, seed=2),
                     with_gradients(conv_loop, x, True, seed=2), 1e-10)


@needs_compiler
@pytest.mark.parametrize("layout", ["channels-last slice", "time-major"])
def test_kernel_float32_and_layouts(layout):
    """float32 against the float64 loop; the input as a slice of a wider channels-last tensor (read in
    place) or a contiguous ``(B, C, L)`` tensor (copied to channels-last)."""
    x = inputs(3, 5, 12, 4, seed=3)
    x32 = {k: v.float() for k, v in x.items()}
    if layout == "channels-last slice":
        wide = torch.cat([x32["x"].transpose(1, 2), torch.randn(3, 12, 4)], -1)  # (B, L, C + 4)
        x32["x"] = wide[..., :5].transpose(1, 2)
        assert x32["x"].stride() == (12 * 9, 1, 9)
    got = with_gradients(cpu_kernel.causal_conv_compiled, x32, True, seed=4)
    assert all(g.dtype == torch.float32 for g in got)
    assert_all_close(got, with_gradients(conv_loop, x, True, seed=4), 1e-5)


def masked_loop(x, weight, bias, valid, silu):
    """The loop on the input zeroed where ``valid`` is False."""
    return conv_loop(x * valid.unsqueeze(1).to(x.dtype), weight, bias, silu)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("silu", [True, False])
def test_kernel_with_valid_matches_loop_on_masked_input(silu, threads):
    """With ``valid``, the kernel reads a position it marks False as zero (skipping its taps) and gives it no
    gradient: left padding, a hole inside, a sequence without a valid position."""
    x = inputs(3, 5, 13, 4, seed=8)
    valid = torch.ones(3, 13, dtype=torch.bool)
    valid[0, :6] = False
    valid[1, 7] = False
    valid[2] = False
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = with_gradients(lambda **k: cpu_kernel.causal_conv_compiled(**k, valid=valid), x, silu, seed=6)
    finally:
        torch.set_num_threads(before)
    want = with_gradients(lambda **k: masked_loop(**k, valid=valid), x, silu, seed=6)
    assert_all_close(got, want, 1e-10)
    assert (got[1].transpose(1, 2)[~valid] == 0).all()


@pytest.mark.parametrize("setting", ["0", "1"])
def test_dispatch_with_valid_matches_loop_on_masked_input(setting, monkeypatch):
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, setting)
    x = inputs(2, 3, 6, 4, seed=1)
    valid = torch.tensor([[False, False, True, True, True, True], [True, True, True, False, True, True]])
    out = causal_depthwise_conv1d(x["x"], x["weight"], x["bias"], activation="silu", valid=valid)
    torch.testing.assert_close(out, masked_loop(x["x"], x["weight"], x["bias"], valid, True), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("valid", [torch.ones(2, 6), torch.ones(2, 5, dtype=torch.bool)], ids=["float", "shape"])
def test_dispatch_names_a_bad_valid(valid):
    x = inputs(2, 3, 6, 4, seed=1)
    with pytest.raises(ValueError, match="valid must be a boolean \\(B, L\\)"):
        causal_depthwise_conv1d(x["x"], x["weight"], x["bias"], valid=valid)


@needs_compiler
def test_large_negative_inputs_give_zero_not_nan():
    """SiLU of a very negative value is 0 to far below float32's resolution (the kernel keeps exp's argument
    under 80 so it never overflows), and nothing is inf or NaN."""
    x = {"x": torch.full((1, 2, 3), -1e4), "weight": torch.ones(2, 4), "bias": torch.zeros(2)}
    out = with_gradients(cpu_kernel.causal_conv_compiled, x, True, seed=0)
    assert all(torch.isfinite(t).all() for t in out)
    assert out[0].abs().max() < 1e-25


@pytest.mark.parametrize("setting,expected", [("0", 0), ("1", 1)])
def test_dispatch_follows_the_kernel_switch(setting, expected, monkeypatch):
    calls = count_calls(monkeypatch, cpu_kernel, "causal_conv_compiled")
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, setting)
    x = inputs(2, 3, 6, 4, seed=0)
    out = causal_depthwise_conv1d(x["x"], x["weight"], x["bias"], activation="silu")
    assert len(calls) == expected
    torch.testing.assert_close(out, conv_loop(x["x"], x["weight"], x["bias"], True), rtol=1e-10, atol=1e-10)


@needs_compiler
@pytest.mark.parametrize("layer", [lambda: Mamba(8, d_state=4, d_conv=4, expand=2),
                                   lambda: Mamba2(16, d_state=8, headdim=4, expand=2, chunk_size=8)],
                         ids=["mamba", "mamba2"])
def test_layers_agree_with_and_without_the_kernel(layer, monkeypatch):
    """A whole Mamba / Mamba2 layer (masked, outputs and parameter gradients) is the same with the kernel on
    and off: the layers hand it their input projections as they are."""
    torch.manual_seed(0)
    block = layer().double()
    x = torch.randn(3, 11, block.d_model, dtype=torch.float64)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, :4] = False

    def run(setting: str) -> list[torch.Tensor]:
        monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, setting)
        block.zero_grad()
        out = block(x, mask)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        return [out.detach(), *(p.grad.clone() for p in block.parameters())]

    calls = count_calls(monkeypatch, cpu_kernel, "causal_conv_compiled")
    with_kernel = run("1")
    assert calls
    for got, want in zip(with_kernel, run("0")):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
