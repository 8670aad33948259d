"""The compiled CPU selective scan (zoo.blocks.ssm.cpu_kernel) against the plain loop over time.

The kernel is built once per machine (about a minute; cached by torch.utils.cpp_extension). These
tests need a C++ compiler, like the kernel itself; without one they are skipped with that reason.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from spy import count_calls
from test_selective_scan import D_STATE, make_inputs

from zoo.blocks.ssm import Mamba, cpu_kernel, selective_scan
from zoo.blocks.ssm.reference import selective_scan_ref as loop_reference

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the CPU kernel with"
)

INPUT_DEPENDENT = ["batched", "groups1", "groups2"]
# Around the kernel's 64-position recomputation chunk: shorter, exactly one, one plus a bit, several.
LENGTHS = [1, 7, 64, 65, 200]


def gradients(fn, inputs: dict, seed: int) -> tuple:
    """Outputs, last state and the gradients of a fixed random projection of both, w.r.t. every input."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, state = fn(**leaves, delta_softplus=True, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=g, dtype=state.dtype)).sum()
    return (out, state, *torch.autograd.grad(loss, list(leaves.values())))


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("B_layout,C_layout", [(x, x) for x in INPUT_DEPENDENT] + [("batched", "groups2"), ("groups2", "groups1")])
def test_forward_and_gradients_match_loop(length, B_layout, C_layout):
    x = make_inputs(length, B_layout, C_layout, seed=length)
    got = gradients(cpu_kernel.selective_scan_compiled, x, seed=1)
    want = gradients(loop_reference, x, seed=1)
    names = ["out", "last state", *(f"gradient of {k}" for k in x)]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("d_state", [16, 32, 64])
@pytest.mark.parametrize("length", [7, 65])
def test_state_counts_compiled_as_constants_match_loop(d_state, length):
    """16, 32 and 64 states take the kernel's compile-time path (state_count.h: the channel's state, A, adjoint and
    gradient of A held in a local copy across a chunk); every other count the run-time one (the tests above)."""
    x = make_inputs(length, "groups2", "groups2", seed=d_state + length, d_state=d_state)
    got = gradients(cpu_kernel.selective_scan_compiled, x, seed=2)
    want = gradients(loop_reference, x, seed=2)
    names = ["out", "last state", *(f"gradient of {k}" for k in x)]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("d_state", [5, 32])
def test_float32_decay_is_exp_within_its_stated_error(d_state):
    """The kernels' own float32 exp (blocks/ssm/decay_exp.h), read off the last state of two steps: u = (1, 0),
    delta = 1, B = 1 give h_0 = 1 and h_1 = exp(A) as the kernel forms it, 2^(A log2 e) with the rate A log2 e
    rounded to float32 once per call. 2^y is within 1.7e-7 relative of exp2 of that rate and exactly 1 at 0; against
    exp(A) the rate's two roundings (log2 e, then the product) add |A| 2^-24 relative each. A spans [-87, 0] (every
    decay a scan meets: delta >= 0, A < 0), plus 0 itself."""
    channels = 64
    A = torch.cat([torch.zeros(1), -torch.rand(channels * d_state - 1, generator=torch.Generator().manual_seed(5)) * 87])
    A = A.reshape(channels, d_state)
    u = torch.tensor([1.0, 0.0]).expand(1, channels, 2)
    delta = torch.ones(1, channels, 2)
    B, C = torch.ones(1, d_state, 2), torch.zeros(1, d_state, 2)
    _, state = cpu_kernel.selective_scan_compiled(u, delta, A, B, C, return_last_state=True)
    rate = A * math.log2(math.e)  # float32, as the kernel forms it
    assert state[0, 0, 0] == 1.0
    assert ((state[0].double() - torch.exp2(rate.double())).abs() / torch.exp2(rate.double())).max() < 1.7e-7
    want = torch.exp(A.double())
    assert (((state[0].double() - want).abs() / want) <= 1.7e-7 + A.double().abs() * 2.0**-23).all()


def test_float32_decay_paths_agree_bit_for_bit():
    """On an AVX-512 CPU a channel's states go through the step 16 at a time with intrinsics and the remainder
    through the portable loop (scan_steps.h); both forms of the decay give the same states bit for bit
    (decay_exp.h), clamp included. States 16..19 of a 20-state scan (the portable loop) against the same states
    as 12..15 of a 16-state scan (all intrinsics); elsewhere both are the portable loop."""
    g = torch.Generator().manual_seed(11)
    u = torch.randn(2, 3, 40, generator=g)
    delta = torch.rand(2, 3, 40, generator=g) * 3
    A = -torch.rand(3, 20, generator=g) * 60  # decays down to 2^-259: the clamp at 2^-126 is reached
    B, C = torch.randn(2, 20, 40, generator=g), torch.randn(2, 20, 40, generator=g)
    _, all_states = cpu_kernel.selective_scan_compiled(u, delta, A, B, C, return_last_state=True)
    _, last_sixteen = cpu_kernel.selective_scan_compiled(u, delta, A[:, 4:], B[:, 4:], C[:, 4:], return_last_state=True)
    assert torch.equal(all_states[..., 16:], last_sixteen[..., 12:])


def test_strided_B_and_C_are_read_as_they_are():
    """B and C that are not contiguous (the Mamba layer's are slices of its x_proj output, stride 1 along n)."""
    x = make_inputs(70, "batched", "groups2", seed=9)

    def strided(fn):
        def call(**inputs):
            b, n, l = inputs["B"].shape
            rows = torch.cat([inputs["B"].new_zeros(b, l, 3), inputs["B"].transpose(1, 2)], -1)  # (b, l, 3 + n)
            B = rows[..., 3:].transpose(1, 2)
            C = inputs["C"].transpose(-1, -2).contiguous().transpose(-1, -2)
            assert B.stride() == (l * (3 + n), 1, 3 + n) and C.stride(-2) == 1
            return fn(**{**inputs, "B": B, "C": C})
        return call

    got = gradients(strided(cpu_kernel.selective_scan_compiled), x, seed=2)
    want = gradients(loop_reference, x, seed=2)
    for name, g, w in zip(["out", "last state", *(f"gradient of {k}" for k in x)], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels,length", [(37, 70), (16, 16), (3, 5)])
def test_time_major_u_z_and_output_gradient_are_read_in_place(channels, length, dtype):
    """u, z and the output's gradient as transposed views of time-major (b, l, d) tensors, as the Mamba layer hands
    them over: the kernel reads them a block at a time through its own transposes (16 x 16 in registers in float32
    on AVX-512, element by element at a block's edges and in float64) and gives the output and du in u's layout,
    dz in z's. 37 channels by 70 positions: whole 16 x 16 tiles, ragged edges and two 64-position chunks."""
    g = torch.Generator().manual_seed(channels + length)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = dict(u=rand(2, length, channels).transpose(1, 2), delta=rand(2, channels, length),
             A=-torch.rand(channels, 8, generator=g, dtype=torch.float64) * 2, B=rand(2, 8, length),
             C=rand(2, 8, length), D=rand(channels), z=rand(2, length, channels).transpose(1, 2), delta_bias=rand(channels))
    projection = rand(2, channels, length)
    leaves64 = {k: v.clone().requires_grad_() for k, v in x.items()}
    out64 = loop_reference(**leaves64, delta_softplus=True)
    want = [out64, *torch.autograd.grad((out64 * projection).sum(), list(leaves64.values()))]

    leaves = {k: (v.transpose(1, 2).to(dtype).contiguous().transpose(1, 2) if k in ("u", "z") else v.to(dtype))
              .requires_grad_() for k, v in x.items()}
    assert leaves["u"].stride() == (length * channels, 1, channels)
    out = cpu_kernel.selective_scan_compiled(**leaves, delta_softplus=True)
    assert out.stride() == leaves["u"].stride()  # the output in u's layout
    grad_out = projection.transpose(1, 2).to(dtype).contiguous().transpose(1, 2)  # a time-major gradient as well
    got = [out, *torch.autograd.grad(out, list(leaves.values()), grad_out)]
    assert got[1].stride() == leaves["u"].stride() and got[-2].stride() == leaves["z"].stride()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    for name, a, b in zip(["out", *(f"gradient of {k}" for k in x)], got, want):
        torch.testing.assert_close(a.double(), b, rtol=tolerance, atol=tolerance * max(1.0, b.abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


def test_softplus_on_both_sides_of_its_threshold_matches_loop():
    # The kernel forms softplus(delta + bias) itself (delta + bias unchanged above 20, as torch does): steps from
    # -30 to 30, some at the threshold to rounding.
    x = make_inputs(100, "batched", "batched", seed=4)
    gen = torch.Generator().manual_seed(5)
    x["delta"] = torch.empty(x["delta"].shape, dtype=torch.float64).uniform_(-30.0, 30.0, generator=gen)
    x["delta"][..., ::7] = 20.0 - x["delta_bias"].unsqueeze(-1)
    x["A"] = x["A"] * 0.01  # keep exp(delta * A) away from 0 for steps near 30
    got = gradients(cpu_kernel.selective_scan_compiled, x, seed=3)
    want = gradients(loop_reference, x, seed=3)
    for name, g, w in zip(["out", "last state", *(f"gradient of {k}" for k in x)], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("threads", [3, 4])
def test_gradients_with_more_threads_than_sequences(threads):
    """One sequence, one group of 4 channels, more threads: the backward splits the group's channels
    between tasks (3 threads: 2, 2 and 0 channels), each with its own dB/dC buffer; the sum equals the loop's."""
    x = make_inputs(70, "groups1", "groups1", seed=12)
    x = {k: v[:1] if k in ("u", "delta", "z", "B", "C") else v for k, v in x.items()}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = gradients(cpu_kernel.selective_scan_compiled, x, seed=2)
    finally:
        torch.set_num_threads(before)
    want = gradients(loop_reference, x, seed=2)
    for name, g, w in zip(["out", "last state", *(f"gradient of {k}" for k in x)], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("use_D,use_z,use_bias", [(False, False, False), (True, False, True), (False, True, False)])
def test_optional_arguments_and_no_softplus(use_D, use_z, use_bias):
    x = make_inputs(40, "groups2", "batched", seed=2)
    x["delta"], x["delta_bias"] = x["delta"].abs(), x["delta_bias"].abs()
    kwargs = dict(D=x["D"] if use_D else None, z=x["z"] if use_z else None, delta_bias=x["delta_bias"] if use_bias else None)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    torch.testing.assert_close(cpu_kernel.selective_scan_compiled(*args, **kwargs), loop_reference(*args, **kwargs),
                               rtol=1e-10, atol=1e-10)


def test_gradcheck():
    x = make_inputs(9, "groups2", "groups2", seed=3)
    names = list(x)

    def fn(*tensors):
        return cpu_kernel.selective_scan_compiled(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(fn, tuple(x[k].clone().requires_grad_() for k in names), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("d_state", [8, 20, 32])
def test_float32_against_float64_loop(d_state):
    # Realistic Mamba sizes; float32 accumulates rounding over 300 steps, hence the looser tolerance.
    g = torch.Generator().manual_seed(4)
    u, z = torch.randn(2, 3, 16, 300, generator=g, dtype=torch.float64)
    delta = torch.randn(3, 16, 300, generator=g, dtype=torch.float64)
    A = -torch.rand(16, d_state, generator=g, dtype=torch.float64) * 4
    B, C = torch.randn(2, 3, 2, d_state, 300, generator=g, dtype=torch.float64)
    expected, expected_state = loop_reference(u, delta, A, B, C, z=z, delta_softplus=True, return_last_state=True)
    out, state = cpu_kernel.selective_scan_compiled(u.float(), delta.float(), A.float(), B.float(), C.float(), z=z.float(),
                                                    delta_softplus=True, return_last_state=True)
    assert out.dtype == state.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state.double(), expected_state, rtol=1e-4, atol=1e-4)


def test_selective_scan_uses_the_kernel_only_when_asked(monkeypatch):
    calls = count_calls(monkeypatch, cpu_kernel, "selective_scan_compiled")
    x = make_inputs(20, "batched", "batched", seed=5)
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    pure = selective_scan(**x, delta_softplus=True)
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    torch.testing.assert_close(selective_scan(**x, delta_softplus=True), pure, rtol=1e-10, atol=1e-10)
    assert calls == [1]
    const = make_inputs(20, "const", "const", seed=5)  # time-invariant B, C: the pure path handles them
    selective_scan(**const, delta_softplus=True)
    assert calls == [1]


def test_mamba_layer_same_output_and_gradients_with_the_kernel(monkeypatch):
    torch.manual_seed(6)
    layer = Mamba(d_model=12, d_state=D_STATE, expand=2).double()
    x = torch.randn(2, 70, 12, dtype=torch.float64)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[0, :25] = False  # left padding

    def run() -> tuple:
        layer.zero_grad()
        out = layer(x, mask)
        (out**2).sum().backward()
        return (out, *(p.grad.clone() for p in layer.parameters()))

    calls = count_calls(monkeypatch, cpu_kernel, "projected_selective_scan_compiled")
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "0")
    pure = run()
    assert calls == []
    monkeypatch.setenv(cpu_kernel.KERNEL_ENV_VAR, "1")
    for got, want in zip(run(), pure):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert calls == [1]


def test_chunk_starts_are_kept_only_for_a_call_autograd_records(monkeypatch):
    """The forward keeps the states the backward needs, (b, d, l/64, n), only when a backward can follow."""
    kernel, kept = cpu_kernel.load("selective_scan"), []

    class Spy:
        def forward(self, *args):
            out = kernel.forward(*args)
            kept.append(out[2].numel() > 0)
            return out

        def backward(self, *args):
            return kernel.backward(*args)

    monkeypatch.setattr(cpu_kernel, "load", lambda name: Spy())
    x = make_inputs(100, "groups1", "groups1", seed=0)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    with torch.no_grad():
        cpu_kernel.selective_scan_compiled(**leaves)  # parameters that require grad, inference mode
    cpu_kernel.selective_scan_compiled(**x)  # nothing requires grad
    cpu_kernel.selective_scan_compiled(**leaves).sum().backward()
    assert kept == [False, False, True]
    assert all(v.grad is not None for v in leaves.values())


def test_float32_gradient_from_the_newest_position_only_matches_float64_loop():
    """A loss on the newest position alone (objective ``last``) leaves the adjoint decaying through strong decays,
    into float32's denormal range, which the kernel flushes to zero (flush_denormals.h): the gradients still match."""
    g = torch.Generator().manual_seed(5)
    u, z = torch.randn(2, 2, 8, 120, generator=g, dtype=torch.float64)
    delta = torch.randn(2, 8, 120, generator=g, dtype=torch.float64) + 1.0
    A = -torch.rand(8, 16, generator=g, dtype=torch.float64) * 30 - 2
    B, C = torch.randn(2, 2, 16, 120, generator=g, dtype=torch.float64)
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, z=z)

    def newest_gradients(fn, dtype):
        leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves, delta_softplus=True)
        return torch.autograd.grad(out[..., -1].sum(), list(leaves.values()))

    got = newest_gradients(cpu_kernel.selective_scan_compiled, torch.float32)
    want = newest_gradients(loop_reference, torch.float64)
    for name, g32, g64 in zip(inputs, got, want):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


def test_the_kernel_leaves_the_callers_denormals_alone():
    """The flush to zero holds inside the kernel's tasks only; the caller's arithmetic keeps denormal numbers."""
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0
    x = make_inputs(5, "batched", "batched", dtype=torch.float32)
    with torch.enable_grad():
        leaves = {k: v.requires_grad_() for k, v in x.items()}
        cpu_kernel.selective_scan_compiled(**leaves, delta_softplus=True).sum().backward()
    assert (tiny * 1.0).item() != 0.0 and (tiny / 2.0).item() != 0.0


def test_float32_padded_steps_keep_the_state_bit_for_bit():
    """A padded step (step size 0) decays by exp(0), which the kernels' float32 exp gives as exactly 1, and adds
    nothing, so padded steps between real ones change no bit of the state. The step sizes are given directly, and
    the outputs are compared to an ulp: softplus and the gate's sigmoid round apart by an ulp between the vector
    body of a loop over time and its scalar remainder, where the padding moves a position."""
    x = make_inputs(6, "batched", "batched", seed=9, dtype=torch.float32)
    x["delta"], x["delta_bias"] = x["delta"].abs(), torch.zeros_like(x["delta_bias"])
    keep = torch.tensor([True, True, True, False, False, False, True, True, True])
    padded = dict(x)
    for name in ("u", "delta", "z", "B", "C"):
        wide = torch.randn(*x[name].shape[:-1], 9)
        wide[..., keep] = x[name]
        padded[name] = wide
    padded["delta"][..., ~keep] = 0.0
    out, state = cpu_kernel.selective_scan_compiled(**x, return_last_state=True)
    out_padded, state_padded = cpu_kernel.selective_scan_compiled(**padded, return_last_state=True)
    assert torch.equal(state_padded, state)
    torch.testing.assert_close(out_padded[..., keep], out, rtol=2e-7, atol=0.0)
