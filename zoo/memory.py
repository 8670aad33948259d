"""Keep freed memory in the process, so that an evaluation batch or a training step does not fault in again the
pages its tensors had one batch before.

glibc's ``malloc`` gives each block above its mmap threshold a fresh mapping (the threshold starts at 128 KiB
and rises, up to 32 MiB, as such blocks are freed), and returns the top of its heap to the kernel whenever
more than its trim threshold (twice the mmap threshold) is free there. A batch's activations are freed at its
end and allocated again by the next, so the next batch touches their pages for the first time: about 65,000
page faults in a full-ranking evaluation of ``sigma`` on ml-100k and 130,000 in one of ``sigma-code``, each a
kernel entry and a zeroed 4 KiB page. :func:`keep_freed_memory` fixes the mmap threshold at its largest,
32 MiB, and the trim threshold at 1 GiB (``mallopt``): blocks up to 32 MiB come from the heap, and freed
ones stay there for reuse. Those evaluations then fault nothing in and take about a third less time
(docs/kernels.md, "Page faults"). Blocks over 32 MiB (the logits of a training batch over every item)
are still mapped afresh each time.

The setting is process-wide and lasts until the process ends. Peak memory is what the run needs either way;
up to 1 GiB freed after the peak stays with the process instead of going back to the system.
:func:`zoo.train.train` and :func:`zoo.evaluate.evaluate` call it; ``SEQREC_ZOO_KEEP_MEMORY=0`` turns it
off. Without glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

ENV_VAR = "SEQREC_ZOO_KEEP_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20  # glibc's largest


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (see the module docstring); True when it is in force.

    Off when ``SEQREC_ZOO_KEEP_MEMORY=0``; any other value, or none, means on."""
    if os.environ.get(ENV_VAR, "").strip() == "0":
        return False
    return _apply_once()


@lru_cache(maxsize=None)
def _apply_once() -> bool:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only; mallopt's parameters are glibc's
        mallopt = libc.mallopt
    except (AttributeError, OSError, TypeError):  # TypeError: no process handle from None (Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
