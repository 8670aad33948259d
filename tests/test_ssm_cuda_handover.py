"""The hand-over to mamba-ssm / causal-conv1d on CUDA, checked on CPU.

The CUDA comparison tests (``test_matches_mamba_ssm_*``) need a GPU and the real packages. What is
this project's own code on that path — deciding when to hand over, and passing every argument to
the right parameter — is checked here with stand-ins that have exactly the upstream signatures
(written from mamba-ssm's ``ops/selective_scan_interface.py`` and ``ops/triton/ssd_combined.py`` and
causal-conv1d's ``causal_conv1d_interface.py``), installed as those modules, and tensors that report
``is_cuda``.
"""

from __future__ import annotations

import inspect
import math
import sys
from types import ModuleType

import pytest
import torch

from zoo.blocks.ssm import _dispatch
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.ssm.ssd import ssd_scan


class CudaLooking(torch.Tensor):
    """A CPU tensor that says it is on CUDA, so the dispatch decision takes the CUDA branch."""

    @property
    def is_cuda(self) -> bool:
        return True


def on_cuda(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(CudaLooking)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    raise AssertionError("replaced by a recording stand-in")


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                              cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False,
                              return_varlen_states=False):
    raise AssertionError("replaced by a recording stand-in")


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    raise AssertionError("replaced by a recording stand-in")


UPSTREAM = {
    "mamba_ssm.ops.selective_scan_interface": selective_scan_fn,
    "mamba_ssm.ops.triton.ssd_combined": mamba_chunk_scan_combined,
    "causal_conv1d": causal_conv1d_fn,
}


@pytest.fixture
def upstream(monkeypatch):
    """Install recording stand-ins as the upstream modules; return {function name: list of bound calls}."""
    calls: dict[str, list[dict]] = {}
    for module_name, signature_of in UPSTREAM.items():
        signature = inspect.signature(signature_of)
        name = signature_of.__name__
        calls[name] = []

        def record(*args, _signature=signature, _name=name, **kwargs):
            bound = _signature.bind(*args, **kwargs)  # raises TypeError on a wrong name or too many arguments
            bound.apply_defaults()
            calls[_name].append(dict(bound.arguments))
            return ("result of", _name)

        module = ModuleType(module_name)
        setattr(module, name, record)
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.delenv(_dispatch.PURE_ENV_VAR, raising=False)
    _dispatch.optional_function.cache_clear()
    yield calls
    _dispatch.optional_function.cache_clear()


def test_hand_over_only_when_every_tensor_is_on_cuda_and_not_forced_pure(upstream, monkeypatch):
    cuda, cpu = on_cuda(torch.zeros(1)), torch.zeros(1)
    assert _dispatch.use_cuda_kernels(cuda, None, cuda)
    assert not _dispatch.use_cuda_kernels(cuda, cpu)
    assert not _dispatch.use_cuda_kernels(None)
    monkeypatch.setenv(_dispatch.PURE_ENV_VAR, "1")
    assert not _dispatch.use_cuda_kernels(cuda, cuda)


def test_no_hand_over_when_mamba_ssm_does_not_import(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm.ops.selective_scan_interface", None)  # import raises
    monkeypatch.delenv(_dispatch.PURE_ENV_VAR, raising=False)
    _dispatch.optional_function.cache_clear()
    try:
        assert not _dispatch.use_cuda_kernels(on_cuda(torch.zeros(1)))
    finally:
        _dispatch.optional_function.cache_clear()


def test_selective_scan_passes_every_argument_to_selective_scan_fn(upstream):
    b, d, n, l = 2, 3, 4, 5
    args = {"u": torch.randn(b, d, l), "delta": torch.randn(b, d, l), "A": -torch.rand(d, n), "B": torch.randn(b, n, l),
            "C": torch.randn(b, 1, n, l), "D": torch.randn(d), "z": torch.randn(b, d, l), "delta_bias": torch.randn(d)}
    args = {k: on_cuda(v) for k, v in args.items()}
    result = selective_scan(**args, delta_softplus=True, return_last_state=True)
    assert result == ("result of", "selective_scan_fn")
    (call,) = upstream["selective_scan_fn"]
    for name, tensor in args.items():
        assert call[name] is tensor, name
    assert call["delta_softplus"] is True and call["return_last_state"] is True


def test_selective_scan_stays_on_the_pure_path_for_cpu_tensors(upstream):
    b, d, n, l = 1, 2, 3, 4
    selective_scan(torch.randn(b, d, l), torch.randn(b, d, l), -torch.rand(d, n), torch.randn(b, n, l), torch.randn(b, n, l))
    assert upstream["selective_scan_fn"] == []


def test_ssd_scan_passes_every_argument_to_mamba_chunk_scan_combined(upstream):
    b, l, h, p, g, n = 2, 6, 4, 3, 2, 5
    args = {"x": torch.randn(b, l, h, p), "dt": torch.randn(b, l, h), "A": -torch.rand(h), "B": torch.randn(b, l, g, n),
            "C": torch.randn(b, l, g, n), "D": torch.randn(h, p), "z": torch.randn(b, l, h, p), "dt_bias": torch.randn(h),
            "initial_states": torch.randn(b, h, p, n)}
    args = {k: on_cuda(v) for k, v in args.items()}
    result = ssd_scan(**args, chunk_size=4, dt_softplus=True, dt_limit=(0.01, 2.0), return_final_states=True)
    assert result == ("result of", "mamba_chunk_scan_combined")
    (call,) = upstream["mamba_chunk_scan_combined"]
    for name, tensor in args.items():
        assert call[name] is tensor, name
    assert call["chunk_size"] == 4 and call["dt_softplus"] is True and call["dt_limit"] == (0.01, 2.0)
    assert call["return_final_states"] is True
    assert call["seq_idx"] is None and call["cu_seqlens"] is None and call["return_varlen_states"] is False


def test_default_dt_limit_is_handed_over_unchanged(upstream):
    b, l, h, p, n = 1, 4, 2, 2, 3
    tensors = [on_cuda(t) for t in (torch.randn(b, l, h, p), torch.randn(b, l, h), -torch.rand(h),
                                    torch.randn(b, l, 1, n), torch.randn(b, l, 1, n))]
    ssd_scan(*tensors, chunk_size=8)
    (call,) = upstream["mamba_chunk_scan_combined"]
    assert call["dt_limit"][0] == 0.0 and math.isinf(call["dt_limit"][1])
    assert call["dt_softplus"] is False and call["return_final_states"] is False


@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv_passes_its_arguments_to_causal_conv1d_fn(upstream, activation):
    x, weight, bias = on_cuda(torch.randn(2, 3, 7)), torch.randn(3, 1, 4), torch.randn(3)
    result = _dispatch.causal_depthwise_conv1d(x, weight, bias, activation=activation)
    assert result == ("result of", "causal_conv1d_fn")
    (call,) = upstream["causal_conv1d_fn"]
    assert call["x"] is x and call["bias"] is bias and call["activation"] == activation
    torch.testing.assert_close(call["weight"], weight.reshape(3, 4), rtol=0, atol=0)  # causal-conv1d wants (dim, width)


def test_causal_conv_forced_pure_uses_conv1d(upstream, monkeypatch):
    monkeypatch.setenv(_dispatch.PURE_ENV_VAR, "1")
    x, weight = torch.randn(1, 2, 5), torch.randn(2, 3)
    y = _dispatch.causal_depthwise_conv1d(on_cuda(x), weight, None)
    assert upstream["causal_conv1d_fn"] == []
    want = torch.stack([sum(weight[c, k] * torch.nn.functional.pad(x[0, c], (2, 0))[t + k] for k in range(3))
                        for c in range(2) for t in range(5)]).reshape(1, 2, 5)
    torch.testing.assert_close(y.as_subclass(torch.Tensor), want, rtol=1e-6, atol=1e-6)
