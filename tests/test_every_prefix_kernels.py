"""The two pieces of SIGMA's every-prefix flipped scan, each in PyTorch and in its compiled CPU kernel,
against loops written from the equations, values and every gradient:

* ``final_state_scan`` (short scans read at their last step) against mamba-ssm's step-by-step
  reference with C repeated at every step;
* ``decayed_prefix_readout`` against a double loop over (position, earlier position).

float64 tolerance 1e-10 (the same sums in another order); float32 1e-5 relative to each result's
scale. The kernels also run with 1 and 2 threads (their backward passes split the work).
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

import pytest
import torch
from spy import count_calls

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.decayed_prefix import decayed_prefix_readout, decayed_prefix_readout_ref
from zoo.blocks.ssm.final_state_scan import final_state_scan, final_state_scan_ref, projected_final_state_scan
from zoo.blocks.ssm.reference import selective_scan_ref

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")


def scan_inputs(rows: int, dim: int, steps: int, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(rows, dim, steps, generator=g, dtype=torch.float64),
        "delta": torch.rand(rows, dim, steps, generator=g, dtype=torch.float64) * 1.5,
        "A": -torch.rand(dim, n, generator=g, dtype=torch.float64) * 3 - 0.1,
        "B": torch.randn(rows, steps, n, generator=g, dtype=torch.float64),
        "C": torch.randn(rows, n, generator=g, dtype=torch.float64),
        "D": torch.randn(dim, generator=g, dtype=torch.float64),
    }


def scan_loop(u, delta, A, B, C, D=None):
    return selective_scan_ref(u, delta, A, B.transpose(1, 2), C.unsqueeze(-1).expand(-1, -1, u.shape[-1]), D=D)[..., -1]


def readout_inputs(batch: int, length: int, dim: int, n: int, seed: int) -> dict:
    """Shapes and signs as in SIGMA: steps positive, ``before``/``after`` sums of steps, ``A`` negative."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.rand(batch, length, dim, generator=g, dtype=torch.float64) * 0.5
    return {
        "before": steps.cumsum(1) - steps,
        "w": torch.randn(batch, length, dim, generator=g, dtype=torch.float64),
        "B": torch.randn(batch, length, n, generator=g, dtype=torch.float64),
        "A": -torch.rand(dim, n, generator=g, dtype=torch.float64) * 2 - 0.1,
        "after": torch.rand(batch, length, dim, generator=g, dtype=torch.float64) * 2,
        "C": torch.randn(batch, length, n, generator=g, dtype=torch.float64),
    }


def readout_loop(before, w, B, A, after, C):
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


# name: (inputs, loop, PyTorch form, compiled, dispatching function, shapes)
KERNELS = {
    "final_state_scan": (scan_inputs, scan_loop, final_state_scan_ref, "final_state_scan_compiled", final_state_scan,
                         [(5, 3, 9, 4), (1, 1, 1, 2), (7, 6, 4, 32), (2, 4, 17, 3), (3, 5, 6, 16)]),
    "decayed_prefix": (readout_inputs, readout_loop, decayed_prefix_readout_ref, "decayed_prefix_compiled",
                       decayed_prefix_readout, [(3, 9, 5, 4), (1, 1, 3, 2), (2, 17, 8, 32), (1, 6, 1, 3), (2, 7, 3, 64)]),
}
CASES = [(kernel, shape) for kernel, spec in KERNELS.items() for shape in spec[5]]


def with_gradients(fn: Callable, inputs: dict, seed: int) -> tuple:
    """The output and the gradients of a fixed random projection of it w.r.t. every input (None where unused)."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return (out, *torch.autograd.grad((out * weights).sum(), list(leaves.values()), allow_unused=True))


def assert_all_close(got: tuple, want: tuple, names: list[str], relative: float) -> None:
    for name, g, w in zip(["out", *names], got, want):
        torch.testing.assert_close(g.double(), w, rtol=relative, atol=relative * max(1.0, w.abs().max().item()), msg=name)


@pytest.mark.parametrize("kernel,shape", CASES)
def test_pytorch_form_matches_loop(kernel, shape):
    make, loop, pytorch_form, *_ = KERNELS[kernel]
    x = make(*shape, seed=sum(shape))
    assert_all_close(with_gradients(pytorch_form, x, 1), with_gradients(loop, x, 1), list(x), 1e-10)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kernel,shape", CASES)
def test_compiled_kernel_matches_loop(kernel, shape, threads):
    make, loop, _, compiled, *_ = KERNELS[kernel]
    x = make(*shape, seed=sum(shape) + 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = with_gradients(getattr(cpu_kernel, compiled), x, 2)
    finally:
        torch.set_num_threads(before)
    assert_all_close(got, with_gradients(loop, x, 2), list(x), 1e-10)


@needs_compiler
@pytest.mark.parametrize("states", [32, 20])
@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_kernel_float32_and_strided_inputs(kernel, states):
    """float32 (the training dtype) against the float64 loop; inputs that are slices, not contiguous. 32 states
    take the compile-time size (on AVX-512, 16-state blocks of intrinsics), 20 a block and a remainder."""
    make, loop, _, compiled, _, shapes = KERNELS[kernel]
    x = make(*shapes[2][:-1], states, seed=7)
    wide = {k: torch.cat([v, v], -1)[..., : v.shape[-1]] for k, v in x.items()}
    assert not wide["B"].is_contiguous() and not wide["C"].is_contiguous()
    got = with_gradients(getattr(cpu_kernel, compiled), {k: v.float() for k, v in wide.items()}, 3)
    assert all(g.dtype == torch.float32 for g in got)
    assert_all_close(got, with_gradients(loop, x, 3), list(x), 1e-5)


@needs_compiler
@pytest.mark.parametrize("layouts", [("time-major", "time-major"), ("time-major", "contiguous"), ("contiguous", "time-major")])
def test_final_state_scan_reads_u_and_delta_through_their_strides(layouts):
    """u and delta stored (rows, S, dim), as the projections give them when scoring, read without a copy, each in
    its own layout; their gradients too."""
    x = scan_inputs(6, 5, 7, 32, seed=11)
    laid = dict(x)
    for name, layout in zip(("u", "delta"), layouts):
        if layout == "time-major":
            laid[name] = x[name].transpose(1, 2).contiguous().transpose(1, 2)
            assert not laid[name].is_contiguous()
    got = with_gradients(cpu_kernel.final_state_scan_compiled, laid, 4)
    assert_all_close(got, with_gradients(scan_loop, x, 4), list(x), 1e-10)


@needs_compiler
def test_final_state_scan_with_steps_of_zero_delta():
    """Steps whose delta is exactly 0 (a scoring batch's padded positions, leading or not) leave the state as it is:
    the forward skips them; values and every gradient as the loop's."""
    x = scan_inputs(5, 6, 12, 32, seed=12)
    zero = torch.rand(5, 1, 12, generator=torch.Generator().manual_seed(3)) < 0.4
    zero[:2, :, :7] = True  # two rows start with seven padded steps
    x["delta"] = x["delta"].masked_fill(zero, 0.0)
    assert_all_close(with_gradients(cpu_kernel.final_state_scan_compiled, x, 6), with_gradients(scan_loop, x, 6),
                     list(x), 1e-10)


@needs_compiler
def test_final_state_scan_without_D():
    x = scan_inputs(6, 5, 9, 8, seed=4)
    x.pop("D")
    assert_all_close(with_gradients(cpu_kernel.final_state_scan_compiled, x, 5), with_gradients(scan_loop, x, 5),
                     list(x), 1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
def test_dispatch_follows_the_kernel_switch(kernel, monkeypatch):
    make, _, pytorch_form, compiled, dispatch, shapes = KERNELS[kernel]
    x = make(*shapes[0], seed=1)
    calls = []
    monkeypatch.setattr(cpu_kernel, compiled, lambda *a, **k: calls.append(1) or pytorch_form(*a, **k))
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    dispatch(**x)
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    dispatch(**x)
    assert calls == [1]


@pytest.mark.parametrize("kernel,field,cut,message", [
    ("final_state_scan", "B", lambda t: t.transpose(1, 2), "B \\(rows, S, n\\)"),
    ("final_state_scan", "C", lambda t: t[:, :3], "C \\(rows, n\\)"),
    ("decayed_prefix", "A", lambda t: t[:, :3], "A \\(e, n\\)"),
    ("decayed_prefix", "after", lambda t: t[:, :4], "one \\(b, l, e\\) shape"),
])
def test_mismatched_shapes_are_refused(kernel, field, cut, message):
    make, _, _, _, dispatch, shapes = KERNELS[kernel]
    x = make(*shapes[0], seed=1)
    with pytest.raises(ValueError, match=message):
        dispatch(**{**x, field: cut(x[field])})


def scan_loop_with_extra(u, delta, A, B, C, D, extra, at):
    """``extra`` as a step of its own with no input (u and B zero) just before step ``at``, then the loop."""
    def inserted(steps, new, dim):
        return torch.cat([steps.narrow(dim, 0, at), new, steps.narrow(dim, at, steps.shape[dim] - at)], dim)
    return scan_loop(inserted(u, torch.zeros_like(u[..., :1]), -1), inserted(delta, extra.unsqueeze(-1), -1), A,
                     inserted(B, torch.zeros_like(B[:, :1]), 1), C, D)


@pytest.mark.parametrize("form", ["pytorch", pytest.param("compiled", marks=needs_compiler)])
@pytest.mark.parametrize("at", [0, 3, 8])
@pytest.mark.parametrize("states", [32, 20])
def test_final_state_scan_extra_decay_is_a_step_without_input(form, at, states):
    """``extra`` folded into step ``at``'s decay equals a step of that size with no input before it, values and
    every gradient (extra's included); some rows' step ``at`` has delta 0 (a step the forward pass may skip only
    when extra is 0 too), some rows' extra is 0."""
    x = scan_inputs(6, 5, 9, states, seed=13 + at)
    x["extra"] = torch.rand(6, 5, generator=torch.Generator().manual_seed(at), dtype=torch.float64) * 4
    x["delta"][:2, :, at] = 0.0
    x["extra"][1:3] = 0.0
    fn = final_state_scan_ref if form == "pytorch" else cpu_kernel.final_state_scan_compiled
    got = with_gradients(lambda **t: fn(**t, extra_at=at), x, 8)
    assert_all_close(got, with_gradients(lambda **t: scan_loop_with_extra(**t, at=at), x, 8), list(x), 1e-10)
    if form == "compiled":
        x32 = {k: v.float() for k, v in x.items()}
        assert_all_close(with_gradients(lambda **t: fn(**t, extra_at=at), x32, 8),
                         with_gradients(lambda **t: scan_loop_with_extra(**t, at=at), x, 8), list(x), 1e-5)


def test_final_state_scan_refuses_a_misshapen_extra():
    x = scan_inputs(4, 3, 5, 8, seed=1)
    with pytest.raises(ValueError, match="extra \\(rows, e\\)"):
        final_state_scan(**x, extra=torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="0 <= extra_at < 5"):
        final_state_scan(**x, extra=torch.zeros(4, 3, dtype=torch.float64), extra_at=5)


def projected_inputs(rows: int, steps: int, dim: int, n: int, rank: int, seed: int) -> dict:
    """Scoring's inputs: ``u`` time-major, the step's low-rank input a slice of a wider projection, padding on the left
    of one row and a hole in another."""
    g = torch.Generator().manual_seed(seed)
    projection = torch.randn(rows, steps, rank + n, generator=g, dtype=torch.float64)
    valid = torch.ones(rows, steps, dtype=torch.bool)
    valid[0, : steps // 2] = False
    valid[-1, steps // 3] = False
    return {"u": torch.randn(rows, steps, dim, generator=g, dtype=torch.float64).transpose(1, 2),
            "low": projection[..., :rank], "weight": torch.randn(dim, rank, generator=g, dtype=torch.float64),
            "bias": torch.randn(dim, generator=g, dtype=torch.float64), "valid": valid,
            "A": -torch.rand(dim, n, generator=g, dtype=torch.float64) * 3 - 0.1, "B": projection[..., rank:],
            "C": torch.randn(rows, n, generator=g, dtype=torch.float64),
            "D": torch.randn(dim, generator=g, dtype=torch.float64)}


def projected_loop(u, low, weight, bias, valid, A, B, C, D):
    """The step written out, ``valid * softplus(low weight^T + bias)``, then the loop over time."""
    delta = torch.nn.functional.softplus(low @ weight.T + bias) * valid.unsqueeze(-1)
    return scan_loop(u, delta.transpose(1, 2), A, B, C, D)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps,n", [(9, 32), (70, 7)])
def test_projected_final_state_scan_for_inference_matches_loop(steps, n, dtype, monkeypatch):
    """Without gradients the compiled kernel forms the steps a row at a time (no softplus at padded positions)."""
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    x = projected_inputs(5, steps, 20, n, 4, seed=steps + n)
    calls = count_calls(monkeypatch, cpu_kernel, "projected_final_state_scan_compiled")
    with torch.no_grad():
        got = projected_final_state_scan(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in x.items()})
    assert calls == [1] and got.dtype == dtype
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), projected_loop(**x), rtol=tolerance, atol=tolerance)


def test_projected_final_state_scan_with_gradients_matches_loop(monkeypatch):
    """With gradients wanted it forms the steps with projected_softplus and runs final_state_scan."""
    x = projected_inputs(3, 11, 6, 5, 3, seed=1)
    calls = count_calls(monkeypatch, cpu_kernel, "projected_final_state_scan_compiled")
    leaves = {k: v.clone().requires_grad_() for k, v in x.items() if v.is_floating_point()}
    got = projected_final_state_scan(**{**x, **leaves})
    assert calls == []
    want = projected_loop(**{**x, **leaves})
    grad = torch.randn(got.shape, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for name, a, b in zip(leaves, torch.autograd.grad(got, list(leaves.values()), grad),
                          torch.autograd.grad(want, list(leaves.values()), grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"gradient of {name}: {m}")


def test_projected_final_state_scan_refuses_a_misshapen_valid():
    x = projected_inputs(3, 11, 6, 5, 3, seed=1)
    with pytest.raises(ValueError, match="valid must be \\(rows, S\\)"):
        projected_final_state_scan(**{**x, "valid": x["valid"][:, 1:]})
