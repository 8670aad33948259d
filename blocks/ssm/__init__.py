"""State-space kernels (selective scan, SSD) and the Mamba / Mamba2 layers built on them.

``selective_scan`` has mamba-ssm's ``selective_scan_fn`` signature and ``ssd_scan`` its
``mamba_chunk_scan_combined``'s; both run a fast pure-PyTorch algorithm on CPU and dispatch to
mamba-ssm's kernels on CUDA when it is installed (``SEQREC_ZOO_PURE_SSM=1`` forces the pure path).
``Mamba`` and ``Mamba2`` have exactly mamba-ssm's parameter names, shapes and initialisation.
"""

from zoo.blocks.ssm.mamba import Mamba, MambaState
from zoo.blocks.ssm.mamba2 import Mamba2
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.ssm.ssd import ssd_scan

__all__ = ["selective_scan", "ssd_scan", "Mamba", "MambaState", "Mamba2"]
