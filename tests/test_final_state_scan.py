"""Short scans read at their last step (zoo.blocks.ssm.final_state_scan): the compiled CPU kernel and the
fallback through selective_scan against the step-by-step loop reference, values and every gradient.

float64 tolerance 1e-10 (the same recurrence); float32 1e-5 relative to each result's scale.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.final_state_scan import final_state_scan, final_state_scan_ref
from zoo.blocks.ssm.reference import selective_scan_ref

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")
NAMES = ["u", "delta", "A", "B", "C", "D"]


def make_inputs(rows: int, dim: int, steps: int, n: int, seed: int, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(rows, dim, steps, generator=g, dtype=dtype),
        "delta": torch.rand(rows, dim, steps, generator=g, dtype=dtype) * 1.5,
        "A": -torch.rand(dim, n, generator=g, dtype=dtype) * 3 - 0.1,
        "B": torch.randn(rows, steps, n, generator=g, dtype=dtype),
        "C": torch.randn(rows, n, generator=g, dtype=dtype),
        "D": torch.randn(dim, generator=g, dtype=dtype),
    }


def loop_reference(u, delta, A, B, C, D):
    """mamba-ssm's step-by-step reference with C repeated at every step, read at the last step."""
    steps = u.shape[-1]
    return selective_scan_ref(u, delta, A, B.transpose(1, 2), C.unsqueeze(-1).expand(-1, -1, steps), D=D)[..., -1]


def with_gradients(fn, inputs: dict, seed: int) -> tuple:
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out = fn(**leaves)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return (out, *torch.autograd.grad((out * weights).sum(), list(leaves.values()), allow_unused=True))


SHAPES = [(5, 3, 9, 4), (1, 1, 1, 2), (7, 6, 4, 32), (2, 4, 17, 3)]


@pytest.mark.parametrize("rows,dim,steps,n", SHAPES)
def test_fallback_matches_loop(rows, dim, steps, n):
    x = make_inputs(rows, dim, steps, n, seed=steps)
    for name, got, want in zip(["y", *NAMES], with_gradients(final_state_scan_ref, x, 1), with_gradients(loop_reference, x, 1)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=name)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows,dim,steps,n", SHAPES)
def test_compiled_kernel_matches_loop(rows, dim, steps, n, threads):
    x = make_inputs(rows, dim, steps, n, seed=rows + steps)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = with_gradients(cpu_kernel.final_state_scan_compiled, x, 2)
    finally:
        torch.set_num_threads(before)
    for name, g, w in zip(["y", *NAMES], got, with_gradients(loop_reference, x, 2)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@needs_compiler
def test_compiled_kernel_float32_strided_and_without_D():
    x = make_inputs(6, 5, 9, 8, seed=4)
    x["B"] = torch.cat([x["B"], x["B"]], -1)[..., :8]  # a slice, not contiguous
    assert not x["B"].is_contiguous()
    got = with_gradients(lambda D, **rest: cpu_kernel.final_state_scan_compiled(**rest), {k: v.float() for k, v in x.items()}, 3)
    want = with_gradients(lambda D, **rest: loop_reference(**rest, D=None), x, 3)
    for name, g, w in zip(["y", *NAMES], got, want):
        if name == "D":
            assert g is None and w is None
            continue
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5 * w.abs().max().item(), msg=name)


def test_dispatch_follows_the_kernel_switch(monkeypatch):
    x = make_inputs(2, 3, 4, 5, seed=1)
    calls = []
    monkeypatch.setattr(cpu_kernel, "final_state_scan_compiled", lambda *a, **k: calls.append(1) or final_state_scan_ref(*a, **k))
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    final_state_scan(**x)
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    final_state_scan(**x)
    assert calls == [1]


def test_mismatched_shapes_are_refused():
    x = make_inputs(2, 3, 4, 5, seed=1)
    with pytest.raises(ValueError, match="B \\(rows, S, n\\)"):
        final_state_scan(**{**x, "B": x["B"].transpose(1, 2)})
    with pytest.raises(ValueError, match="C \\(rows, n\\)"):
        final_state_scan(**{**x, "C": x["C"][:, :4]})
