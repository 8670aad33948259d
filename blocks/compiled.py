"""Optional C++ CPU kernels, compiled from the sources beside the blocks on first use.

The pure-PyTorch paths run everywhere but pay PyTorch's per-operation overhead and write
intermediates to memory. The kernels fuse a block's inner loop into one pass on the intra-op
threads: the selective scan (``ssm/selective_scan_cpu.cpp``, Mamba eq. 2a-2b), the SSD scan
(``ssm/ssd_scan_cpu.cpp``, Mamba2), and for inference masked attention (``attention_cpu.cpp``), a
whole post-norm Transformer layer (``transformer_layer_cpu.cpp``) and the item_id encoder
(``item_embedding_cpu.cpp``). Each block that uses one owns the call; this module only builds and loads.
They are opt-in because building needs a C++ compiler and takes about a minute per kernel the first
time (the build is cached by ``torch.utils.cpp_extension``)::

    SEQREC_ZOO_CPU_KERNEL=1 python train.py

A failed build is an error that says how to fall back, never a silent switch.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

KERNEL_ENV_VAR = "SEQREC_ZOO_CPU_KERNEL"
_HERE = Path(__file__).resolve().parent
SOURCES = {
    "selective_scan": _HERE / "ssm" / "selective_scan_cpu.cpp",
    "ssd_scan": _HERE / "ssm" / "ssd_scan_cpu.cpp",
    "attention": _HERE / "attention_cpu.cpp",
    "transformer_layer": _HERE / "transformer_layer_cpu.cpp",
    "item_embedding": _HERE / "item_embedding_cpu.cpp",
}
# -ffast-math lets gcc vectorise exp (glibc's libmvec); it is passed to the compiler only, never the
# linker, so the process's floating-point mode (denormals) is left alone.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]


def requested() -> bool:
    """True when ``SEQREC_ZOO_CPU_KERNEL=1`` asks for the compiled CPU kernels."""
    return os.environ.get(KERNEL_ENV_VAR, "") == "1"


def applies(*tensors: Tensor | None) -> bool:
    """Whether a compiled kernel should handle a call on these tensors: requested, and all of them on the CPU."""
    return requested() and all(t.device.type == "cpu" for t in tensors if t is not None)


def serves_inference(x: Tensor, *modules: nn.Module, dropout_active: bool) -> bool:
    """Whether an inference kernel should run ``modules`` on ``x`` now: requested, on the CPU, nothing to
    differentiate (gradients off, or neither ``x`` nor a parameter requires them), no dropout active."""
    if not applies(x) or dropout_active:
        return False
    return not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for m in modules
                                                                       for p in m.parameters()))


@lru_cache(maxsize=None)
def load(kernel: str) -> ModuleType:
    """Build (or reuse the cached build of) the C++ kernel ``kernel`` (a key of ``SOURCES``) and import it."""
    source = SOURCES[kernel]
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" is irrelevant here
    from torch.utils.cpp_extension import load as build

    try:
        return build(name=f"seqrec_zoo_{kernel}_cpu", sources=[str(source)], extra_cflags=COMPILE_FLAGS,
                     extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # compiler missing, headers missing, ...: say what to do
        raise RuntimeError(
            f"{KERNEL_ENV_VAR}=1 asks for the compiled CPU {kernel} kernel, but building {source} failed "
            f"({type(error).__name__}: {error}). Install a C++ compiler (e.g. `apt install g++`) or unset "
            f"{KERNEL_ENV_VAR} to use the pure-PyTorch path."
        ) from error
