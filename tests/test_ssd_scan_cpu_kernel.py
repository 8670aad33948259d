"""The compiled CPU SSD scan (blocks.ssm.cpu_kernel.ssd_scan_compiled) against the plain loop over time.

Built once per machine like the selective-scan kernel; skipped only where no C++ compiler exists.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from spy import count_calls

from blocks.ssm import Mamba2, cpu_kernel, ssd_scan
from test_ssd_scan import loop_reference, make_inputs

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the CPU kernel with"
)

NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


def all_inputs(l: int, g: int, d_shape: str, seed: int) -> dict:
    h, p, n = 4, 3, 5
    x, dt, A, B, C = make_inputs(b=2, l=l, h=h, p=p, g=g, n=n, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    extra = dict(
        D=torch.randn(h if d_shape == "h" else (h, p), generator=gen, dtype=torch.float64),
        z=torch.randn(2, l, h, p, generator=gen, dtype=torch.float64),
        dt_bias=torch.randn(h, generator=gen, dtype=torch.float64) * 0.3,
        initial_states=torch.randn(2, h, p, n, generator=gen, dtype=torch.float64),
    )
    return dict(x=x, dt=dt, A=A, B=B, C=C, **extra)


def outputs_and_gradients(fn, inputs: dict, seed: int, **options) -> tuple:
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, final = fn(**leaves, **options)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=g, dtype=final.dtype)).sum()
    return (y, final, *torch.autograd.grad(loss, list(leaves.values())))


@pytest.mark.parametrize("l", [1, 7, 64, 65, 200])
@pytest.mark.parametrize("g", [1, 2])
def test_forward_and_gradients_match_loop(l, g):
    inputs = all_inputs(l, g, "h" if g == 1 else "hp", seed=l)
    options = dict(dt_softplus=True, dt_limit=(0.01, 3.0))
    got = outputs_and_gradients(cpu_kernel.ssd_scan_compiled, inputs, seed=1, **options)
    want = outputs_and_gradients(loop_reference, inputs, seed=1, **options)
    for name, a, b in zip(["y", "final state", *(f"gradient of {k}" for k in inputs)], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_without_optional_inputs_and_default_limit():
    x, dt, A, B, C = make_inputs(l=33, g=2, h=4, seed=3)  # raw dt, some negative: clamped to 0 by (0, inf)
    got_y, got_final = cpu_kernel.ssd_scan_compiled(x, dt, A, B, C)
    want_y, want_final = loop_reference(x, dt, A, B, C)
    torch.testing.assert_close(got_y, want_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_final, want_final, rtol=1e-10, atol=1e-10)


def test_gradcheck():
    inputs = all_inputs(6, 2, "hp", seed=4)

    def fn(*tensors):
        return cpu_kernel.ssd_scan_compiled(**dict(zip(inputs, tensors)), dt_softplus=True)

    assert torch.autograd.gradcheck(fn, tuple(v.clone().requires_grad_() for v in inputs.values()), eps=1e-6, atol=1e-6)


def test_float32_against_float64_loop():
    # Mamba2-like sizes; float32 accumulates rounding over 300 steps, hence the looser tolerance.
    x, dt, A, B, C = make_inputs(b=2, l=300, h=8, p=16, g=1, n=32, seed=5)
    want_y, want_final = loop_reference(x, dt, A, B, C, dt_softplus=True)
    y, final = cpu_kernel.ssd_scan_compiled(*(t.float() for t in (x, dt, A, B, C)), dt_softplus=True)
    assert y.dtype == final.dtype == torch.float32
    torch.testing.assert_close(y.double(), want_y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final.double(), want_final, rtol=1e-4, atol=1e-4)


def test_ssd_scan_uses_the_kernel_only_when_asked(monkeypatch):
    calls = count_calls(monkeypatch, cpu_kernel, "ssd_scan_compiled")
    x, dt, A, B, C = make_inputs(l=20, seed=6)
    monkeypatch.delenv(cpu_kernel.KERNEL_ENV_VAR, raising=False)
    pure = ssd_scan(x, dt, A, B, C, 8, dt_softplus=True)
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    torch.testing.assert_close(ssd_scan(x, dt, A, B, C, 8, dt_softplus=True), pure, rtol=1e-10, atol=1e-10)
    assert calls == [1]


def test_mamba2_layer_same_output_and_gradients_with_the_kernel(monkeypatch):
    torch.manual_seed(7)
    layer = Mamba2(d_model=16, d_state=8, headdim=8, expand=2, chunk_size=16).double()
    x = torch.randn(2, 70, 16, dtype=torch.float64)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[0, :25] = False  # left padding
    calls = count_calls(monkeypatch, cpu_kernel, "ssd_scan_compiled")

    def run() -> tuple:
        layer.zero_grad()
        out = layer(x, mask)
        (out**2).sum().backward()
        return (out, *(p.grad.clone() for p in layer.parameters()))

    monkeypatch.delenv(cpu_kernel.KERNEL_ENV_VAR, raising=False)
    pure = run()
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    for got, want in zip(run(), pure):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert calls == [1]
