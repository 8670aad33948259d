"""When to use mamba-ssm / causal-conv1d CUDA kernels, and the causal depthwise convolution.

The pure-PyTorch algorithms in this package run everywhere. On a CUDA device with ``mamba_ssm``
installed the public functions hand over to its kernels instead, unless the environment variable
``SEQREC_ZOO_PURE_SSM=1`` forces the pure path (useful to compare the two on one GPU).
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.blocks.ssm import cpu_kernel

PURE_ENV_VAR = "SEQREC_ZOO_PURE_SSM"


def force_pure() -> bool:
    """True when ``SEQREC_ZOO_PURE_SSM=1`` asks for the pure-PyTorch path everywhere."""
    return os.environ.get(PURE_ENV_VAR, "") == "1"


@lru_cache(maxsize=None)
def optional_function(module: str, name: str) -> Callable | None:
    """``module.name`` when that module imports (e.g. ``mamba_ssm``'s CUDA ops), else None.

    Import errors of any kind (missing package, CUDA extension built for another torch) mean
    "not available"; the result is cached so the import is tried once.
    """
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 -- a broken CUDA extension raises all sorts of errors
        return None


def mamba_ssm_available() -> bool:
    """True when ``mamba_ssm``'s selective-scan CUDA op imports."""
    return optional_function("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn") is not None


def use_cuda_kernels(*tensors: Tensor | None) -> bool:
    """Whether to dispatch to mamba-ssm: every given tensor is on CUDA, mamba-ssm imports, not forced pure."""
    present = [t for t in tensors if t is not None]
    if not present or not all(t.is_cuda for t in present):
        return False
    return not force_pure() and mamba_ssm_available()


def causal_depthwise_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None = None,
                            valid: Tensor | None = None) -> Tensor:
    """Causal depthwise convolution ``y[b, c, t] = bias[c] + sum_k weight[c, k] * x[b, c, t - K + 1 + k]``.

    ``x (B, C, L)``, ``weight (C, K)`` or ``(C, 1, K)``, ``bias (C,)``; ``activation`` None or ``"silu"``;
    ``valid (B, L)`` boolean or None: ``x`` is read as zero where it is False (padding), in the CPU kernel
    without a masking pass.
    Uses causal-conv1d's kernel on CUDA when it is installed (and the pure path is not forced), the
    compiled CPU kernel (``causal_conv_cpu.cpp``, :mod:`zoo.blocks.compiled`) on the CPU, and ``F.conv1d``
    with left zero padding otherwise. The result may be a non-contiguous view (the CPU kernel's is
    channels-last).
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_depthwise_conv1d: activation must be None or 'silu', got {activation!r}")
    weight = weight.reshape(weight.shape[0], weight.shape[-1])
    if x.dim() != 3 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"causal_depthwise_conv1d: expected x (B, {weight.shape[0]}, L), got {tuple(x.shape)}")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (x.shape[0], x.shape[-1])):
        raise ValueError(f"causal_depthwise_conv1d: valid must be a boolean (B, L) = {(x.shape[0], x.shape[-1])} "
                         f"tensor, got {valid.dtype} {tuple(valid.shape)}")
    kernel = optional_function("causal_conv1d", "causal_conv1d_fn")
    cuda_kernel = x.is_cuda and kernel is not None and not force_pure()
    if not cuda_kernel and cpu_kernel.applies("causal_conv", x, weight, bias, valid):
        return cpu_kernel.causal_conv_compiled(x, weight, bias, silu=activation is not None, valid=valid)
    if valid is not None:
        x = x * valid.unsqueeze(1).to(x.dtype)
    if cuda_kernel:
        return kernel(x, weight, bias, activation=activation)
    width = weight.shape[1]
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=weight.shape[0])
    return F.silu(y) if activation is not None else y
