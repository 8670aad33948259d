"""scripts/cuda_kernels.py, the one-architecture build of mamba-ssm's and causal-conv1d's CUDA extensions: the
parts that need no nvcc (finding and unpacking the source distributions, the arch flags, the error without a GPU).
The compilation itself needs nvcc and runs where the CUDA checks run (scripts/cuda_check.sh)."""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import cuda_kernels  # noqa: E402

pytestmark = pytest.mark.kernel_independent  # nothing is compiled here


def write_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_arch_flags_name_one_architecture():
    assert cuda_kernels.arch_flags("9.0") == ["-gencode", "arch=compute_90,code=sm_90"]
    assert cuda_kernels.arch_flags("12.1") == ["-gencode", "arch=compute_121,code=sm_121"]


@pytest.mark.parametrize("arch", ["90", "sm_90", "9.x", ""])
def test_arch_flags_refuse_other_spellings(arch):
    with pytest.raises(SystemExit, match="--arch must look like 9.0"):
        cuda_kernels.arch_flags(arch)


def test_source_archive_needs_exactly_one(tmp_path):
    with pytest.raises(SystemExit, match=r"expected one mamba_ssm-<version>.tar.gz .* found none .*cuda_check.sh fetch"):
        cuda_kernels.source_archive(tmp_path, "mamba_ssm")
    write_sdist(tmp_path / "mamba_ssm-2.3.2.tar.gz", {"mamba_ssm-2.3.2/setup.py": b""})
    assert cuda_kernels.source_archive(tmp_path, "mamba_ssm").name == "mamba_ssm-2.3.2.tar.gz"
    write_sdist(tmp_path / "mamba_ssm-2.2.6.tar.gz", {"mamba_ssm-2.2.6/setup.py": b""})
    with pytest.raises(SystemExit, match=r"mamba_ssm-2.2.6.tar.gz.*mamba_ssm-2.3.2.tar.gz"):
        cuda_kernels.source_archive(tmp_path, "mamba_ssm")


def test_unpack_once_into_its_top_folder(tmp_path):
    archive = write_sdist(tmp_path / "causal_conv1d-1.7.0.tar.gz",
                          {"causal_conv1d-1.7.0/csrc/causal_conv1d.cpp": b"// one", "causal_conv1d-1.7.0/setup.py": b""})
    top = cuda_kernels.unpack(archive, tmp_path / "src")
    assert top == tmp_path / "src" / "causal_conv1d-1.7.0"
    assert (top / "csrc" / "causal_conv1d.cpp").read_bytes() == b"// one"
    (top / "csrc" / "causal_conv1d.cpp").write_bytes(b"// edited")  # a second call keeps what is there
    cuda_kernels.unpack(archive, tmp_path / "src")
    assert (top / "csrc" / "causal_conv1d.cpp").read_bytes() == b"// edited"


def test_unpack_refuses_members_outside_its_folder(tmp_path):
    archive = write_sdist(tmp_path / "evil-1.0.tar.gz", {"../escaped.txt": b"x"})
    with pytest.raises(tarfile.OutsideDestinationError):
        cuda_kernels.unpack(archive, tmp_path / "src")
    assert not (tmp_path / "escaped.txt").exists()


def test_extensions_list_the_upstream_sources():
    assert cuda_kernels.SELECTIVE_SCAN.module == "selective_scan_cuda"
    assert len(cuda_kernels.SELECTIVE_SCAN.sources) == 10  # the .cpp, three forward and six backward .cu files
    assert cuda_kernels.CAUSAL_CONV.sources[0] == "csrc/causal_conv1d.cpp"


def test_without_a_gpu_it_asks_for_an_arch(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here; name one with --arch"):
        cuda_kernels.main(["--sources", str(tmp_path), "--out", str(tmp_path / "out")])
