"""Build mamba-ssm's and causal-conv1d's CUDA extensions for one GPU architecture, without pip or network.

The ``cuda`` extra (``pip install -e '.[cuda]'``) builds both packages from source for about ten GPU
architectures, which takes the better part of an hour, and first tries to download prebuilt wheels. On a
machine with a GPU, ``nvcc`` and PyTorch but no network (or little time) this script does the same
build for the present GPU alone: it unpacks the two source distributions, compiles
``selective_scan_cuda`` and ``causal_conv1d_cuda`` through ``torch.utils.cpp_extension.load`` (ninja, both
extensions at once, one job per core each) with the upstream ``setup.py``'s compiler flags, and lays out a
folder that holds both Python packages and both extensions. Put that folder on ``PYTHONPATH`` and ``import mamba_ssm``
works; ``zoo.blocks.ssm`` then hands CUDA tensors to these kernels.

Usage::

    python scripts/cuda_kernels.py --sources .whl --out build/cuda            # the present GPU's arch
    python scripts/cuda_kernels.py --sources .whl --out build/cuda --arch 9.0 # no GPU needed (compile only)
    export PYTHONPATH=build/cuda/site:$PYTHONPATH

``--sources`` holds ``mamba_ssm-<version>.tar.gz`` and ``causal_conv1d-<version>.tar.gz`` (``bash
scripts/cuda_check.sh fetch`` downloads them). A second run reuses what ninja built.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Extension:
    """One upstream CUDA extension: the source distribution it comes in and what to compile."""

    package: str            # the Python package that imports the extension
    module: str             # the extension's import name
    sources: tuple[str, ...]  # relative to the unpacked source distribution
    include: str            # header folder, relative to the same


SELECTIVE_SCAN = Extension(
    package="mamba_ssm", module="selective_scan_cuda",
    sources=("csrc/selective_scan/selective_scan.cpp",
             *(f"csrc/selective_scan/selective_scan_fwd_{t}.cu" for t in ("fp32", "fp16", "bf16")),
             *(f"csrc/selective_scan/selective_scan_bwd_{t}_{k}.cu"
               for t in ("fp32", "fp16", "bf16") for k in ("real", "complex"))),
    include="csrc/selective_scan")
CAUSAL_CONV = Extension(
    package="causal_conv1d", module="causal_conv1d_cuda",
    sources=("csrc/causal_conv1d.cpp", "csrc/causal_conv1d_fwd.cu", "csrc/causal_conv1d_bwd.cu",
             "csrc/causal_conv1d_update.cu"),
    include="csrc")

# nvcc flags of both upstream setup.py files (half and bfloat16 operators on, fast math), one arch added; the C++
# standard is the one torch's own build helper sets (C++17 or C++20, as the installed torch's headers need).
NVCC_FLAGS = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
              "--threads", "4"]


def source_archive(folder: Path, package: str) -> Path:
    """The one ``<package>-<version>.tar.gz`` in ``folder``; a clear error when there is none or several."""
    found = sorted(folder.glob(f"{package}-*.tar.gz"))
    if len(found) != 1:
        raise SystemExit(f"cuda_kernels: expected one {package}-<version>.tar.gz in {folder}, found "
                         f"{[p.name for p in found] or 'none'} (bash scripts/cuda_check.sh fetch downloads it)")
    return found[0]


def unpack(archive: Path, into: Path) -> Path:
    """Unpack a source distribution once (safely: no member may leave ``into``); its top folder."""
    top = into / archive.name.removesuffix(".tar.gz")
    if not top.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    return top


def arch_flags(arch: str) -> list[str]:
    """``-gencode`` for one compute capability given as ``"9.0"`` (sm_90)."""
    major, _, minor = arch.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise SystemExit(f"cuda_kernels: --arch must look like 9.0, got {arch!r}")
    return ["-gencode", f"arch=compute_{major}{minor},code=sm_{major}{minor}"]


def compile_extension(extension: Extension, source: Path, out: Path, arch: str) -> str:
    """Compile ``extension`` from the unpacked ``source`` for ``arch`` (ninja, in ``out/build``); the built file."""
    from torch.utils.cpp_extension import load

    build_dir = out / "build" / extension.module
    build_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    module = load(name=extension.module, sources=[str(source / s) for s in extension.sources],
                  extra_cflags=["-O3"], extra_cuda_cflags=[*NVCC_FLAGS, *arch_flags(arch)],
                  extra_include_paths=[str(source / extension.include)], build_directory=str(build_dir),
                  verbose=False)
    print(f"cuda_kernels: {extension.module} built for sm_{arch.replace('.', '')} "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    return module.__file__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=Path, default=Path(".whl"), help="folder with the two .tar.gz")
    parser.add_argument("--out", type=Path, default=Path("build/cuda"))
    parser.add_argument("--arch", default=None, help="compute capability such as 9.0 (default: the present GPU's)")
    args = parser.parse_args(argv)
    arch = args.arch
    if arch is None:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("cuda_kernels: no CUDA device here; name one with --arch (e.g. 9.0) to compile only")
        arch = "{}.{}".format(*torch.cuda.get_device_capability())
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    unpacked, site = args.out / "src", args.out / "site"
    unpacked.mkdir(parents=True, exist_ok=True)
    site.mkdir(parents=True, exist_ok=True)
    sources = {e: unpack(source_archive(args.sources, e.package), unpacked) for e in (SELECTIVE_SCAN, CAUSAL_CONV)}
    # Both at once, each with a job per core: one extension's slowest file no longer waits for the other's.
    with ProcessPoolExecutor(len(sources), mp_context=multiprocessing.get_context("spawn")) as pool:
        built = {e: pool.submit(compile_extension, e, source, args.out, arch) for e, source in sources.items()}
        for extension, job in built.items():
            library = Path(job.result())
            shutil.copy2(library, site / library.name)
            shutil.copytree(sources[extension] / extension.package, site / extension.package, dirs_exist_ok=True)
    print(f"cuda_kernels: done; export PYTHONPATH={site.resolve()}:$PYTHONPATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
