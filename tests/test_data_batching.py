"""Left-padded samples and batches (objectives 'last' and 'all'), collate, DataLoader use, generated data."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from zoo.data import (
    NextItemSamples,
    Sequences,
    ShiftedSequenceSamples,
    collate_left_padded,
    gather_windows,
    generate_dataset,
    generate_sequences,
    left_pad,
    trim_padding,
)

ROWS = [[5, 3, 9, 1, 2, 7], [4], [8, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
TIMES = [[float(10 * u + t) for t in range(len(r))] for u, r in enumerate(ROWS)]


def padded(values, width):
    values = list(values)[-width:]
    return [0] * (width - len(values)) + values


def test_gather_windows_matches_loop():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 100, size=200)
    starts = rng.integers(0, 150, size=50)
    ends = starts + rng.integers(0, 50, size=50)
    for width in (1, 7, 60):
        out = gather_windows(values, starts, ends, width)
        for b in range(50):
            assert out[b].tolist() == padded(values[starts[b]:ends[b]], width)


def test_every_prefix_samples_objective_last():
    seqs = Sequences.from_rows(ROWS, TIMES)
    samples = NextItemSamples.every_prefix(seqs, max_len=4)
    expected = [(u, r[:k], r[k], t[:k]) for u, (r, t) in enumerate(zip(ROWS, TIMES)) for k in range(1, len(r))]
    assert len(samples) == len(expected) == sum(len(r) - 1 for r in ROWS)
    batch = samples[np.arange(len(samples))]
    for b, (u, history, target, times) in enumerate(expected):
        assert batch["user"][b] == u and batch["target"][b] == target
        assert batch["item_ids"][b].tolist() == padded(history, 4)
        assert batch["timestamps"][b].tolist() == padded(times, 4)
        assert batch["history_length"][b] == len(history)
    assert batch["item_ids"].dtype == torch.long and batch["timestamps"].dtype == torch.float64


def test_shifted_samples_objective_all():
    seqs = Sequences.from_rows(ROWS, TIMES)
    samples = ShiftedSequenceSamples(seqs, max_len=5)
    users = [u for u, r in enumerate(ROWS) if len(r) >= 2]
    batch = samples[np.arange(len(samples))]
    assert batch["user"].tolist() == users
    for b, u in enumerate(users):
        assert batch["item_ids"][b].tolist() == padded(ROWS[u][:-1], 5)
        assert batch["targets"][b].tolist() == padded(ROWS[u][1:], 5)
        assert batch["timestamps"][b].tolist() == padded(TIMES[u][:-1], 5)
    assert ((batch["targets"] == 0) == (batch["item_ids"] == 0)).all()  # targets are 0 exactly at pads


def test_single_index_and_default_dataloader_agree_with_batches():
    samples = NextItemSamples.every_prefix(Sequences.from_rows(ROWS, TIMES), max_len=3)
    one = samples[4]
    whole = samples[[4]]
    assert {k: v.tolist() for k, v in one.items()} == {k: v[0].tolist() for k, v in whole.items()}
    with pytest.raises(IndexError):
        samples[len(samples)]
    per_item = next(iter(DataLoader(samples, batch_size=len(samples))))  # default per-sample collate
    direct = samples[np.arange(len(samples))]
    assert all(torch.equal(per_item[k], direct[k]) for k in direct)


def test_loader_and_iter_batches_cover_every_sample_once():
    samples = NextItemSamples.every_prefix(Sequences.from_rows(ROWS, TIMES), max_len=3)
    for batches in (list(samples.iter_batches(4, shuffle=True, seed=1)), list(samples.loader(4, shuffle=True, seed=1))):
        targets = torch.cat([b["target"] for b in batches])
        assert sorted(targets.tolist()) == sorted(samples.targets.tolist())
    a = [b["target"].tolist() for b in samples.iter_batches(4, shuffle=True, seed=1)]
    assert a == [b["target"].tolist() for b in samples.iter_batches(4, shuffle=True, seed=1)]
    assert a != [b["target"].tolist() for b in samples.iter_batches(4, shuffle=True, seed=2)]
    assert sum(len(b["target"]) for b in samples.iter_batches(4, drop_last=True)) == len(samples) // 4 * 4


def test_loader_accepts_a_distributed_sampler():
    samples = NextItemSamples.every_prefix(Sequences.from_rows(ROWS, TIMES), max_len=3)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(samples, num_replicas=2, rank=rank, shuffle=False)
        seen += [i for b in samples.loader(3, sampler=sampler) for i in b["target"].tolist()]
    assert sorted(seen) == sorted(samples.targets.tolist())


def test_empty_history_is_rejected():
    seqs = Sequences.from_rows([[1, 2, 3]])
    with pytest.raises(ValueError, match="empty history"):
        NextItemSamples(seqs, rows=np.array([0]), ends=np.array([0]), max_len=5)
    with pytest.raises(ValueError, match="max_len"):
        NextItemSamples(seqs, rows=np.array([0]), ends=np.array([1]), max_len=0)
    with pytest.raises(ValueError, match="inside its user's sequence"):
        NextItemSamples(seqs, rows=np.array([0]), ends=np.array([3]), max_len=2)


def test_collate_left_padded_and_left_pad():
    rows = [{"item_ids": np.array([3, 4, 5]), "target": 6}, {"item_ids": np.array([7]), "target": 8}]
    out = collate_left_padded(rows)
    assert out["item_ids"].tolist() == [[3, 4, 5], [0, 0, 7]] and out["target"].tolist() == [6, 8]
    assert collate_left_padded(rows, width=2)["item_ids"].tolist() == [[4, 5], [0, 7]]
    assert left_pad([np.array([1.5]), np.array([])], width=3, dtype=np.float64).tolist() == [[0, 0, 1.5], [0, 0, 0]]
    with pytest.raises(ValueError, match="empty list"):
        collate_left_padded([])


def test_trim_padding_drops_shared_leading_pads_only():
    batch = {"item_ids": torch.tensor([[0, 0, 1, 2], [0, 0, 0, 3]]), "timestamps": torch.zeros(2, 4), "target": torch.tensor([1, 2])}
    out = trim_padding(batch)
    assert out["item_ids"].tolist() == [[1, 2], [0, 3]] and out["timestamps"].shape == (2, 2)
    assert out["target"].tolist() == [1, 2]


def test_generated_sequences_are_seeded_and_well_formed():
    a = generate_sequences(50, 100, length=(3, 40), pattern="mixed", seed=7)
    b = generate_sequences(50, 100, length=(3, 40), pattern="mixed", seed=7)
    c = generate_sequences(50, 100, length=(3, 40), pattern="mixed", seed=8)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.timestamps, b.timestamps)
    assert not np.array_equal(a.items[:100], c.items[:100])
    assert a.lengths.min() >= 3 and a.lengths.max() <= 40
    assert a.items.min() >= 1 and a.items.max() <= 100
    same_user = np.diff(a.row_of_position()) == 0
    assert np.all(np.diff(a.timestamps)[same_user] > 0)


def test_generated_patterns_are_learnable():
    markov = generate_sequences(20, 500, length=200, pattern="markov", noise=0.0, seed=1)
    prev, nxt = markov.items[:-1], markov.items[1:]
    same_user = np.diff(markov.row_of_position()) == 0
    successor = {}
    for p, n in zip(prev[same_user], nxt[same_user]):
        assert successor.setdefault(p, n) == n  # without noise every item has one successor
    periodic = generate_sequences(20, 500, length=60, pattern="periodic", noise=0.0, periods=(3, 3), seed=1)
    for u in range(20):
        row = periodic[u]
        assert np.array_equal(row[3:], row[:-3])


def test_generated_dataset_scales_without_python_objects():
    data = generate_dataset(num_users=200, num_items=2_000_000, length=(1, 10_000), seed=0)
    assert data.num_items == 2_000_000 and data.sequences.items.dtype == np.int32
    assert data.sequences.lengths.max() <= 10_000 and data.sequences.num_interactions > 200 * 1000
    assert data.decode_items([1_999_999]) == ["1999999"] and data.encode_items(["5", "2000000"]).tolist() == [5, 2_000_000]
    split = data.split()
    batch = split.eval_samples("test", max_len=50)[np.arange(5)]
    assert batch["item_ids"].shape == (5, 50)


@pytest.mark.parametrize("bad", [dict(num_items=1), dict(noise=2.0), dict(length=(5, 2)), dict(pattern="zigzag")])
def test_generator_rejects_bad_settings(bad):
    settings = dict(num_users=5, num_items=10) | bad
    with pytest.raises(ValueError):
        generate_sequences(**settings)
