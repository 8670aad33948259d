"""Published pretrained weights: tags named timm-style ``model.tag``, declared by the recipes.

``"sasrec.ml-100k"`` names the weights of recipe ``sasrec`` trained on ml-100k. A bare model
name (``"sasrec"``) means its default tag: the one declared with ``default: true``, else the
first declared for that model. Each bundled recipe lists its tags in its ``pretrained:`` section
(:class:`TagSpec`); a tag's trained folder is looked for first inside the installed package
(``zoo/weights/<model>.<tag>/``), then on the Hugging Face Hub (its repository pinned to a
revision; a commit SHA gives reproducible loads that need no network once cached).

The table is filled from the recipe files the first time it is read; :func:`register_pretrained`
adds entries by hand (third-party packages and tests use it).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from zoo.paths import recipes_dir, weights_dir

TAG_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class TagSpec(BaseModel):
    """One entry of a recipe's ``pretrained:`` section: ``{tag: {dataset, hf_hub_id, revision, default}}``.

    The trained folder is bundled as ``zoo/weights/<model>.<tag>/`` when the package ships it;
    ``hf_hub_id`` / ``revision`` say where it is (or will be) published on the Hub.
    """

    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(min_length=1, description="the dataset the weights were trained on (e.g. ml-100k)")
    hf_hub_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$",
                                  description="the Hub repository 'org/name' the folder is published to")
    revision: str | None = Field(None, min_length=1, description="the Hub revision to pin (a commit SHA, tag or branch)")
    default: bool = Field(False, description="what the bare model name means with pretrained=True")
    description: str = ""


def check_tags(tags: dict[str, TagSpec]) -> dict[str, TagSpec]:
    """Tag names are lower-case words without dots, and at most one tag is the default."""
    for name in tags:
        if not TAG_NAME.match(name):
            raise ValueError(f"pretrained tag {name!r}: use lower-case letters, digits, '-' and '_' (no dots), e.g. 'ml-100k'")
    defaults = [n for n, t in tags.items() if t.default]
    if len(defaults) > 1:
        raise ValueError(f"pretrained tags {defaults} are all marked default: mark one")
    return tags


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
_DECLARED: list[bool] = []  # non-empty once the bundled recipes' tags are in the table


_TAG_TABLE = TypeAdapter(dict[str, TagSpec])


def declared_tags(recipe_file: Path) -> dict[str, TagSpec]:
    """The ``pretrained:`` section of one recipe file, validated (other fields are the recipe loader's job)."""
    data = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
    section = data.get("pretrained", {}) if isinstance(data, dict) else {}
    try:
        return check_tags(_TAG_TABLE.validate_python(section))
    except ValidationError as exc:
        problems = "; ".join(f"pretrained.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{recipe_file}: {problems}") from None
    except ValueError as exc:
        raise ValueError(f"{recipe_file}: {exc}") from None


def bundled_folder(name: str) -> Path:
    """Where the package ships the trained folder of ``"model.tag"`` (it may not exist)."""
    return weights_dir() / name


def _declare_bundled() -> None:
    """Put every bundled recipe's tags into the table, once."""
    if _DECLARED:
        return
    _DECLARED.append(True)
    for recipe_file in sorted(recipes_dir().glob("*.yaml")):
        for tag_name, spec in declared_tags(recipe_file).items():
            name = f"{recipe_file.stem}.{tag_name}"
            folder = bundled_folder(name)
            if name in _TAGS:
                continue
            if not folder.is_dir() and spec.hf_hub_id is None:
                continue  # declared before its weights exist anywhere: nothing to load
            _TAGS[name] = PretrainedTag(
                hf_hub_id=spec.hf_hub_id, revision=spec.revision, local_dir=str(folder) if folder.is_dir() else None,
                dataset=spec.dataset, description=spec.description,
            )
            if spec.default or recipe_file.stem not in _DEFAULT_TAG:
                _DEFAULT_TAG[recipe_file.stem] = name


def stored_test_ndcg(tag: PretrainedTag, k: int = 10) -> float | None:
    """The full-ranking test NDCG@k stored in a bundled folder's ``config.json`` (None when not bundled or
    not recorded): ``test_full`` when the recipe evaluates on sampled candidates, else ``test``."""
    if tag.local_dir is None:
        return None
    config = Path(tag.local_dir) / "config.json"
    if not config.is_file():
        return None
    metrics = json.loads(config.read_text(encoding="utf-8")).get("metrics") or {}
    return (metrics.get("test_full") or metrics.get("test") or {}).get(f"ndcg@{k}")


def split_name_tag(name: str) -> tuple[str, str]:
    """``"sasrec.ml-100k"`` -> ``("sasrec", "ml-100k")``; ``"sasrec"`` -> ``("sasrec", "")``."""
    model, _, tag = name.partition(".")
    return model, tag


def register_pretrained(name: str, tag: PretrainedTag, *, default: bool = False) -> None:
    """Add ``"model.tag"`` to the table (``default=True`` makes it what the bare model name means)."""
    _declare_bundled()
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
    _declare_bundled()
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
    _declare_bundled()
    return sorted(n for n in _TAGS if fnmatch.fnmatchcase(n, pattern))


def find_pretrained(name: str) -> tuple[str, PretrainedTag] | None:
    """The full ``model.tag`` name and entry that ``name`` means, or None when there is none."""
    _declare_bundled()
    model, tag = split_name_tag(name)
    full = name if tag else _DEFAULT_TAG.get(model)
    if full is None or full not in _TAGS:
        return None
    return full, _TAGS[full]
