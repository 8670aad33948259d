"""What the zoo bundles: recipe names and published pretrained tags.

Light on purpose (no torch): ``zoo list`` answers from here without building anything.
"""

from __future__ import annotations

import fnmatch

from zoo.paths import recipes_dir
from zoo.pretrained import list_pretrained


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the bundled recipes (file stems) matching a shell-style ``pattern``; with
    ``pretrained=True``, the published ``model.tag`` names instead (:mod:`zoo.pretrained`)."""
    if pretrained:
        return list_pretrained(pattern if "." in pattern or pattern.endswith("*") else f"{pattern}.*")
    return sorted(p.stem for p in recipes_dir().glob("*.yaml") if fnmatch.fnmatchcase(p.stem, pattern))
