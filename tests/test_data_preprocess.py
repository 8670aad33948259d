"""Preprocessing (rating threshold, de-duplication, k-core, time order, indexing) and vocabularies."""

import json
from collections import Counter

import numpy as np
import pytest

from zoo.data import PAD_TOKEN, Preprocessing, RawInteractions, Vocabulary, build_dataset


def raw(rows, ratings=None):
    """rows: (user, item, timestamp) tuples in file order."""
    users, items, times = zip(*rows)
    return RawInteractions(np.array(users), np.array(items), np.array(times, dtype=float),
                           None if ratings is None else np.array(ratings, dtype=float), source="test")


def as_lists(data):
    """Per user raw id -> list of (raw item, timestamp) in the dataset's order."""
    out = {}
    for u in range(data.num_users):
        lo, hi = data.sequences.offsets[u], data.sequences.offsets[u + 1]
        out[data.user_vocab.decode([u])[0]] = list(zip(data.decode_items(data.sequences.items[lo:hi]),
                                                       data.sequences.timestamps[lo:hi].tolist()))
    return out


def test_time_order_is_stable_for_ties():
    data = build_dataset(raw([("u", "c", 5), ("u", "a", 1), ("u", "b", 5), ("u", "d", 5), ("u", "e", 0)]), "t")
    assert [i for i, _ in as_lists(data)["u"]] == ["e", "a", "c", "b", "d"]


def test_indices_follow_first_appearance_and_pad_is_zero():
    data = build_dataset(raw([("u2", "x", 3), ("u1", "y", 1), ("u2", "z", 0), ("u1", "x", 2)]), "t")
    assert data.item_vocab.raw_ids.tolist() == ["x", "y", "z"]
    assert data.decode_items([0, 1, 2, 3]) == [PAD_TOKEN, "x", "y", "z"]
    assert data.user_vocab.raw_ids.tolist() == ["u2", "u1"]
    assert as_lists(data) == {"u2": [("z", 0.0), ("x", 3.0)], "u1": [("y", 1.0), ("x", 2.0)]}


def test_rating_threshold():
    data = build_dataset(raw([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)], ratings=[4, 2, 5]), "t",
                         Preprocessing(rating_threshold=4))
    assert [i for i, _ in as_lists(data)["u"]] == ["a", "c"]
    assert data.ratings.tolist() == [4.0, 5.0]


def test_rating_threshold_without_ratings_is_an_error():
    with pytest.raises(ValueError, match="has no rating column"):
        build_dataset(raw([("u", "a", 1)]), "t", Preprocessing(rating_threshold=3))


LOG = [("u", "a", 3), ("u", "b", 1), ("u", "a", 1), ("u", "a", 7), ("v", "a", 2), ("u", "b", 1)]


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("all", [("b", 1.0), ("a", 1.0), ("b", 1.0), ("a", 3.0), ("a", 7.0)]),
        # first: earliest (u,a) is at t=1 (line 3); earliest (u,b) ties at t=1 -> file order keeps line 2
        ("first", [("b", 1.0), ("a", 1.0)]),
        ("last", [("b", 1.0), ("a", 7.0)]),
    ],
)
def test_dedup_policies(policy, expected):
    data = build_dataset(raw(LOG), "t", Preprocessing(dedup=policy))
    assert as_lists(data)["u"] == expected
    assert as_lists(data)["v"] == [("a", 2.0)]


def test_dedup_last_keeps_the_later_line_among_equal_timestamps():
    data = build_dataset(raw(LOG, ratings=[1, 2, 3, 4, 5, 6]), "t", Preprocessing(dedup="last"))
    u = data.sequences.offsets[data.user_vocab.encode(["u"])[0]]
    assert data.ratings[u] == 6.0  # the (u, b, t=1) of the last line, not of line 2


def k_core_reference(rows, user_core, item_core):
    """Slow reference: drop under-count users/items one round at a time until nothing changes."""
    rows = list(rows)
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= user_core and items[r[1]] >= item_core]
        if kept == rows:
            return rows
        rows = kept


@pytest.mark.parametrize("user_core, item_core", [(2, 2), (3, 1), (1, 3), (4, 4)])
def test_k_core_matches_reference_fixed_point(user_core, item_core):
    rng = np.random.default_rng(user_core * 10 + item_core)
    rows = [(f"u{rng.zipf(1.5) % 40}", f"i{rng.zipf(1.4) % 60}", float(t)) for t in range(600)]
    expected = k_core_reference(rows, user_core, item_core)
    data = build_dataset(raw(rows), "t", Preprocessing(user_core=user_core, item_core=item_core))
    assert data.num_interactions == len(expected)
    got = sorted((u, i, t) for u, seq in as_lists(data).items() for i, t in seq)
    assert got == sorted(expected)
    lengths = data.sequences.lengths
    counts = np.bincount(data.sequences.items, minlength=data.num_items + 1)[1:]
    assert lengths.min() >= user_core and counts.min() >= item_core


def test_k_core_cascade_needs_several_rounds():
    # Removing item z (1 interaction) leaves user w with 1 interaction, which then removes item y from 2 to 1.
    rows = [("w", "y", 1), ("w", "z", 2), ("v", "y", 3), ("v", "x", 4), ("t", "x", 5), ("t", "q", 6), ("s", "q", 7),
            ("s", "x", 8)]
    data = build_dataset(raw(rows), "t", Preprocessing(user_core=2, item_core=2))
    assert sorted(as_lists(data)) == ["s", "t"]
    steps = {s["step"]: s for s in data.facts["preprocessing_steps"]}
    assert steps["k_core"]["rounds"] >= 3 and steps["k_core"]["removed"] == 4


def test_everything_filtered_is_an_error():
    with pytest.raises(ValueError, match="no interactions left"):
        build_dataset(raw([("u", "a", 1)]), "t", Preprocessing(user_core=5))


@pytest.mark.parametrize("bad", [dict(dedup="newest"), dict(user_core=-1)])
def test_bad_preprocessing_settings(bad):
    with pytest.raises(ValueError):
        Preprocessing(**bad)


def test_vocabulary_encode_decode_roundtrip_and_json():
    vocab = Vocabulary(["b", "10", "a", "2"], padding=True)
    assert len(vocab) == 5 and vocab.size == 4
    assert vocab.encode(["a", "b", "2", "10"]).tolist() == [3, 1, 4, 2]
    assert vocab.encode([10, 2]).tolist() == [2, 4]  # numbers are looked up as their string
    assert vocab.decode([0, 1, 4]) == [PAD_TOKEN, "b", "2"]
    again = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.encode(["2"]).tolist() == [4]
    users = Vocabulary(["x", "y"], padding=False, name="user")
    assert users.encode(["y", "x"]).tolist() == [1, 0] and len(users) == 2


def test_vocabulary_unknown_ids_error_lists_them_or_skip():
    vocab = Vocabulary(["a", "b"])
    with pytest.raises(KeyError) as info:
        vocab.encode(["a", "zz", "b", "qq", "zz"])
    message = str(info.value)
    assert "2 unknown item id(s)" in message and "'zz'" in message and "'qq'" in message and "unknown='skip'" in message
    assert vocab.encode(["a", "zz", "b"], unknown="skip").tolist() == [1, 2]
    with pytest.raises(ValueError, match="unknown must be"):
        vocab.encode(["a"], unknown="ignore")


def test_vocabulary_rejects_bad_input():
    with pytest.raises(ValueError, match="repeated raw ids"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(ValueError, match="reserved for padding"):
        Vocabulary([PAD_TOKEN, "a"])
    with pytest.raises(TypeError, match="single string"):
        Vocabulary(["a"]).encode("a")
    with pytest.raises(IndexError, match="out of range"):
        Vocabulary(["a"]).decode([2])


def test_dataset_to_dict_is_json_with_vocabulary():
    data = build_dataset(raw([("u", "a", 1), ("u", "b", 2)]), "toy", Preprocessing(dedup="first"))
    facts = json.loads(json.dumps(data.to_dict()))
    assert facts["item_vocabulary"]["raw_ids"] == ["a", "b"]
    assert facts["preprocessing"] == {"rating_threshold": None, "dedup": "first", "user_core": 0, "item_core": 0}
    assert facts["num_items"] == 2 and facts["name"] == "toy"
