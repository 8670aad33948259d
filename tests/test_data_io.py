"""Readers: RecBole atomic files, CSV/TSV logs, the built-in ml-100k, item side information."""

import importlib.util
import json

import numpy as np
import pytest

from zoo.data import DataFormatError, builtin_path, load_dataset, read_atomic, read_csv, read_inter
from zoo.data.builtin import RECBOLE_INSTALL

HAS_RECBOLE = importlib.util.find_spec("recbole") is not None


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t5\t10\n"
    "u2\ti2\t3\t5\n"
    "u1\ti3\t4\t20\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\tvec:float_seq\n"
    "i1\tToy Story\t1995\tAnimation Comedy\t1.5\t1 2\n"
    "i3\tHeat\t1995\tAction\t2\t3\n"
    "i9\tNot Rated\t2000\tDrama\t0\t\n"
)


def test_read_atomic_types(tmp_path):
    table = read_atomic(write(tmp_path / "x.item", ITEM))
    assert table.types == {"item_id": "token", "movie_title": "token_seq", "release_year": "token",
                           "class": "token_seq", "price": "float", "vec": "float_seq"}
    assert table.columns["item_id"].tolist() == ["i1", "i3", "i9"]
    assert [t.tolist() for t in table.columns["class"]] == [["Animation", "Comedy"], ["Action"], ["Drama"]]
    assert table.columns["price"].dtype == np.float64 and table.columns["price"].tolist() == [1.5, 2.0, 0.0]
    assert [v.tolist() for v in table.columns["vec"]] == [[1.0, 2.0], [3.0], []]


def test_read_inter_columns(tmp_path):
    raw = read_inter(write(tmp_path / "d.inter", INTER))
    assert raw.users.tolist() == ["u1", "u2", "u1"]
    assert raw.items.tolist() == ["i1", "i2", "i3"]
    assert raw.timestamps.tolist() == [10.0, 5.0, 20.0]
    assert raw.ratings.tolist() == [5.0, 3.0, 4.0]
    assert raw.time_source == "timestamp"


def test_read_inter_without_timestamp_uses_line_order(tmp_path):
    raw = read_inter(write(tmp_path / "d.inter", "user_id:token\titem_id:token\na\tx\nb\ty\n"))
    assert raw.timestamps.tolist() == [0.0, 1.0] and raw.ratings is None and raw.time_source == "line order"


@pytest.mark.parametrize(
    "text, message",
    [
        ("user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\n", ":3: expected 3 tab-separated fields"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\nu\ti\tyesterday\n", ":3: column 'timestamp' must be a number, got 'yesterday'"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n\nu\ti\t2\tx\n", ":4: expected 3"),  # blank line counted
        ("user_id\titem_id:token\n", ":1: header field 'user_id' has no type"),
        ("user_id:token\titem_id:tokn\n", "unknown type 'tokn'"),
        ("user_id:token\tmovie:token\nu\ti\n", "missing field(s) ['item_id']"),
        ("user_id:token\titem_id:token\ttimestamp:token\nu\ti\t1\n", "field 'timestamp' must have type 'float'"),
        ("", "the file is empty"),
    ],
)
def test_malformed_inter_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path / "bad.inter", text)
    with pytest.raises(DataFormatError) as info:
        read_inter(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_malformed_float_seq_names_line(tmp_path):
    path = write(tmp_path / "bad.item", "item_id:token\tvec:float_seq\na\t1 2\nb\t3 x\n")
    with pytest.raises(DataFormatError, match=r"bad.item:3: column 'vec' must be a number, got 'x'"):
        read_atomic(path)


@pytest.mark.parametrize("name, sep", [("log.csv", ","), ("log.tsv", "\t"), ("log.txt", " ")])
@pytest.mark.parametrize("header", [True, False])
def test_read_csv_variants(tmp_path, name, sep, header):
    lines = ([sep.join(["user", "item", "time", "rating"])] if header else []) + [
        sep.join(["u1", "a", "3", "4.5"]), sep.join(["u2", "b", "1", "2"])]
    raw = read_csv(write(tmp_path / name, "\n".join(lines) + "\n"))
    assert raw.users.tolist() == ["u1", "u2"] and raw.items.tolist() == ["a", "b"]
    assert raw.timestamps.tolist() == [3.0, 1.0] and raw.ratings.tolist() == [4.5, 2.0]


def test_read_csv_three_columns_no_rating(tmp_path):
    raw = read_csv(write(tmp_path / "log.csv", "u,a,1\nu,b,2\n"))
    assert raw.ratings is None and raw.timestamps.tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("u,a,1\nu,b\n", "log.csv:2: expected 3 columns (user, item, timestamp), got 2"),
        ("user,item,ts\nu,a,1\nu,b,soon\n", "log.csv:3: column 'timestamp' must be a number, got 'soon'"),
        ("u,a,1,5\nu,b,2,good\n", "log.csv:2: column 'rating' must be a number, got 'good'"),
        ("u,a\n", "expected 3 or 4 columns"),
        ("user,item,timestamp\n", "only a header line"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, message):
    with pytest.raises(DataFormatError) as info:
        read_csv(write(tmp_path / "log.csv", text))
    assert message in str(info.value)


def test_load_dataset_from_folder_with_item_features(tmp_path):
    write(tmp_path / "toy.inter", INTER)
    write(tmp_path / "toy.item", ITEM)
    data = load_dataset(tmp_path)
    assert data.name == "toy" and data.num_items == 3 and data.num_users == 2
    features = data.item_features
    assert features.attribute_names == ["Action", "Animation", "Comedy"]
    i1, i2, i3 = data.encode_items(["i1", "i2", "i3"])
    assert features.attributes[i1].tolist() == [0, 1, 1]
    assert features.attributes[i2].tolist() == [0, 0, 0]  # not described in the item file
    assert features.attributes[i3].tolist() == [1, 0, 0]
    assert features.attributes[0].tolist() == [0, 0, 0]  # padding row
    assert features.text[i1] == "Toy Story (1995)" and features.text[i2] == "" and features.text[0] == ""
    assert json.loads(json.dumps(data.to_dict()))["item_features"]["attribute_names"] == features.attribute_names


def test_load_dataset_explicit_fields_must_exist(tmp_path):
    write(tmp_path / "toy.inter", INTER)
    write(tmp_path / "toy.item", ITEM)
    with pytest.raises(DataFormatError, match=r"attribute field\(s\) \['genre'\] not found"):
        load_dataset(tmp_path / "toy.inter", attribute_fields=["genre"])


def test_load_dataset_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in name"):
        load_dataset(tmp_path / "nothing.inter")


def test_missing_recbole_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError) as info:
        builtin_path("ml-100k")
    assert RECBOLE_INSTALL in str(info.value) and "pip install --no-deps recbole==1.2.1" in str(info.value)


def test_unknown_builtin_name():
    with pytest.raises(ValueError, match="built-in datasets are"):
        builtin_path("ml-1m")


@pytest.mark.skipif(not HAS_RECBOLE, reason=f"needs the recbole wheel: {RECBOLE_INSTALL}")
def test_ml_100k_facts():
    data = load_dataset("ml-100k")
    assert (data.num_users, data.num_items, data.num_interactions) == (943, 1682, 100000)
    assert data.sequences.lengths.min() == 20  # MovieLens keeps users with >= 20 ratings
    assert np.all(np.diff(data.sequences.timestamps)[np.diff(data.sequences.row_of_position()) == 0] >= 0)
    features = data.item_features
    assert features.attributes.shape == (1683, 19) and "Animation" in features.attribute_names
    toy_story = data.encode_items(["1"])[0]
    assert features.text[toy_story] == "Toy Story (1995)"
    row = features.attributes[toy_story]
    assert sorted(np.asarray(features.attribute_names)[row > 0].tolist()) == ["Animation", "Children's", "Comedy"]
    # The first line of ml-100k.inter is user 196 rating item 242: both get the first index.
    assert data.decode_items([1]) == ["242"] and data.user_vocab.decode([0]) == ["196"]
