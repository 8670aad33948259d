"""Readers for RecBole atomic files (``.inter``, ``.item``) and plain CSV/TSV interaction logs.

Atomic files are tab-separated with a typed header, ``name:type``, where type is one of
``token`` (a string id), ``token_seq`` (space-separated tokens), ``float`` and ``float_seq``
(space-separated numbers). CSV/TSV logs hold ``user, item, timestamp[, rating]`` in that
column order, with or without a header line. Every malformed line is reported with the file
name and its 1-based line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
USER_FIELD, ITEM_FIELD, TIME_FIELD, RATING_FIELD = "user_id", "item_id", "timestamp", "rating"


class DataFormatError(ValueError):
    """A data file that does not follow its format; the message names the file and line."""


@dataclass
class AtomicTable:
    """The columns of one atomic file: ``columns[name]`` is a numpy array (``token``: str,
    ``float``: float64) or a list of per-row arrays (``token_seq``, ``float_seq``)."""

    path: str
    types: dict[str, str]
    columns: dict[str, Any]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclass
class RawInteractions:
    """Interactions as read, in file order: raw ids as strings, timestamps and optional ratings."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None
    source: str
    time_source: str = "timestamp"

    def __post_init__(self) -> None:
        n = len(self.users)
        lengths = {"items": len(self.items), "timestamps": len(self.timestamps)}
        if self.ratings is not None:
            lengths["ratings"] = len(self.ratings)
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"interaction columns differ in length: users {n}, {wrong}")

    def __len__(self) -> int:
        return len(self.users)


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers (line endings stripped)."""
    with open(path, encoding="utf-8") as handle:
        return [(no, line.rstrip("\r\n")) for no, line in enumerate(handle, start=1) if line.strip()]


def _to_float(values: list[str], path: Path, line_numbers: list[int], column: str) -> np.ndarray:
    """Parse a column of numbers; on failure name the first bad line."""
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        for value, no in zip(values, line_numbers):
            try:
                float(value)
            except ValueError:
                raise DataFormatError(
                    f"{path}:{no}: column {column!r} must be a number, got {value!r}"
                ) from None
        raise


def _parse_header(path: Path, header: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for field in header.split("\t"):
        name, sep, kind = field.strip().rpartition(":")
        if not sep or not name:
            raise DataFormatError(
                f"{path}:1: header field {field!r} has no type; expected 'name:type' with type in {FIELD_TYPES}"
            )
        if kind not in FIELD_TYPES:
            raise DataFormatError(f"{path}:1: field {name!r} has unknown type {kind!r}; expected one of {FIELD_TYPES}")
        if name in types:
            raise DataFormatError(f"{path}:1: field {name!r} appears twice in the header")
        types[name] = kind
    return types


def read_atomic(path: str | Path) -> AtomicTable:
    """Read a RecBole atomic file (tab-separated, typed header) into columns."""
    path = Path(path)
    lines = _data_lines(path)
    if not lines:
        raise DataFormatError(f"{path}: the file is empty; expected a header line 'name:type<TAB>...'")
    _, header = lines[0]
    types = _parse_header(path, header)
    names = list(types)
    rows = lines[1:]
    numbers = [no for no, _ in rows]
    split = [line.split("\t") for _, line in rows]
    for no, parts in zip(numbers, split):
        if len(parts) != len(names):
            raise DataFormatError(
                f"{path}:{no}: expected {len(names)} tab-separated fields ({', '.join(names)}), got {len(parts)}"
            )
    cells = [list(column) for column in zip(*split)] if split else [[] for _ in names]
    columns: dict[str, Any] = {}
    for name, values in zip(names, cells):
        kind = types[name]
        if kind == "token":
            columns[name] = np.array(values, dtype=str) if values else np.zeros(0, dtype="<U1")
        elif kind == "float":
            columns[name] = _to_float(values, path, numbers, name)
        elif kind == "token_seq":
            columns[name] = [np.array(v.split(), dtype=str) for v in values]
        else:
            columns[name] = [_to_float(v.split(), path, [no] * len(v.split()), name) for v, no in zip(values, numbers)]
    return AtomicTable(str(path), types, columns)


def read_inter(path: str | Path) -> RawInteractions:
    """Read a RecBole ``.inter`` file: ``user_id`` and ``item_id`` tokens, optional ``timestamp`` and
    ``rating`` floats. Without a timestamp column the line order is the time order."""
    table = read_atomic(path)
    missing = [f for f in (USER_FIELD, ITEM_FIELD) if f not in table.types]
    if missing:
        raise DataFormatError(f"{path}: missing field(s) {missing}; the header has {list(table.types)}")
    for field, kind in ((USER_FIELD, "token"), (ITEM_FIELD, "token"), (TIME_FIELD, "float"), (RATING_FIELD, "float")):
        if field in table.types and table.types[field] != kind:
            raise DataFormatError(f"{path}:1: field {field!r} must have type {kind!r}, got {table.types[field]!r}")
    n = len(table)
    has_time = TIME_FIELD in table.columns
    return RawInteractions(
        users=table.columns[USER_FIELD],
        items=table.columns[ITEM_FIELD],
        timestamps=table.columns[TIME_FIELD] if has_time else np.arange(n, dtype=np.float64),
        ratings=table.columns.get(RATING_FIELD),
        source=str(path),
        time_source="timestamp" if has_time else "line order",
    )


def _delimiter(path: Path, first_line: str) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".tsv" or "\t" in first_line:
        return "\t"
    if suffix == ".csv" or "," in first_line:
        return ","
    return None  # runs of whitespace


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: str | Path, delimiter: str | None = None) -> RawInteractions:
    """Read a CSV/TSV log of ``user, item, timestamp[, rating]`` (columns in that order).

    The delimiter comes from the suffix (``.tsv`` tab, ``.csv`` comma) or the first line (tab,
    comma, else whitespace) unless given. A first line whose timestamp column is not a number
    is taken as a header and skipped. Every line must have the same 3 or 4 columns.
    """
    path = Path(path)
    lines = _data_lines(path)
    if not lines:
        raise DataFormatError(f"{path}: the file is empty; expected lines 'user,item,timestamp[,rating]'")
    sep = delimiter if delimiter is not None else _delimiter(path, lines[0][1])
    first = [p.strip() for p in lines[0][1].split(sep)]
    if len(first) >= 3 and not _is_number(first[2]):
        lines = lines[1:]
        if not lines:
            raise DataFormatError(f"{path}: only a header line, no interactions")
    width = len(lines[0][1].split(sep))
    if width not in (3, 4):
        raise DataFormatError(
            f"{path}:{lines[0][0]}: expected 3 or 4 columns (user, item, timestamp[, rating]), got {width}"
        )
    names = ["user", "item", "timestamp", "rating"][:width]
    split = [line.split(sep) for _, line in lines]
    for (no, _), parts in zip(lines, split):
        if len(parts) != width:
            raise DataFormatError(f"{path}:{no}: expected {width} columns ({', '.join(names)}), got {len(parts)}")
    cells = [[part.strip() for part in column] for column in zip(*split)]
    numbers = [no for no, _ in lines]
    return RawInteractions(
        users=np.array(cells[0], dtype=str),
        items=np.array(cells[1], dtype=str),
        timestamps=_to_float(cells[2], path, numbers, "timestamp"),
        ratings=_to_float(cells[3], path, numbers, "rating") if width == 4 else None,
        source=str(path),
    )
