"""``recommend`` takes and returns raw item ids in one call when the model carries an item vocabulary."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.data.vocab import Vocabulary

NUM_ITEMS = 20


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = zoo.create("sasrec", num_items=NUM_ITEMS, d_model=16)
    model.item_vocab = Vocabulary([f"movie-{k}" for k in range(NUM_ITEMS, 0, -1)])  # raw ids in another order
    return model


def test_raw_ids_in_give_the_same_items_as_their_indices_and_raw_ids_out(model):
    raw = [["movie-3", "movie-17"], ["movie-9"]]
    indices = [model.encode_items(history).tolist() for history in raw]
    assert indices != [[3, 17], [9]]  # the vocabulary's order is not the ids' numbers
    by_raw = model.recommend(raw, k=5, exclude_seen=True)
    by_index = model.recommend(indices, k=5, exclude_seen=True)
    assert torch.equal(by_raw.items, by_index.items) and torch.equal(by_raw.scores, by_index.scores)
    assert by_raw.ids == [model.decode_items(row) for row in by_raw.items]
    assert not set(by_raw.ids[0]) & {"movie-3", "movie-17"} and "movie-9" not in by_raw.ids[1]


def test_without_a_vocabulary_there_are_no_raw_ids(model):
    model.item_vocab = None
    assert model.recommend([[1, 2]], k=3).ids is None
    with pytest.raises(ValueError, match="history 0 holds raw item ids.*no item vocabulary"):
        model.recommend([["movie-1"]], k=3)


@pytest.mark.parametrize("histories, message", [
    ([["movie-1", "nope"]], r"history 0: 1 unknown item id.*'nope'.*unknown='skip'"),
    ([[1, 2], ["movie-1", 3]], r"history 1, position 1: 3 among raw item ids"),
    ([[1, "movie-2"]], r"history 0, position 0: 1 among raw item ids"),
])
def test_unknown_or_mixed_raw_ids_are_refused(model, histories, message):
    with pytest.raises(ValueError, match=message):
        model.recommend(histories, k=3)
