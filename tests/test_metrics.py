"""Metric definitions: hand-computed cases and RecBole's definitions (restated from
``recbole/evaluator/metrics.py`` of recbole 1.2.1, not imported)."""

import math

import numpy as np
import pytest
import torch

from zoo.evaluate import full_ranks, group_labels, grouped_metrics, metrics_from_ranks


def test_hand_computed_values():
    ranks = np.array([1, 2, 3, 11])
    out = metrics_from_ranks(ranks, ks=(1, 10), metrics=("hr", "ndcg", "mrr", "recall"))
    assert out["HR@1"] == pytest.approx(1 / 4)
    assert out["HR@10"] == pytest.approx(3 / 4)
    assert out["Recall@10"] == out["HR@10"]
    assert out["NDCG@1"] == pytest.approx(1 / 4)
    assert out["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4)
    assert out["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 4)
    assert out["MRR@1"] == pytest.approx(1 / 4)


def test_rank_just_outside_k_scores_zero():
    out = metrics_from_ranks(np.array([6]), ks=(5, 6), metrics=("hr", "ndcg", "mrr"))
    assert out["HR@5"] == out["NDCG@5"] == out["MRR@5"] == 0.0
    assert out["HR@6"] == 1.0 and out["NDCG@6"] == pytest.approx(1 / math.log2(7)) and out["MRR@6"] == pytest.approx(1 / 6)


def test_bad_metric_arguments():
    with pytest.raises(ValueError, match="unknown metric"):
        metrics_from_ranks(np.array([1]), metrics=("auc",))
    with pytest.raises(ValueError, match="K must be >= 1"):
        metrics_from_ranks(np.array([1]), ks=(0,))
    with pytest.raises(ValueError, match="1-based"):
        metrics_from_ranks(np.array([0]))


def recbole_metrics(scores: torch.Tensor, targets: torch.Tensor, k_max: int) -> dict[str, np.ndarray]:
    """RecBole's path for one positive item per user: ``topk`` of the full scores, ``pos_index`` marks the
    target's position, then Hit = cumsum > 0; MRR = 1/(first hit position) from there on; Recall =
    cumsum / pos_len; NDCG = cumulative DCG / ideal DCG (ideal = 1 for one positive). Column k-1 is @k."""
    top = torch.topk(scores, k_max, dim=-1).indices
    pos_index = (top == targets[:, None]).numpy()
    pos_len = np.ones(len(targets))
    hit = (np.cumsum(pos_index, axis=1) > 0).astype(float)
    mrr = np.zeros_like(pos_index, dtype=float)
    first = pos_index.argmax(axis=1)
    for row, idx in enumerate(first):
        if pos_index[row, idx]:
            mrr[row, idx:] = 1 / (idx + 1)
    recall = np.cumsum(pos_index, axis=1) / pos_len[:, None]
    positions = np.arange(1, k_max + 1)
    dcg = np.cumsum(np.where(pos_index, 1.0 / np.log2(positions + 1), 0.0), axis=1)
    idcg = np.full(k_max, 1.0)  # min(pos_len, K) = 1 ideal position
    return {"HR": hit.mean(0), "MRR": mrr.mean(0), "Recall": recall.mean(0), "NDCG": (dcg / idcg).mean(0)}


def test_agrees_with_recbole_definitions_on_distinct_scores():
    gen = torch.Generator().manual_seed(0)
    num_items, users = 60, 200
    scores = torch.rand(users, num_items + 1, generator=gen)
    scores[:, 0] = -math.inf
    targets = torch.randint(1, num_items + 1, (users,), generator=gen)
    scores[torch.arange(users), targets] += 0.3  # make hits common
    ranks = full_ranks(scores, targets).numpy()
    ks = (1, 5, 10, 20)
    ours = metrics_from_ranks(ranks, ks)
    theirs = recbole_metrics(scores, targets, max(ks))
    for name in ("HR", "MRR", "Recall", "NDCG"):
        for k in ks:
            assert ours[f"{name}@{k}"] == pytest.approx(theirs[name][k - 1], abs=1e-12), f"{name}@{k}"


def test_ties_are_pessimistic():
    scores = torch.tensor([[-math.inf, 0.5, 0.5, 0.5, 0.1], [-math.inf, 0.9, 0.5, 0.5, 0.1]])
    targets = torch.tensor([2, 3])
    # row 0: items 1 and 3 tie with the target -> both count above it; row 1: item 1 above, item 2 ties
    assert full_ranks(scores, targets).tolist() == [3, 3]
    constant = torch.zeros(1, 6)
    constant[0, 0] = -math.inf
    assert full_ranks(constant, torch.tensor([4])).tolist() == [5]  # worst of 5 items


def test_padding_column_is_never_a_candidate():
    scores = torch.tensor([[100.0, 1.0, 2.0]])  # even a (wrong) high padding score is ignored
    assert full_ranks(scores, torch.tensor([2])).tolist() == [1]


def test_groups_by_history_length():
    assert group_labels((5, 20)) == ["[0,5)", "[5,20)", "[20,inf)"]
    ranks = np.array([1, 4, 30, 2, 7])
    lengths = np.array([3, 4, 5, 19, 20])
    groups = grouped_metrics(ranks, lengths, (5, 20), ks=(5,), metrics=("hr",))
    assert groups["[0,5)"] == {"count": 2, "HR@5": 1.0}
    assert groups["[5,20)"] == {"count": 2, "HR@5": 0.5}
    assert groups["[20,inf)"] == {"count": 1, "HR@5": 0.0}
    assert grouped_metrics(ranks, lengths, (100,), ks=(5,), metrics=("hr",))["[100,inf)"] == {"count": 0}
    with pytest.raises(ValueError, match="strictly increasing"):
        grouped_metrics(ranks, lengths, (20, 5), ks=(5,), metrics=("hr",))
