"""The folder where seqrec-zoo keeps what it computes once from data (such as item text embeddings).

``$SEQREC_ZOO_CACHE`` when set, else ``$XDG_CACHE_HOME/seqrec-zoo``, else ``~/.cache/seqrec-zoo``.
Everything in it can be deleted: it is recomputed on the next use.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "SEQREC_ZOO_CACHE"


def cache_root() -> Path:
    """The cache folder (not created here; writers create the subfolder they need)."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "seqrec-zoo"
