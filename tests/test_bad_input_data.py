"""Bad or unusual interaction files, as a user meets them: CSV/TSV logs and RecBole ``.inter`` files, read by
``read_csv`` / ``read_inter`` and by ``load_dataset``, the path ``zoo train --data`` takes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from zoo.data import DataFormatError, load_dataset, read_csv, read_inter

pytestmark = pytest.mark.kernel_independent  # the kernels-off pass leaves it out (pyproject.toml)

# 2023-11-14T22:13:20Z, computed rather than trusted to the reader's own arithmetic.
T0 = int(datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc).timestamp())
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def history(dataset, user):
    """Raw item ids and timestamps of one raw user, in the dataset's (time) order."""
    row = int(dataset.user_vocab.encode([user])[0])
    start, end = dataset.sequences.starts[row], dataset.sequences.starts[row] + dataset.sequences.lengths[row]
    return dataset.decode_items(dataset.sequences[row]), dataset.sequences.timestamps[start:end].tolist()


@pytest.fixture
def far_from_utc(monkeypatch):
    """A local zone far from UTC, so reading a naive time as local time shows up."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available")
    monkeypatch.setenv("TZ", "XYZ+07")  # POSIX rule: UTC-7, no zone files needed
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ---------------------------------------------------------------- CSV header by name


@pytest.mark.parametrize("header, row", [
    ("item,user,timestamp", "{i},{u},{t}"),
    ("timestamp,rating,item,user", "{t},4,{i},{u}"),
    ("user,timestamp,item", "{u},{t},{i}"),
])
def test_csv_header_columns_in_any_order(tmp_path, header, row):
    lines = [row.format(u=u, i=i, t=t) for u, i, t in [("u1", "a", 30), ("u2", "b", 10), ("u1", "c", 20)]]
    raw = read_csv(write(tmp_path / "log.csv", "\n".join([header, *lines]) + "\n"))
    assert raw.users.tolist() == ["u1", "u2", "u1"]
    assert raw.items.tolist() == ["a", "b", "c"]
    assert raw.timestamps.tolist() == [30.0, 10.0, 20.0]
    assert raw.columns == {"user": "user", "item": "item", "timestamp": "timestamp",
                           **({"rating": "rating"} if "rating" in header else {})}


def test_swapped_header_through_load_dataset(tmp_path):
    """``item,user,timestamp``: the dataset has users' histories, not items' audiences."""
    write(tmp_path / "log.csv", "item,user,timestamp\nm1,alice,3\nm2,alice,1\nm3,bob,2\nm1,bob,5\n")
    data = load_dataset(tmp_path / "log.csv")
    assert data.num_users == 2 and data.num_items == 3
    assert history(data, "alice") == (["m2", "m1"], [1.0, 3.0])
    assert history(data, "bob") == (["m3", "m1"], [2.0, 5.0])
    assert data.facts["columns"] == {"user": "user", "item": "item", "timestamp": "timestamp"}


@pytest.mark.parametrize("header, expected", [
    ("userId,movieId,rating,timestamp",
     {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}),
    ("USER_ID,Item_Id,Time", {"user": "USER_ID", "item": "Item_Id", "timestamp": "Time"}),
    ("itemid,ts,UserID", {"item": "itemid", "timestamp": "ts", "user": "UserID"}),
])
def test_csv_header_aliases_ignore_case(tmp_path, header, expected):
    values = {"user": "u7", "item": "i9", "timestamp": "123", "rating": "2.5"}
    roles = list(expected)
    row = ",".join(values[role] for role in roles)
    raw = read_csv(write(tmp_path / "ratings.csv", f"{header}\n{row}\n"))
    assert raw.columns == expected
    assert raw.users.tolist() == ["u7"] and raw.items.tolist() == ["i9"] and raw.timestamps.tolist() == [123.0]
    assert (raw.ratings is None) == ("rating" not in expected)
    if raw.ratings is not None:
        assert raw.ratings.tolist() == [2.5]


def test_movielens_ratings_csv_loads_with_its_own_header(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"
                                    "2,10,4.0,835355493\n")
    data = load_dataset(tmp_path / "ratings.csv", rating_threshold=3.0)
    assert data.num_users == 2 and data.num_interactions == 2  # the 2.5 rating is filtered, so ratings were read
    assert history(data, "1") == (["1029"], [1260759179.0])
    assert data.facts["columns"]["item"] == "movieId"
    assert data.facts["time_format"] == "unix seconds"


@pytest.mark.parametrize("header, message", [
    ("user,product,timestamp", "unknown column name(s) ['product']"),
    ("user,item,timestamp,score", "unknown column name(s) ['score']"),
    ("user,userId,item,timestamp", "'user' and 'userId' both name the user column"),
    ("user,item,rating", "has no timestamp column"),
    ("item,rating,timestamp", "has no user column"),
])
def test_bad_csv_headers_name_the_problem_and_the_accepted_names(tmp_path, header, message):
    width = len(header.split(","))
    path = write(tmp_path / "log.csv", f"{header}\n" + ",".join(["x"] * (width - 1) + ["1"]) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_dataset(path)
    text = str(info.value)
    assert f"{path}:1:" in text and message in text
    if "both name" not in text:
        for accepted in ("userId", "item_id", "movieId", "timestamp", "time", "rating"):
            assert accepted in text


def test_csv_without_header_is_read_by_position(tmp_path):
    raw = read_csv(write(tmp_path / "log.tsv", "7\t3\t100\t1.5\n3\t7\t200\t2\n"))
    assert raw.users.tolist() == ["7", "3"] and raw.items.tolist() == ["3", "7"]
    assert raw.timestamps.tolist() == [100.0, 200.0] and raw.ratings.tolist() == [1.5, 2.0]
    assert raw.columns == {"user": "column 1", "item": "column 2", "timestamp": "column 3", "rating": "column 4"}


# ---------------------------------------------------------------- ISO-8601 timestamps


@pytest.mark.parametrize("text, seconds", [
    ("2023-11-14T22:13:20Z", T0),
    ("2023-11-14T22:13:20", T0),  # naive: UTC, whatever the machine's zone
    ("2023-11-14 22:13:20", T0),
    ("2023-11-14T23:13:20+01:00", T0),
    ("2023-11-14T23:43:20+0130", T0),
    ("2023-11-14T17:13:20-05:00", T0),
    ("2023-11-14T22:13:20.25Z", T0 + 0.25),
    ("2023-11-14T22:13:20,5", T0 + 0.5),
    ("2023-11-14", T0 - (22 * 3600 + 13 * 60 + 20)),
])
def test_iso_timestamps_are_unix_seconds(tmp_path, far_from_utc, text, seconds):
    raw = read_csv(write(tmp_path / "log.tsv", f"user\titem\ttimestamp\nu\ta\t{text}\n"))  # tabs: "20,5" has a comma
    assert raw.timestamps.tolist() == [pytest.approx(seconds, abs=1e-6)]
    assert raw.time_format.startswith("iso-8601")


def test_iso_timestamps_order_the_dataset_across_zones(tmp_path, far_from_utc):
    # In file order a, b, c; in time order c (05:00Z), a (06:00Z), b (07:00Z).
    write(tmp_path / "log.csv", "u,a,2023-01-01T06:00:00Z\nu,b,2023-01-01T08:00:00+01:00\n"
                                "u,c,2023-01-01T10:00:00+05:00\n")
    data = load_dataset(tmp_path / "log.csv")
    items, stamps = history(data, "u")
    assert items == ["c", "a", "b"]
    base = datetime(2023, 1, 1, tzinfo=timezone.utc).timestamp()
    assert stamps == [base + 5 * 3600, base + 6 * 3600, base + 7 * 3600]
    assert data.facts["time_format"].startswith("iso-8601")
    assert data.facts["columns"] == {"user": "column 1", "item": "column 2", "timestamp": "column 3"}
    assert json.loads(json.dumps(data.to_dict()))["time_format"] == data.facts["time_format"]


@pytest.mark.parametrize("lines, line, words", [
    (["u,a,1700000000", "u,b,2023-11-14T22:13:20"], 3, ["ISO-8601", "line 2", "Unix seconds"]),
    (["u,a,2023-11-14T22:13:20", "u,b,1700000000"], 3, ["is Unix seconds", "line 2", "ISO-8601"]),
    (["u,a,2023-11-14T22:13:20", "u,b,2023-13-01T00:00:00"], 3, ["not a valid ISO-8601"]),
    (["u,a,2023-11-14T22:13:20", "u,b,yesterday"], 3, ["'yesterday'"]),
])
def test_mixed_or_broken_timestamp_formats_are_errors(tmp_path, lines, line, words):
    path = write(tmp_path / "log.csv", "\n".join(["user,item,timestamp", *lines]) + "\n")
    with pytest.raises(DataFormatError) as info:
        read_csv(path)
    assert f"{path}:{line}:" in str(info.value)
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------- non-finite numbers and empty ids


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "1e400"])
@pytest.mark.parametrize("column", ["timestamp", "rating"])
def test_csv_non_finite_numbers_name_file_and_line(tmp_path, bad, column):
    good = {"timestamp": "5", "rating": "4"}
    row = {**good, column: bad}
    path = write(tmp_path / "log.csv", f"user,item,timestamp,rating\nu,a,1,3\nu,b,{row['timestamp']},{row['rating']}\n")
    with pytest.raises(DataFormatError) as info:
        load_dataset(path)
    assert f"{path}:3:" in str(info.value) and f"'{column}'" in str(info.value) and "finite" in str(info.value)


@pytest.mark.parametrize("line, column", [("u,,5", "item"), (",a,5", "user"), ("  ,a,5", "user")])
def test_csv_empty_ids_are_refused(tmp_path, line, column):
    path = write(tmp_path / "log.csv", f"user,item,timestamp\nu,a,1\n{line}\n")
    with pytest.raises(DataFormatError) as info:
        read_csv(path)
    assert f"{path}:3:" in str(info.value) and f"'{column}' is empty" in str(info.value)


# ---------------------------------------------------------------- text encoding


def test_csv_byte_order_mark_is_dropped(tmp_path):
    """Excel's "CSV UTF-8": no phantom user '\\ufeff1' and a header still read by name."""
    path = write(tmp_path / "log.csv", "\ufeff1,10,100\n1,11,200\n2,10,300\n")
    raw = read_csv(path)
    assert raw.users.tolist() == ["1", "1", "2"]
    data = load_dataset(path)
    assert data.num_users == 2 and sorted(data.user_vocab.decode(range(2))) == ["1", "2"]
    raw = read_csv(write(tmp_path / "named.csv", "\ufeffitem,user,timestamp\n10,1,100\n"))
    assert raw.users.tolist() == ["1"] and raw.items.tolist() == ["10"]
    assert raw.columns["user"] == "user"


@pytest.mark.parametrize("reader, name, text", [
    (read_csv, "log.csv", "user,item,timestamp\nu,a,1\nu,caf\xe9,2\n"),
    (read_inter, "log.inter", INTER_HEADER + "u\ta\t1\t1\nu\tcaf\xe9\t1\t2\n"),
])
def test_non_utf8_bytes_name_file_line_and_column(tmp_path, reader, name, text):
    path = write(tmp_path / name, text, encoding="latin-1")
    for read in (reader, load_dataset):
        with pytest.raises(DataFormatError) as info:
            read(path)
        message = str(info.value)
        assert f"{path}:3:" in message and "column 6" in message and "0xe9" in message and "UTF-8" in message


# ---------------------------------------------------------------- RecBole .inter files


def test_inter_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path / "toy.inter", "\ufeff" + INTER_HEADER + "u1\ti1\t5\t20\nu1\ti2\t3\t10\n")
    raw = read_inter(path)
    assert raw.users.tolist() == ["u1", "u1"] and raw.timestamps.tolist() == [20.0, 10.0]
    assert raw.ratings.tolist() == [5.0, 3.0]
    assert history(load_dataset(tmp_path), "u1") == (["i2", "i1"], [10.0, 20.0])


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("column", ["timestamp", "rating"])
def test_inter_non_finite_numbers_name_file_and_line(tmp_path, bad, column):
    row = {"timestamp": "7", "rating": "4", column: bad}
    bad_line = f"u1\ti2\t{row['rating']}\t{row['timestamp']}\n"
    path = write(tmp_path / "toy.inter", INTER_HEADER + "u1\ti1\t5\t1\n\n" + bad_line)
    for read in (read_inter, load_dataset):
        with pytest.raises(DataFormatError) as info:
            read(path)
        assert f"{path}:4:" in str(info.value) and f"'{column}'" in str(info.value)  # the blank line 3 counts


@pytest.mark.parametrize("line, column", [("\ti1\t5\t1", "user_id"), ("u1\t\t5\t1", "item_id")])
def test_inter_empty_ids_are_refused(tmp_path, line, column):
    path = write(tmp_path / "toy.inter", INTER_HEADER + "u1\ti1\t5\t1\n" + line + "\n")
    with pytest.raises(DataFormatError) as info:
        load_dataset(path)
    assert f"{path}:3:" in str(info.value) and f"'{column}' is empty" in str(info.value)


def test_inter_dataset_has_no_csv_facts(tmp_path):
    data = load_dataset(write(tmp_path / "toy.inter", INTER_HEADER + "u1\ti1\t5\t1\n"))
    assert "time_format" not in data.facts and "columns" not in data.facts
    assert np.isfinite(data.sequences.timestamps).all()
