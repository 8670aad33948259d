"""projected_selective_scan (blocks/ssm/projected_scan.py): the selective scan whose step the compiled kernel forms
itself from the Mamba layer's low-rank projection, ``valid * softplus(weight @ low + bias)``, against the plain loop
over time (zoo.blocks.ssm.reference) given that step whole, values and every gradient (float64, 1e-10: the same
sums in another order), and the pure path (the step formed with PyTorch operations) against the kernel.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from spy import count_calls

from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm.projected_scan import projected_selective_scan
from zoo.blocks.ssm.reference import selective_scan_ref as loop_reference

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                    reason="no C++ compiler to build the CPU kernel with")

BATCH, DIM, RANK = 3, 6, 3


def make_inputs(length: int, d_state: int, groups: int, seed: int, dtype=torch.float64) -> dict:
    """The scan's inputs with ``low``, ``B`` and ``C`` as transposed slices of one time-major projection, as the
    Mamba layer hands them over, and ``valid`` with padding on the left and a hole inside."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    projection = rand(BATCH, length, RANK + 2 * groups * d_state)
    valid = torch.ones(BATCH, length, dtype=torch.bool)
    valid[0, : length // 2] = False
    valid[2, length // 3] = False
    return dict(u=rand(BATCH, DIM, length), projection=projection, weight=rand(DIM, RANK),
                A=-torch.rand(DIM, d_state, generator=g, dtype=dtype) * 2, D=rand(DIM), z=rand(BATCH, DIM, length),
                delta_bias=rand(DIM), valid=valid, groups=groups, d_state=d_state)


def split(projection: torch.Tensor, groups: int, d_state: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``low (b, R, l)``, ``B``, ``C`` ``(b, g, n, l)``: views of the ``(b, l, R + 2 g n)`` projection."""
    batch, length, _ = projection.shape
    low, B, C = projection.split([RANK, groups * d_state, groups * d_state], dim=-1)
    B, C = (t.reshape(batch, length, groups, d_state).permute(0, 2, 3, 1) for t in (B, C))
    return low.transpose(1, 2), B, C


def through_loop(u, projection, weight, A, D, z, delta_bias, valid, groups, d_state):
    """The loop reference given the whole step: the raw step ``weight @ low``, lowest where not valid (whose
    softplus, and its slope, is exactly 0)."""
    low, B, C = split(projection, groups, d_state)
    delta = (weight @ low).masked_fill(~valid.unsqueeze(1), torch.finfo(u.dtype).min)
    return loop_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)


def projected(u, projection, weight, A, D, z, delta_bias, valid, groups, d_state):
    low, B, C = split(projection, groups, d_state)
    return projected_selective_scan(u, low, weight, A, B, C, D, z, delta_bias, valid)


def outputs_and_gradients(fn, x: dict, seed: int) -> list[torch.Tensor]:
    tensors = {k: v for k, v in x.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    out = fn(**{**x, **leaves})
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)).sum()
    return [out, *torch.autograd.grad(loss, list(leaves.values()))]


@needs_compiler
@pytest.mark.parametrize("length", [1, 9, 64, 65, 150])  # around the kernel's 64-position chunk
@pytest.mark.parametrize("d_state,groups", [(32, 1), (5, 2)])  # a compile-time state count, a run-time one
def test_kernel_matches_loop(length, d_state, groups, monkeypatch):
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    x = make_inputs(length, d_state, groups, seed=length + d_state)
    calls = count_calls(monkeypatch, cpu_kernel, "projected_selective_scan_compiled")
    got = outputs_and_gradients(projected, x, seed=1)
    assert calls == [1]
    want = outputs_and_gradients(through_loop, x, seed=1)
    names = ["out", "gradient of u", "gradient of projection", "gradient of weight", "gradient of A", "gradient of D",
             "gradient of z", "gradient of delta_bias"]
    assert len(got) == len(names)
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")


@needs_compiler
def test_float32_kernel_matches_float64_loop(monkeypatch):
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    x = make_inputs(70, 32, 1, seed=4)
    want = outputs_and_gradients(through_loop, x, seed=2)
    x32 = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in x.items()}
    got = outputs_and_gradients(projected, x32, seed=2)
    for index, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4 * max(1.0, w.abs().max().item()),
                                   msg=lambda m: f"output/gradient {index}: {m}")


def test_pure_path_matches_loop(monkeypatch):
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    x = make_inputs(20, 4, 2, seed=7)
    calls = count_calls(monkeypatch, cpu_kernel, "projected_selective_scan_compiled")
    got = outputs_and_gradients(projected, x, seed=3)
    assert calls == []
    for g, w in zip(got, outputs_and_gradients(through_loop, x, seed=3)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_padded_positions_leave_the_state_alone(monkeypatch):
    """A step that is not valid neither decays the state nor adds to it: the real positions' outputs are those of
    the sequence without the padding."""
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    x = make_inputs(12, 8, 1, seed=2)
    x["valid"][:] = True
    x["valid"][:, :5] = False
    out = projected(**x)
    real = {**x, "u": x["u"][..., 5:], "projection": x["projection"][:, 5:], "z": x["z"][..., 5:],
            "valid": x["valid"][:, 5:]}
    torch.testing.assert_close(out[..., 5:], projected(**real), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("change,message", [
    (dict(weight=torch.zeros(DIM, RANK + 1, dtype=torch.float64)), "low \\(b, R, l\\) and weight \\(d, R\\)"),
    (dict(valid=torch.ones(BATCH, 7)), "valid must be a boolean"),
    (dict(valid=torch.ones(BATCH, 6, dtype=torch.bool)), "valid must be a boolean"),
])
def test_bad_shapes_are_named(change, message):
    x = {**make_inputs(7, 4, 1, seed=0), **change}
    with pytest.raises(ValueError, match=message):
        projected(**x)
