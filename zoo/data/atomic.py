"""Readers for RecBole atomic files (``.inter``, ``.item``) and the text checks every reader shares.

Atomic files are tab-separated with a typed header, ``name:type``, where type is one of
``token`` (a string id), ``token_seq`` (space-separated tokens), ``float`` and ``float_seq``
(space-separated numbers). Files are UTF-8 (a leading byte-order mark is dropped); bytes that
are not UTF-8 are reported with the file, line and column. Every malformed line is reported
with the file name and its 1-based line number. CSV/TSV logs: :mod:`zoo.data.csv_log`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    line_numbers: list[int] = field(default_factory=list)  # the 1-based file line of every row
    header_line: int = 1

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
    time_format: str | None = None  # how the file wrote timestamps, when a reader had to decide it (CSV)
    columns: dict[str, str] | None = None  # where each column came from, when a reader had to decide it (CSV)

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


def data_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a UTF-8 file with their 1-based line numbers (line endings and a leading byte-order
    mark stripped); bytes that are not UTF-8 raise a :class:`DataFormatError` naming the line and column."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return [(no, line.rstrip("\r\n")) for no, line in enumerate(handle, start=1) if line.strip()]
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataFormatError:
    """The error for a file that is not UTF-8, naming the first undecodable byte's line and column."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return DataFormatError(f"{path}:{line}: byte 0x{data[error.start]:02x} at column {column} is not UTF-8 text; "
                               "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return DataFormatError(f"{path}: the file is not UTF-8 text; save it as UTF-8")


def to_float(values: list[str], path: Path, line_numbers: list[int], column: str) -> np.ndarray:
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


def check_finite(values: np.ndarray, path: str | Path, line_numbers: list[int], column: str) -> None:
    """Refuse NaN and infinite numbers (``nan``, ``inf``, ``1e400``), naming the first such line."""
    broken = np.flatnonzero(~np.isfinite(values))
    if len(broken):
        row = int(broken[0])
        raise DataFormatError(f"{path}:{line_numbers[row]}: column {column!r} is {values[row]}; it must be a finite number")


def check_ids(values: np.ndarray, path: str | Path, line_numbers: list[int], column: str) -> None:
    """Refuse empty ids, naming the first such line."""
    empty = np.flatnonzero(values == "")
    if len(empty):
        raise DataFormatError(f"{path}:{line_numbers[int(empty[0])]}: column {column!r} is empty; every interaction "
                              "needs a user and an item id")


def _parse_header(path: Path, line_number: int, header: str) -> dict[str, str]:
    types: dict[str, str] = {}
    for entry in header.split("\t"):
        name, sep, kind = entry.strip().rpartition(":")
        if not sep or not name:
            raise DataFormatError(
                f"{path}:{line_number}: header field {entry!r} has no type; expected 'name:type' with type in {FIELD_TYPES}"
            )
        if kind not in FIELD_TYPES:
            raise DataFormatError(f"{path}:{line_number}: field {name!r} has unknown type {kind!r}; expected one of {FIELD_TYPES}")
        if name in types:
            raise DataFormatError(f"{path}:{line_number}: field {name!r} appears twice in the header")
        types[name] = kind
    return types


def read_atomic(path: str | Path) -> AtomicTable:
    """Read a RecBole atomic file (tab-separated, typed header) into columns."""
    path = Path(path)
    lines = data_lines(path)
    if not lines:
        raise DataFormatError(f"{path}: the file is empty; expected a header line 'name:type<TAB>...'")
    header_line, header = lines[0]
    types = _parse_header(path, header_line, header)
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
            columns[name] = to_float(values, path, numbers, name)
        elif kind == "token_seq":
            columns[name] = [np.array(v.split(), dtype=str) for v in values]
        else:
            columns[name] = [to_float(v.split(), path, [no] * len(v.split()), name) for v, no in zip(values, numbers)]
    return AtomicTable(str(path), types, columns, numbers, header_line)


def read_inter(path: str | Path) -> RawInteractions:
    """Read a RecBole ``.inter`` file: ``user_id`` and ``item_id`` tokens (not empty), optional ``timestamp`` and
    ``rating`` floats (finite). Without a timestamp column the line order is the time order."""
    table = read_atomic(path)
    missing = [f for f in (USER_FIELD, ITEM_FIELD) if f not in table.types]
    if missing:
        raise DataFormatError(f"{path}: missing field(s) {missing}; the header has {list(table.types)}")
    for name, kind in ((USER_FIELD, "token"), (ITEM_FIELD, "token"), (TIME_FIELD, "float"), (RATING_FIELD, "float")):
        if name in table.types and table.types[name] != kind:
            raise DataFormatError(f"{path}:{table.header_line}: field {name!r} must have type {kind!r}, "
                                  f"got {table.types[name]!r}")
        if name in table.columns:
            check = check_ids if kind == "token" else check_finite
            check(table.columns[name], path, table.line_numbers, name)
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
