"""Item side information from an ``.item`` atomic table: multi-hot attributes and item texts."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from zoo.data.atomic import ITEM_FIELD, AtomicTable, DataFormatError
from zoo.data.dataset import ItemFeatures
from zoo.data.vocab import Vocabulary

DEFAULT_ATTRIBUTE_FIELDS = ("class",)
TITLE_NAMES = ("title", "name")  # a text field is named so, or ends in "_title" / "_name"
YEAR_NAMES = ("release_year", "year")
TEXT_TYPES = ("token", "token_seq")


def _pick(table: AtomicTable, requested: Sequence[str] | None, defaults: Sequence[str], role: str) -> list[str]:
    if requested is None:
        return [f for f in defaults if f in table.types]
    missing = [f for f in requested if f not in table.types]
    if missing:
        raise DataFormatError(f"{table.path}: {role} field(s) {missing} not found; the header has {list(table.types)}")
    return list(requested)


def _default_text_fields(table: AtomicTable) -> list[str]:
    """The title field, then a year field, when the table has them (``movie_title``, ``release_year``).

    The title is the first ``token``/``token_seq`` field named ``title`` or ``name`` or ending in
    ``_title`` / ``_name`` (``movie_title``, ``item_name``, ...); the year, the first of
    ``release_year`` / ``year`` of those types. No title field means no text.
    """
    texts = [f for f, kind in table.types.items() if kind in TEXT_TYPES]
    titles = [f for f in texts if f in TITLE_NAMES or f.endswith(tuple(f"_{n}" for n in TITLE_NAMES))]
    if not titles:
        return []
    years = [f for f in YEAR_NAMES if f in texts]
    return titles[:1] + years[:1]


def _tokens(table: AtomicTable, name: str) -> list[np.ndarray]:
    column = table.columns[name]
    if table.types[name] == "token":
        return [np.array([v]) if v else np.zeros(0, dtype=str) for v in column.tolist()]
    if table.types[name] == "token_seq":
        return column
    raise DataFormatError(f"{table.path}: field {name!r} has type {table.types[name]!r}; expected token or token_seq")


def item_features(
    table: AtomicTable,
    item_vocab: Vocabulary,
    attribute_fields: Sequence[str] | None = None,
    text_fields: Sequence[str] | None = None,
) -> ItemFeatures:
    """Align an item table with ``item_vocab``.

    Attributes: every token of the ``attribute_fields`` (default ``class``, MovieLens genres)
    becomes one multi-hot column, columns sorted by name. Text: the first ``text_fields``
    value, then the others in parentheses; by default a title field and a year field when the
    table has them (:func:`_default_text_fields`: ``movie_title (release_year)`` for MovieLens,
    ``"Toy Story (1995)"``), else no text. Items of the table that are not in the vocabulary
    are ignored; vocabulary items the table lacks get no attributes and empty text.
    """
    if ITEM_FIELD not in table.types:
        raise DataFormatError(f"{table.path}: no {ITEM_FIELD!r} field; the header has {list(table.types)}")
    attribute_fields = _pick(table, attribute_fields, DEFAULT_ATTRIBUTE_FIELDS, "attribute")
    text_fields = _default_text_fields(table) if text_fields is None else _pick(table, text_fields, (), "text")

    rows = item_vocab.encode(table.columns[ITEM_FIELD], unknown="skip")
    known = np.isin(table.columns[ITEM_FIELD], item_vocab.raw_ids)
    positions = np.flatnonzero(known)

    per_item_tokens: list[list[str]] = [[] for _ in positions]
    for name in attribute_fields:
        tokens = _tokens(table, name)
        for slot, pos in enumerate(positions):
            per_item_tokens[slot].extend(f"{name}={t}" if len(attribute_fields) > 1 else str(t) for t in tokens[pos])
    names = sorted({t for tokens in per_item_tokens for t in tokens})
    column_of = {n: c for c, n in enumerate(names)}
    attributes = np.zeros((len(item_vocab), len(names)), dtype=np.float32)
    for row, tokens in zip(rows, per_item_tokens):
        attributes[row, [column_of[t] for t in tokens]] = 1.0

    text = [""] * len(item_vocab)
    if text_fields:
        parts = [[" ".join(t) for t in _tokens(table, name)] for name in text_fields]
        for row, pos in zip(rows, positions):
            head, *rest = (p[pos] for p in parts)
            extra = " ".join(f"({r})" for r in rest if r)
            text[row] = f"{head} {extra}".strip() if extra else head
    return ItemFeatures(attributes, names, text)
