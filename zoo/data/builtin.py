"""Built-in datasets: MovieLens-100k as shipped inside the ``recbole`` wheel.

The files are found through ``importlib.util.find_spec("recbole")`` without importing recbole
(its import needs packages this project does not depend on).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

RECBOLE_INSTALL = "pip install --no-deps recbole==1.2.1"
BUILTIN_DATASETS = {"ml-100k": "dataset_example/ml-100k"}
# The terms each built-in dataset comes with, as model cards state them (the Hub's license fields).
DATASET_TERMS = {
    "ml-100k": {
        "license": "other",
        "license_name": "movielens-100k",
        "license_link": "https://files.grouplens.org/datasets/movielens/ml-100k-README.txt",
        "summary": "MovieLens-100k may be used for research; commercial use needs GroupLens' permission, and "
                   "redistribution of the data is not allowed (a trained folder holds no interactions: the item ids and, "
                   "for models that read item texts, embeddings of the titles)",
    },
}


def builtin_names() -> list[str]:
    """Names accepted by :func:`builtin_path`."""
    return sorted(BUILTIN_DATASETS)


def builtin_path(name: str) -> Path:
    """Folder holding ``NAME.inter`` (and ``NAME.item``) of a built-in dataset."""
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; built-in datasets are {builtin_names()}")
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"built-in dataset {name!r} ships inside the recbole wheel, which is not installed; "
            f"install it with: {RECBOLE_INSTALL}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / BUILTIN_DATASETS[name]
    if not (folder / f"{name}.inter").is_file():
        raise FileNotFoundError(
            f"recbole is installed but {folder / (name + '.inter')} is missing; reinstall it with: {RECBOLE_INSTALL}"
        )
    return folder
