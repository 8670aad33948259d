"""Leave-one-out and ratio-by-time splits, checked against per-user Python references."""

import json
import logging

import numpy as np
import pytest

from zoo.data import InteractionDataset, Sequences, Vocabulary


def dataset(rows, times=None):
    seqs = Sequences.from_rows(rows, times)
    num_items = int(seqs.items.max())
    return InteractionDataset("toy", seqs, Vocabulary([str(i) for i in range(1, num_items + 1)]),
                              Vocabulary([f"user{u}" for u in range(len(rows))], padding=False, name="user"))


def test_leave_one_out_matches_reference(caplog):
    rows = [[1, 2, 3, 4, 5], [6, 7], [2, 4, 6], [9], [3, 1, 3, 8, 8, 2]]
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        split = dataset(rows).split("loo")
    assert split.dropped_users == ["user1", "user3"]
    message = caplog.text
    assert "dropped 2 user(s) with fewer than 3 interactions" in message and "user1 (2)" in message and "user3 (1)" in message
    kept = [u for u, r in enumerate(rows) if len(r) >= 3]
    assert [split.train[u].tolist() for u in range(len(rows))] == [r[:-2] if len(r) >= 3 else [] for r in rows]
    valid = split.eval_samples("valid", max_len=10)
    test = split.eval_samples("test", max_len=10)
    assert valid.rows.tolist() == kept and test.rows.tolist() == kept
    for which, samples, cut in (("valid", valid, 2), ("test", test, 1)):
        batch = samples[np.arange(len(samples))]
        for b, u in enumerate(kept):
            history = rows[u][:-cut]
            assert batch["target"][b] == rows[u][-cut], which
            ids = batch["item_ids"][b].tolist()
            assert ids == [0] * (10 - len(history)) + history, which
            assert batch["history_length"][b] == len(history)


def test_leave_one_out_without_short_users_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="zoo.data"):
        split = dataset([[1, 2, 3], [3, 2, 1, 4]]).split()
    assert split.dropped_users == [] and caplog.text == ""
    assert json.loads(json.dumps(split.to_dict()))["valid_targets"] == 2


def test_ratio_by_time_matches_reference():
    rng = np.random.default_rng(3)
    rows, times = [], []
    for _ in range(12):
        n = int(rng.integers(1, 12))
        rows.append(rng.integers(1, 20, size=n).tolist())
        times.append(np.sort(rng.integers(0, 100, size=n)).astype(float).tolist())
    data = dataset(rows, times)
    split = data.split("ratio", ratios=(0.6, 0.2, 0.2))
    flat = np.sort(np.concatenate(times))
    t_valid, t_test = flat[int(0.6 * len(flat))], flat[int(0.8 * len(flat))]
    assert split.facts["valid_from_timestamp"] == t_valid and split.facts["test_from_timestamp"] == t_test
    expected = {"valid": [], "test": []}
    for u, (r, t) in enumerate(zip(rows, times)):
        assert split.train[u].tolist() == [i for i, s in zip(r, t) if s < t_valid]
        for k in range(1, len(r)):  # a target needs at least one earlier interaction
            which = "valid" if t_valid <= t[k] < t_test else "test" if t[k] >= t_test else None
            if which:
                expected[which].append((u, r[:k], r[k]))
    for which in ("valid", "test"):
        samples = split.eval_samples(which, max_len=5)
        batch = samples[np.arange(len(samples))]
        got = [(int(u), [i for i in ids.tolist() if i], int(t))
               for u, ids, t in zip(batch["user"], batch["item_ids"], batch["target"])]
        assert got == [(u, h[-5:], t) for u, h, t in expected[which]]
        assert batch["history_length"].tolist() == [len(h) for _, h, _ in expected[which]]


@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.9, 0.2, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_ratio_rejects_bad_ratios(ratios):
    with pytest.raises(ValueError, match="ratios must be"):
        dataset([[1, 2, 3]]).split("ratio", ratios=ratios)


def test_unknown_split_method():
    with pytest.raises(ValueError, match="'loo' or 'ratio'"):
        dataset([[1, 2, 3]]).split("random")
