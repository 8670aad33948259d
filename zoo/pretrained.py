"""Published pretrained weights: a table of tags, named timm-style ``model.tag``.

``"sasrec.ml-100k"`` names the weights of recipe ``sasrec`` trained on ml-100k. A bare model
name (``"sasrec"``) means its default tag: the one registered with ``default=True``, else the
first registered for that model. Each tag says where the trained folder lives: a Hugging Face
Hub repository pinned to a revision (a commit SHA gives reproducible loads that need no network
once cached), or a folder bundled with an installation.

Nothing is published yet, so the table starts empty; :func:`register_pretrained` adds entries
(third-party packages and tests use it too).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainedTag:
    """Where the trained folder of one tag lives, and what it is.

    ``hf_hub_id`` is ``"org/name"`` on the Hub (``revision`` a branch, tag or, preferably, a
    commit SHA); ``local_dir`` is a bundled folder and wins over the Hub when both are given.
    """

    hf_hub_id: str | None = None
    revision: str | None = None
    local_dir: str | None = None
    dataset: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.hf_hub_id and not self.local_dir:
            raise ValueError("a pretrained tag needs a source: hf_hub_id='org/name' or local_dir='path/to/folder'")
        if self.hf_hub_id is not None and self.hf_hub_id.count("/") != 1:
            raise ValueError(f"hf_hub_id must look like 'org/name', got {self.hf_hub_id!r}")


_TAGS: dict[str, PretrainedTag] = {}
_DEFAULT_TAG: dict[str, str] = {}


def split_name_tag(name: str) -> tuple[str, str]:
    """``"sasrec.ml-100k"`` -> ``("sasrec", "ml-100k")``; ``"sasrec"`` -> ``("sasrec", "")``."""
    model, _, tag = name.partition(".")
    return model, tag


def register_pretrained(name: str, tag: PretrainedTag, *, default: bool = False) -> None:
    """Add ``"model.tag"`` to the table (``default=True`` makes it what the bare model name means)."""
    model, tag_name = split_name_tag(name)
    if not model or not tag_name:
        raise ValueError(f"a pretrained name is 'model.tag' (e.g. 'sasrec.ml-100k'), got {name!r}")
    if name in _TAGS:
        raise ValueError(f"pretrained tag {name!r} is already registered")
    _TAGS[name] = tag
    if default or model not in _DEFAULT_TAG:
        _DEFAULT_TAG[model] = name


def unregister_pretrained(name: str) -> None:
    """Remove ``"model.tag"`` from the table (its model's default moves to another tag, if any)."""
    if name not in _TAGS:
        raise KeyError(f"pretrained tag {name!r} is not registered")
    del _TAGS[name]
    model, _ = split_name_tag(name)
    if _DEFAULT_TAG.get(model) == name:
        rest = [n for n in _TAGS if split_name_tag(n)[0] == model]
        if rest:
            _DEFAULT_TAG[model] = rest[0]
        else:
            del _DEFAULT_TAG[model]


def list_pretrained(pattern: str = "*") -> list[str]:
    """Registered ``model.tag`` names matching a shell-style ``pattern``."""
    return sorted(n for n in _TAGS if fnmatch.fnmatchcase(n, pattern))


def find_pretrained(name: str) -> tuple[str, PretrainedTag] | None:
    """The full ``model.tag`` name and entry that ``name`` means, or None when there is none."""
    model, tag = split_name_tag(name)
    full = name if tag else _DEFAULT_TAG.get(model)
    if full is None or full not in _TAGS:
        return None
    return full, _TAGS[full]
