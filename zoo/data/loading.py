"""``load_dataset``: the front door from a name or a path to an :class:`InteractionDataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from zoo.data.atomic import RawInteractions, read_atomic, read_inter
from zoo.data.csv_log import read_csv
from zoo.data.builtin import BUILTIN_DATASETS, builtin_path
from zoo.data.dataset import InteractionDataset
from zoo.data.features import item_features
from zoo.data.preprocess import DedupPolicy, Preprocessing, build_dataset

CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def _resolve(source: str | Path) -> tuple[str, Path, Path | None]:
    """(dataset name, interaction file, item file or None) for a name, folder or file."""
    if str(source) in BUILTIN_DATASETS:
        folder = builtin_path(str(source))
        return str(source), folder / f"{source}.inter", folder / f"{source}.item"
    path = Path(source)
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise FileNotFoundError(f"folder {path} must hold exactly one .inter file, found {[p.name for p in inters]}")
        path = inters[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset {str(source)!r} is neither a built-in name {sorted(BUILTIN_DATASETS)} nor an existing file or folder"
        )
    item_file = path.with_suffix(".item") if path.suffix == ".inter" else None
    return path.stem, path, item_file


def load_dataset(
    source: str | Path,
    *,
    rating_threshold: float | None = None,
    dedup: DedupPolicy = "all",
    user_core: int = 0,
    item_core: int = 0,
    item_file: str | Path | None = None,
    attribute_fields: Sequence[str] | None = None,
    text_fields: Sequence[str] | None = None,
) -> InteractionDataset:
    """Load ``"ml-100k"``, a folder with one ``.inter`` file, an ``.inter`` file or a CSV/TSV log.

    Preprocessing (all off by default) is described in :mod:`zoo.data.preprocess`. Item side
    information comes from ``item_file`` or, for atomic data, the ``.item`` file beside the
    ``.inter`` file when there is one (see :func:`zoo.data.features.item_features`).
    """
    name, inter_path, default_item_file = _resolve(source)
    if inter_path.suffix == ".inter":
        raw: RawInteractions = read_inter(inter_path)
    elif inter_path.suffix.lower() in CSV_SUFFIXES:
        raw = read_csv(inter_path)
    else:
        raise ValueError(f"{inter_path}: unknown file type; expected .inter or one of {CSV_SUFFIXES}")
    config = Preprocessing(rating_threshold=rating_threshold, dedup=dedup, user_core=user_core, item_core=item_core)
    dataset = build_dataset(raw, name, config)
    chosen = Path(item_file) if item_file is not None else default_item_file
    if chosen is not None and (item_file is not None or chosen.is_file()):
        dataset.item_features = item_features(read_atomic(chosen), dataset.item_vocab, attribute_fields, text_fields)
        dataset.facts["item_file"] = str(chosen)
    return dataset
