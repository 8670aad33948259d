"""The compiled CPU SSD scan (zoo.blocks.ssm.cpu_kernel.ssd_scan_compiled) against the plain loop over time.

Built once per machine like the selective-scan kernel; skipped only where no C++ compiler exists.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from spy import count_calls

from test_ssd_scan import make_inputs

from zoo.blocks.ssm import Mamba2, cpu_kernel, ssd_scan
from zoo.blocks.ssm.reference import ssd_scan_ref as loop_reference
from zoo.blocks.ssm.ssd import discretize_dt

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the CPU kernel with"
)

NAMES = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]


def all_inputs(l: int, g: int, d_shape: str, seed: int, p: int = 3, n: int = 5) -> dict:
    h = 4
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
    g = torch.Generator().manual_seed(seed)  # float64 weights, so float32 runs get the same ones
    loss = (y * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=g, dtype=torch.float64).to(final.dtype)).sum()
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


@pytest.mark.parametrize("p, n", [(16, 16), (32, 32), (64, 64), (16, 128), (8, 64), (8, 32)])
def test_head_and_state_sizes_the_kernel_specialises_match_loop(p, n):
    # The kernel has compile-time variants for head sizes 8/16/32/64 (forward) and state sizes 16/32/64/128
    # (backward); (8, 32) is CNN-Mamba's Mamba2 (head size 8, 32 states).
    inputs = all_inputs(70, 2, "hp", seed=p + n, p=p, n=n)
    got = outputs_and_gradients(cpu_kernel.ssd_scan_compiled, inputs, seed=2, dt_softplus=True)
    want = outputs_and_gradients(loop_reference, inputs, seed=2, dt_softplus=True)
    for name, a, b in zip(["y", "final state", *(f"gradient of {k}" for k in inputs)], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("options", [dict(dt_softplus=True, dt_limit=(0.5, 0.9)), dict(dt_limit=(0.0, 0.6))])
def test_active_dt_limits_match_loop(options):
    """Limits that clamp many steps at both ends (clamped steps pass no gradient to dt), with and without softplus."""
    inputs = all_inputs(40, 2, "h", seed=8)
    step = discretize_dt(inputs["dt"], inputs["dt_bias"], options.get("dt_softplus", False), options["dt_limit"])
    assert (step == options["dt_limit"][0]).float().mean() > 0.1 and (step == options["dt_limit"][1]).float().mean() > 0.1
    got = outputs_and_gradients(cpu_kernel.ssd_scan_compiled, inputs, seed=2, **options)
    want = outputs_and_gradients(loop_reference, inputs, seed=2, **options)
    for name, a, b in zip(["y", "final state", *(f"gradient of {k}" for k in inputs)], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_softplus_on_both_sides_of_its_threshold_matches_loop():
    # The kernel forms softplus(dt + dt_bias) itself (dt + dt_bias unchanged above 20, as torch does): raw steps
    # from -30 to 30, some exactly at the threshold.
    inputs = all_inputs(100, 2, "h", seed=12)
    gen = torch.Generator().manual_seed(13)
    inputs["dt"] = torch.empty(inputs["dt"].shape, dtype=torch.float64).uniform_(-30.0, 30.0, generator=gen)
    inputs["dt"][:, ::7] = 20.0 - inputs["dt_bias"]
    inputs["A"] = inputs["A"] * 0.01  # keep exp(dt * A) away from 0 for steps near 30
    got = outputs_and_gradients(cpu_kernel.ssd_scan_compiled, inputs, seed=5, dt_softplus=True)
    want = outputs_and_gradients(loop_reference, inputs, seed=5, dt_softplus=True)
    for name, a, b in zip(["y", "final state", *(f"gradient of {k}" for k in inputs)], got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_gradients_through_the_final_state_only():
    """No gradient reaches y (the kernel's backward gets no dy), only the final state."""
    inputs = {k: v for k, v in all_inputs(30, 1, "h", seed=10).items() if k not in ("D", "z")}

    def gradients(fn) -> tuple:
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        _, final = fn(**leaves, dt_softplus=True)
        weight = torch.randn(final.shape, generator=torch.Generator().manual_seed(3), dtype=final.dtype)
        # The final state does not depend on C: the loop gives None (materialised as zeros), the kernel zeros.
        return torch.autograd.grad((final * weight).sum(), list(leaves.values()), allow_unused=True,
                                   materialize_grads=True)

    for name, a, b in zip(inputs, gradients(cpu_kernel.ssd_scan_compiled), gradients(loop_reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")


@pytest.mark.parametrize("threads", [3, 4])
def test_gradients_with_more_threads_than_sequences(threads):
    """One sequence, one group, more threads: the backward splits the group's 4 heads between tasks
    (3 threads: splits of 2, 2 and 0 heads), each with its own dB/dC buffer; the sum equals the loop's."""
    inputs = all_inputs(70, 1, "hp", seed=11)
    inputs = {k: v[:1] if k in ("x", "dt", "B", "C", "z", "initial_states") else v for k, v in inputs.items()}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert cpu_kernel._splits(4, 1) == min(4, threads)
        got = outputs_and_gradients(cpu_kernel.ssd_scan_compiled, inputs, seed=4, dt_softplus=True)
    finally:
        torch.set_num_threads(before)
    want = outputs_and_gradients(loop_reference, inputs, seed=4, dt_softplus=True)
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


def test_float32_gradients_against_float64_loop():
    # The float32 instantiation of the backward: gradients of dt, A, B and C sum over up to 150 steps
    # and the heads of a group in float32, hence 1e-3 (the float64 tests above hold 1e-10).
    inputs = all_inputs(150, 2, "hp", seed=12)
    want = outputs_and_gradients(loop_reference, inputs, seed=5, dt_softplus=True)
    got = outputs_and_gradients(cpu_kernel.ssd_scan_compiled, {k: v.float() for k, v in inputs.items()}, seed=5,
                                dt_softplus=True)
    for name, a, b in zip(["y", "final state", *(f"gradient of {k}" for k in inputs)], got, want):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-3, msg=name)


def test_ssd_scan_uses_the_kernel_only_when_asked(monkeypatch):
    calls = count_calls(monkeypatch, cpu_kernel, "ssd_scan_compiled")
    x, dt, A, B, C = make_inputs(l=20, seed=6)
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    pure = ssd_scan(x, dt, A, B, C, 8, dt_softplus=True)
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    torch.testing.assert_close(ssd_scan(x, dt, A, B, C, 8, dt_softplus=True), pure, rtol=1e-10, atol=1e-10)
    assert calls == [1]
    init = torch.randn(2, 4, 3, 5, dtype=torch.float64)  # an empty sequence keeps the pure path: y empty, state kept
    y, final = ssd_scan(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], 8, initial_states=init, return_final_states=True)
    assert calls == [1] and y.shape == (2, 0, 4, 3) and torch.equal(final, init)


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

    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    pure = run()
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    for got, want in zip(run(), pure):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert calls == [1]
