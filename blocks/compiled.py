"""The C++ CPU kernels, compiled from the sources beside the blocks on first use, and when to use them.

The pure-PyTorch paths run everywhere but pay PyTorch's per-operation overhead and write
intermediates to memory. The kernels fuse a block's inner loop into one pass on the intra-op
threads: the selective scan (``ssm/selective_scan_cpu.cpp``, Mamba eq. 2a-2b), the SSD scan
(``ssm/ssd_scan_cpu.cpp``, Mamba2), for SIGMA's every-prefix pass short scans read at their last step
(``ssm/final_state_scan_cpu.cpp``) and the decayed prefix readout (``ssm/decayed_prefix_cpu.cpp``), the
short causal convolution in front of every Mamba scan (``ssm/causal_conv_cpu.cpp``) and the step size's
softplus (``ssm/softplus_cpu.cpp``),
and for inference masked attention (``attention_cpu.cpp``), a whole post-norm Transformer layer
(``transformer_layer_cpu.cpp``), the item_id encoder (``item_embedding_cpu.cpp``) and a GRU layer over padded
rows (``gru_cpu.cpp``, :func:`zoo.blocks.gru.masked_gru`), and in training
dropout's mask (``dropout_cpu.cpp``, :mod:`zoo.blocks.dropout`); in both, ConvRec's layer norm
(``layer_norm_c_cpu.cpp``, :mod:`zoo.blocks.norms`). Each block that uses one owns the call; this
module only decides, builds and loads. Every kernel gives the pure path's result (tests check both
against plain loops).

``SEQREC_ZOO_CPU_KERNEL`` chooses:

* unset (or ``auto``): the kernels are used wherever they apply when a C++ compiler is present. Each
  is built on its first use (about a minute, once per machine: ``torch.utils.cpp_extension`` caches
  the build), announced by one line on stderr; :func:`build_all` builds every one up front, side by side
  (the test suite does so at its start). Without a compiler, or when a build fails, one warning says so
  and the pure path runs;
* ``1``: always the kernels; a failed build is an error that says how to fall back;
* ``0``: never; the pure-PyTorch path everywhere.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
from torch import Tensor, nn

KERNEL_ENV_VAR = "SEQREC_ZOO_CPU_KERNEL"
MODES = {"": "auto", "auto": "auto", "1": "on", "0": "off"}
_HERE = Path(__file__).resolve().parent
SOURCES = {
    "selective_scan": _HERE / "ssm" / "selective_scan_cpu.cpp",
    "ssd_scan": _HERE / "ssm" / "ssd_scan_cpu.cpp",
    "decayed_prefix": _HERE / "ssm" / "decayed_prefix_cpu.cpp",
    "final_state_scan": _HERE / "ssm" / "final_state_scan_cpu.cpp",
    "causal_conv": _HERE / "ssm" / "causal_conv_cpu.cpp",
    "softplus": _HERE / "ssm" / "softplus_cpu.cpp",
    "attention": _HERE / "attention_cpu.cpp",
    "transformer_layer": _HERE / "transformer_layer_cpu.cpp",
    "item_embedding": _HERE / "item_embedding_cpu.cpp",
    "dropout": _HERE / "dropout_cpu.cpp",
    "layer_norm_c": _HERE / "layer_norm_c_cpu.cpp",
    "gru": _HERE / "gru_cpu.cpp",
}
# -ffast-math lets gcc vectorise exp (glibc's libmvec); it is passed to the compiler only, never the
# linker, so the process's floating-point mode (denormals) is left alone. gcc's tuning for Intel's AVX-512
# CPUs prefers 256-bit vectors; asking for 512 made the Mamba scan 1.14-1.18x faster (docs/kernels.md) and
# changes nothing on CPUs without AVX-512.
COMPILE_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math", "-fopenmp"]


def mode() -> Literal["auto", "on", "off"]:
    """What ``SEQREC_ZOO_CPU_KERNEL`` asks for: ``auto`` (unset), ``on`` (``1``) or ``off`` (``0``)."""
    value = os.environ.get(KERNEL_ENV_VAR, "").strip().lower()
    if value not in MODES:
        raise ValueError(f"{KERNEL_ENV_VAR}={value!r}: expected 1 (always the compiled CPU kernels), "
                         "0 (never) or auto / unset (when a C++ compiler is present)")
    return MODES[value]  # type: ignore[return-value]


def compiler() -> str | None:
    """The C++ compiler ``torch.utils.cpp_extension`` would call (``$CXX``, else ``c++``), if it exists."""
    return shutil.which(os.environ.get("CXX", "c++"))


def enabled(kernel: str) -> bool:
    """Whether the compiled ``kernel`` runs where it applies (building it on first use in ``auto`` mode)."""
    chosen = mode()
    if chosen == "off":
        return False
    if chosen == "on":
        return True
    return _built_in_auto_mode(kernel)


@lru_cache(maxsize=None)
def _built_in_auto_mode(kernel: str) -> bool:
    if compiler() is None:
        warnings.warn(f"seqrec-zoo: no C++ compiler found, so the pure-PyTorch path runs instead of the compiled "
                      f"CPU {kernel} kernel (slower; same results). Install one (e.g. `apt install g++`), or set "
                      f"{KERNEL_ENV_VAR}=0 to choose the pure path and silence this warning.", stacklevel=4)
        return False
    try:
        load(kernel)
    except RuntimeError as error:
        warnings.warn(f"seqrec-zoo: {error} The pure-PyTorch path runs instead.", stacklevel=4)
        return False
    return True


def tracing() -> bool:
    """Whether a tracer records the call (``torch.export``, the ONNX exporters, ``torch.jit.trace``): the
    kernels are opaque to it, and blocks take their traceable pure paths (see :mod:`zoo.export`)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def kernel_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype a kernel computes in: float64 when any given tensor is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records a call on these tensors: gradients on and any of them requiring one."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def applies(kernel: str, *tensors: Tensor | None) -> bool:
    """Whether the compiled ``kernel`` should handle a call on these tensors: enabled, all of them on the CPU,
    and no tracer recording."""
    return all(t.device.type == "cpu" for t in tensors if t is not None) and not tracing() and enabled(kernel)


def serves_inference(kernel: str, x: Tensor, *modules: nn.Module, dropout_active: bool) -> bool:
    """Whether the inference ``kernel`` should run ``modules`` on ``x`` now: enabled, on the CPU, nothing to
    differentiate (gradients off, or neither ``x`` nor a parameter requires them), no dropout active."""
    if dropout_active or needs_grad(x, *(p for m in modules for p in m.parameters())):
        return False
    return applies(kernel, x)


def _module_name(kernel: str) -> str:
    return f"seqrec_zoo_{kernel}_cpu"


def built(kernel: str) -> bool:
    """Whether this machine's ``torch.utils.cpp_extension`` cache holds a build of ``kernel``."""
    from torch.utils.cpp_extension import _get_build_directory

    name = _module_name(kernel)
    return any(Path(_get_build_directory(name, verbose=False)).glob(f"{name}*.so"))


def _build_in_worker(kernel: str) -> str | None:
    """Build ``kernel`` (a worker of :func:`build_all`): None, or what went wrong."""
    try:
        load(kernel)
    except RuntimeError as error:
        return str(error)
    return None


def build_all(workers: int | None = None) -> dict[str, str]:
    """Build every kernel this machine has not built yet, ``workers`` processes side by side (default: one per CPU),
    instead of one at a time at first use; every later :func:`load` then finds its build cached. Returns the
    message of each build that failed, by kernel (their first use reports them as usual)."""
    missing = [kernel for kernel in SOURCES if not built(kernel)]
    if not missing:
        return {}
    workers = min(len(missing), workers or os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")  # a forked child would inherit torch's OpenMP state
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        outcomes = dict(zip(missing, pool.map(_build_in_worker, missing)))
    return {kernel: message for kernel, message in outcomes.items() if message is not None}


@lru_cache(maxsize=None)
def load(kernel: str) -> ModuleType:
    """Build (or reuse the cached build of) the C++ kernel ``kernel`` (a key of ``SOURCES``) and import it."""
    source = SOURCES[kernel]
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" is irrelevant here
    from torch.utils.cpp_extension import load as build

    name = _module_name(kernel)
    if not built(kernel):
        print(f"seqrec-zoo: compiling the CPU {kernel} kernel (first use on this machine, about a minute; "
              f"{KERNEL_ENV_VAR}=0 skips it)", file=sys.stderr, flush=True)
    try:
        return build(name=name, sources=[str(source)], extra_cflags=COMPILE_FLAGS, extra_ldflags=["-fopenmp"],
                     verbose=False)
    except Exception as error:  # compiler missing, headers missing, ...: say what to do
        raise RuntimeError(
            f"building the compiled CPU {kernel} kernel from {source} failed ({type(error).__name__}: "
            f"{str(error).strip()[:2000]}). Install a C++ compiler (e.g. `apt install g++`), or set "
            f"{KERNEL_ENV_VAR}=0 to use the pure-PyTorch path."
        ) from error
