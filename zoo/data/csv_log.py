"""Reader for CSV/TSV interaction logs: ``user, item, timestamp[, rating]``.

* **Columns.** A file whose first line is a header is read by column name, in any order; the
  names are matched ignoring case (:data:`COLUMN_NAMES`: ``userId``, ``movieId``, ``time``, ...).
  An unknown, repeated or missing name is an error that lists the accepted ones. A file without a
  header is read by position: user, item, timestamp, then an optional rating. The first line is a
  header when its third field is not a timestamp.
* **Timestamps.** Unix seconds (a number) or ISO-8601 date-times (``2023-11-14T23:10:46``, a space
  for the ``T``, optional fractional seconds and a zone ``Z`` / ``+01:00`` / ``+0100``; a date
  alone is midnight). Naive times are read as UTC. The first interaction's timestamp sets the
  format for the whole file, and a line in the other format is an error. Timestamps and ratings
  must be finite numbers; user and item ids must not be empty.
* **Text.** UTF-8, with a leading byte-order mark dropped (see :func:`zoo.data.atomic.data_lines`).

Which columns were used and how timestamps were written are kept in
:attr:`RawInteractions.columns` / :attr:`RawInteractions.time_format` (and so in the dataset's
facts) and logged at INFO level on the ``zoo.data`` logger.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from zoo.data.atomic import DataFormatError, RawInteractions, check_finite, check_ids, data_lines, to_float

log = logging.getLogger("zoo.data")

ROLES = ("user", "item", "timestamp", "rating")  # also the column order of a file without a header
REQUIRED_ROLES = ROLES[:3]
COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId"),
    "item": ("item", "item_id", "itemId", "movieId"),
    "timestamp": ("timestamp", "time", "ts"),
    "rating": ("rating",),
}
ROLE_OF_NAME = {name.lower(): role for role, names in COLUMN_NAMES.items() for name in names}
UNIX_SECONDS, ISO_8601 = "unix seconds", "iso-8601 (naive times read as UTC)"
ISO_PATTERN = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)


@dataclass(frozen=True)
class Layout:
    """Where each role's column is (0-based), what the columns are called, and the header's line (or None)."""

    positions: dict[str, int]
    names: list[str]
    header_line: int | None

    def describe(self) -> dict[str, str]:
        """Role -> the header name it was read from, or ``column N`` (1-based) without a header."""
        if self.header_line is None:
            return {role: f"column {position + 1}" for role, position in self.positions.items()}
        return {role: self.names[position] for role, position in self.positions.items()}


def accepted_names() -> str:
    """The accepted header names, for error messages."""
    return "; ".join(f"{role}: {', '.join(names)}" for role, names in COLUMN_NAMES.items())


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _zone(text: str | None) -> timezone:
    """The zone of an ISO-8601 suffix (``Z``, ``+01:00``, ``+0100``, ``+01``); none means UTC."""
    if text is None or text in ("Z", "z"):
        return timezone.utc
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes >= 60:
        raise ValueError(f"zone minutes {minutes} >= 60")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


def iso_seconds(text: str) -> float | None:
    """Unix seconds of an ISO-8601 date-time (naive: UTC), or None when ``text`` is not one."""
    match = ISO_PATTERN.fullmatch(text)
    if match is None:
        return None
    year, month, day = (int(part) for part in match["date"].split("-"))
    try:
        moment = datetime(year, month, day, int(match["hour"] or 0), int(match["minute"] or 0),
                          int(match["second"] or 0), tzinfo=_zone(match["zone"]))
    except ValueError:  # month 13, 25 o'clock, zone +24:00, ...
        return None
    fraction = match["fraction"]
    return moment.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def is_timestamp(text: str) -> bool:
    """True for Unix seconds or an ISO-8601 date-time."""
    return is_number(text) or iso_seconds(text) is not None


def _unix_seconds(values: list[str], path: Path, numbers: list[int]) -> np.ndarray:
    """A timestamp column of numbers; an ISO-8601 value among them is a mixed-format error."""
    try:
        return to_float(values, path, numbers, "timestamp")
    except DataFormatError as error:
        row = next(row for row, value in enumerate(values) if not is_number(value))
        if iso_seconds(values[row]) is not None:
            raise DataFormatError(f"{path}:{numbers[row]}: timestamp {values[row]!r} is ISO-8601, but line "
                                  f"{numbers[0]} sets this file's format to Unix seconds; a file uses one format") from None
        raise DataFormatError(f"{error}: this file's timestamps are Unix seconds (line {numbers[0]} sets the "
                              "format; a file uses one)") from None


def _iso_seconds_column(values: list[str], path: Path, numbers: list[int]) -> np.ndarray:
    """A timestamp column of ISO-8601 date-times; a number among them is a mixed-format error."""
    seconds = np.empty(len(values), dtype=np.float64)
    for row, (value, no) in enumerate(zip(values, numbers)):
        parsed = iso_seconds(value)
        if parsed is None:
            kind = "is Unix seconds" if is_number(value) else "is not a valid ISO-8601 date-time"
            raise DataFormatError(f"{path}:{no}: timestamp {value!r} {kind}, but line {numbers[0]} sets this file's "
                                  "format to ISO-8601 date-times; a file uses one format")
        seconds[row] = parsed
    return seconds


def parse_timestamps(values: list[str], path: Path, numbers: list[int]) -> tuple[np.ndarray, str]:
    """Unix seconds of a timestamp column and the format the file uses (its first value decides)."""
    first = values[0]
    if is_number(first):
        seconds, chosen = _unix_seconds(values, path, numbers), UNIX_SECONDS
    elif iso_seconds(first) is not None:
        seconds, chosen = _iso_seconds_column(values, path, numbers), ISO_8601
    else:
        raise DataFormatError(f"{path}:{numbers[0]}: column 'timestamp' must be a number (Unix seconds) or an "
                              f"ISO-8601 date-time such as '2023-11-14T23:10:46' or '2023-11-14T23:10:46+01:00', "
                              f"got {first!r}")
    check_finite(seconds, path, numbers, "timestamp")
    return seconds, chosen


def _delimiter(path: Path, first_line: str) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".tsv" or "\t" in first_line:
        return "\t"
    if suffix == ".csv" or "," in first_line:
        return ","
    return None  # runs of whitespace


def header_layout(path: Path, line_number: int, names: list[str]) -> Layout:
    """The columns named by a header line; unknown, repeated or missing names raise."""
    unknown = [name for name in names if name.lower() not in ROLE_OF_NAME]
    if unknown:
        raise DataFormatError(f"{path}:{line_number}: unknown column name(s) {unknown} in the header {names}; accepted "
                              f"names (any case) are {accepted_names()}. Without a header, columns are read by "
                              "position: user, item, timestamp[, rating]")
    positions: dict[str, int] = {}
    for position, name in enumerate(names):
        role = ROLE_OF_NAME[name.lower()]
        if role in positions:
            raise DataFormatError(f"{path}:{line_number}: the header is ambiguous: {names[positions[role]]!r} and "
                                  f"{name!r} both name the {role} column; keep one")
        positions[role] = position
    missing = [role for role in REQUIRED_ROLES if role not in positions]
    if missing:
        raise DataFormatError(f"{path}:{line_number}: the header {names} has no {' or '.join(missing)} column; "
                              f"accepted names (any case) are {accepted_names()}")
    return Layout(positions, names, line_number)


def positional_layout(path: Path, line_number: int, width: int) -> Layout:
    """Columns by position (a file without a header): user, item, timestamp[, rating]."""
    if width not in (3, 4):
        raise DataFormatError(
            f"{path}:{line_number}: expected 3 or 4 columns (user, item, timestamp[, rating]), got {width}"
        )
    return Layout({role: position for position, role in enumerate(ROLES[:width])}, list(ROLES[:width]), None)


def read_csv(path: str | Path, delimiter: str | None = None) -> RawInteractions:
    """Read a CSV/TSV log of ``user, item, timestamp[, rating]`` (see the module docstring).

    The delimiter comes from the suffix (``.tsv`` tab, ``.csv`` comma) or the first line (tab,
    comma, else whitespace) unless given. Every line must have as many columns as the first.
    """
    path = Path(path)
    lines = data_lines(path)
    if not lines:
        raise DataFormatError(f"{path}: the file is empty; expected lines 'user,item,timestamp[,rating]'")
    sep = delimiter if delimiter is not None else _delimiter(path, lines[0][1])
    first_number, first = lines[0][0], [part.strip() for part in lines[0][1].split(sep)]
    if len(first) >= 3 and not is_timestamp(first[2]):
        layout = header_layout(path, first_number, first)
        lines = lines[1:]
        if not lines:
            raise DataFormatError(f"{path}: only a header line, no interactions")
    else:
        layout = positional_layout(path, first_number, len(first))
    split = [line.split(sep) for _, line in lines]
    numbers = [no for no, _ in lines]
    for no, parts in zip(numbers, split):
        if len(parts) != len(layout.names):
            raise DataFormatError(f"{path}:{no}: expected {len(layout.names)} columns ({', '.join(layout.names)}), "
                                  f"got {len(parts)}")
    cells = [[part.strip() for part in column] for column in zip(*split)]
    column = {role: cells[position] for role, position in layout.positions.items()}
    users, items = np.array(column["user"], dtype=str), np.array(column["item"], dtype=str)
    check_ids(users, path, numbers, "user")
    check_ids(items, path, numbers, "item")
    timestamps, time_format = parse_timestamps(column["timestamp"], path, numbers)
    ratings = None
    if "rating" in column:
        ratings = to_float(column["rating"], path, numbers, "rating")
        check_finite(ratings, path, numbers, "rating")
    log.info("%s: columns %s, timestamps as %s", path, layout.describe(), time_format)
    return RawInteractions(users=users, items=items, timestamps=timestamps, ratings=ratings, source=str(path),
                           time_format=time_format, columns=layout.describe())
