"""The raw item tokens behind a RecBole model's item ids 1..n, in id order.

RecBole (``recbole/data/dataset/dataset.py``, 1.x) reads the atomic ``.inter`` file, filters it
(``_data_filtering``: rows without a user or item; ``val_interval``; ``user_inter_num_interval`` and
``item_inter_num_interval``), then numbers the item tokens with ``pandas.factorize`` in order of first
appearance in the filtered file: the first token seen gets id 1, and id 0 is ``[PAD]``. A checkpoint
stores only the ids, so the tokens come from one of:

* a **token list**: a text file with one raw item token per line in id order (id 1 first), as
  ``dataset.field2id_token[ITEM_ID_FIELD]`` holds them; a first line ``[PAD]`` is skipped;
* the **dataset** (its ``.inter`` file, or the folder holding ``<dataset>.inter``), to which the
  checkpoint's RecBole settings are applied as RecBole applies them. Supported: ``USER_ID_FIELD``,
  ``ITEM_ID_FIELD``, ``val_interval``, both ``*_inter_num_interval`` (iterated as RecBole iterates
  them), ``load_col`` loading no ``.item`` / ``.user`` file; pandas' default missing-value strings (``NA``,
  ``null``, ``None``, an empty field, ...) count as missing, as RecBole's ``pandas.read_csv`` makes
  them. Settings that change the numbering in other ways (``rm_dup_inter``, ``alias_of_item_id``,
  ``benchmark_filename``, loaded ``.item`` / ``.user`` files, a separator other than a tab, quoted
  tokens) are refused with a pointer to the token list.

Either way the caller checks the count against the checkpoint's item table, so a list from another
dataset (or another filtering) fails loudly instead of mislabelling items.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from zoo.data.vocab import PAD_TOKEN, factorize

# pandas' default missing-value strings (pandas 2.x ``read_csv`` na_values); RecBole reads tokens as str with them.
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
UNSUPPORTED_SETTINGS = ("rm_dup_inter", "alias_of_item_id", "alias_of_user_id", "alias_of_entity_id",
                        "alias_of_relation_id", "benchmark_filename")
TOKEN_LIST_HINT = (
    "write the token list where RecBole runs instead: "
    "open('items.txt', 'w').write('\\n'.join(dataset.field2id_token[config['ITEM_ID_FIELD']]) + '\\n')"
)

Interval = tuple[str, float, float, str]


class VocabularySourceError(ValueError):
    """A dataset or token list that cannot give the checkpoint's item tokens (the message names the file)."""


def read_token_list(path: str | os.PathLike) -> list[str]:
    """Raw item tokens, one per line in id order; a first line ``[PAD]`` (RecBole's id 0) is skipped."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0] == PAD_TOKEN:
        lines = lines[1:]
    blank = [i for i, line in enumerate(lines, start=1) if not line.strip()]
    if blank:
        raise VocabularySourceError(f"{path}: line {blank[0]} is blank; a token list holds one raw item token per line")
    if not lines:
        raise VocabularySourceError(f"{path}: no item tokens")
    return lines


def inter_file(source: Path, settings: Mapping[str, Any]) -> Path:
    """The ``.inter`` file of a dataset folder (``<dataset>.inter``, RecBole's layout) or the file itself."""
    if source.is_file():
        return source
    names = [f"{settings['dataset']}.inter"] if settings.get("dataset") else []
    names.append(f"{source.name}.inter")
    for name in names:
        if (source / name).is_file():
            return source / name
    found = sorted(p.name for p in source.glob("*.inter"))
    raise VocabularySourceError(f"{source}: no {' or '.join(names)} in the folder (found: {', '.join(found) or 'none'})")


def recbole_item_tokens(path: str | os.PathLike, settings: Mapping[str, Any]) -> list[str]:
    """The item tokens RecBole numbers 1..n for the ``.inter`` file ``path`` under ``settings`` (its config)."""
    path = Path(path)
    _refuse_unsupported(path, settings)
    user_field = str(settings.get("USER_ID_FIELD") or "user_id")
    item_field = str(settings.get("ITEM_ID_FIELD") or "item_id")
    values = settings.get("val_interval") or {}
    columns, types = _read_columns(path, [user_field, item_field, *values])
    users, items = columns[user_field], columns[item_field]
    keep = ~(np.isin(users, list(PANDAS_NA)) | np.isin(items, list(PANDAS_NA)))
    for field, allowed in values.items():
        keep &= _value_filter(columns[field], types[field], allowed, path, field)
    keep[keep] = _inter_num_filter(users[keep], items[keep], _intervals(settings.get("user_inter_num_interval")),
                                   _intervals(settings.get("item_inter_num_interval")))
    tokens, _ = factorize(items[keep])
    return tokens.tolist()


def _refuse_unsupported(path: Path, settings: Mapping[str, Any]) -> None:
    """Raise when the settings number items in a way :func:`recbole_item_tokens` does not reproduce."""
    used = {key: settings[key] for key in UNSUPPORTED_SETTINGS if settings.get(key)}
    separator = settings.get("field_separator", "\t")
    if separator != "\t":
        used["field_separator"] = separator
    load_col = settings.get("load_col", {"inter": None})
    # load_col None loads every atomic file there is; .item / .user ids join the numbering and filter the rows
    loaded = set(load_col) if load_col is not None else {f.suffix[1:] for f in path.parent.glob(f"{path.stem}.*")}
    if loaded & {"item", "user"}:
        used["load_col"] = sorted(loaded & {"item", "user"})
    if used:
        raise VocabularySourceError(
            f"{path}: the checkpoint's RecBole settings {used} number the items in a way not reproduced here; "
            + TOKEN_LIST_HINT
        )


def _read_columns(path: Path, fields: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The named columns of a tab-separated atomic file as string arrays in file order, and their header types."""
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\r\n").split("\t")
        types = dict(field.rpartition(":")[::2] for field in header)
        missing = [f for f in dict.fromkeys(fields) if f not in types]
        if missing:
            raise VocabularySourceError(f"{path}:1: no field(s) {missing} in the header {header}")
        index = {f: list(types).index(f) for f in fields}
        numbered = [(no, line.rstrip("\r\n").split("\t")) for no, line in enumerate(handle, start=2) if line.strip()]
    wrong = next((no for no, row in numbered if len(row) != len(header)), None)
    if wrong is not None:
        raise VocabularySourceError(f"{path}:{wrong}: expected the header's {len(header)} tab-separated fields")
    columns = {f: np.array([row[i] for _, row in numbered], dtype=str) for f, i in index.items()}
    quoted = next((f for f in (fields[0], fields[1]) if any('"' in value for value in columns[f])), None)
    if quoted is not None:
        raise VocabularySourceError(f"{path}: field {quoted!r} holds quote characters, which pandas (and so RecBole) "
                                    f"parses as quoting; {TOKEN_LIST_HINT}")
    return columns, {f: types[f] for f in fields}


def _intervals(text: Any) -> list[Interval] | None:
    """RecBole's ``_parse_intervals_str``: ``"[5,inf)"`` or ``"(0,1];[3,4)"`` -> endpoint tuples (None: no filter).

    Like RecBole, malformed intervals are skipped, and no usable interval means no filter."""
    if text is None:
        return None
    intervals = []
    for part in str(text).split(";"):
        part = part.strip()
        ends = part[1:-1].split(",")
        if len(part) < 2 or len(ends) != 2 or part[0] not in "([" or part[-1] not in ")]":
            continue
        intervals.append((part[0], float(ends[0]), float(ends[1]), part[-1]))
    return intervals or None


def _within(values: np.ndarray, intervals: list[Interval]) -> np.ndarray:
    """RecBole's ``_within_intervals``: True where a value lies in any of the intervals."""
    inside = np.zeros(values.shape, dtype=bool)
    for left, low, high, right in intervals:
        above = values >= low if left == "[" else values > low
        below = values <= high if right == "]" else values < high
        inside |= above & below
    return inside


def _value_filter(column: np.ndarray, kind: str, allowed: Any, path: Path, field: str) -> np.ndarray:
    """RecBole's ``_filter_by_field_value`` for one field: intervals for a ``float`` field, a token list otherwise."""
    if kind.startswith("float"):
        intervals = _intervals(allowed)
        numbers = np.array([math.nan if v in PANDAS_NA else _number(v, path, field) for v in column], dtype=float)
        return _within(numbers, intervals) if intervals else np.ones(len(column), dtype=bool)
    return np.isin(column, [str(token) for token in allowed])


def _number(text: str, path: Path, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise VocabularySourceError(f"{path}: field {field!r} holds {text!r}, not a number") from None


def _inter_num_filter(users: np.ndarray, items: np.ndarray, user_intervals: list[Interval] | None,
                      item_intervals: list[Interval] | None) -> np.ndarray:
    """RecBole's ``_filter_by_inter_num``: rows kept after banning users and items whose interaction count
    lies outside their intervals, all bans of a round at once, until a round bans nothing."""
    keep = np.ones(len(users), dtype=bool)
    fields = [(factorize(column)[1], intervals)
              for column, intervals in ((users, user_intervals), (items, item_intervals)) if intervals]
    counts = [np.bincount(codes) for codes, _ in fields]
    while True:
        dropped = np.zeros(len(users), dtype=bool)
        for (codes, intervals), count in zip(fields, counts):
            banned = (count > 0) & ~_within(count, intervals)
            dropped |= keep & banned[codes]
        if not dropped.any():
            return keep
        for (codes, _), count in zip(fields, counts):
            count -= np.bincount(codes[dropped], minlength=len(count))
        keep &= ~dropped
