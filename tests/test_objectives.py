"""Training objectives (sample construction against loop references) and losses (against hand-written ones)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zoo
import zoo.objectives as objectives
from zoo.data import Sequences
from zoo.objectives import (
    AllPositionSamples,
    ItemSets,
    LastItemSamples,
    MaskedItemSamples,
    RandomCutSamples,
    _draw_negatives,
    _users_and_targets,
    add_negatives,
    check_objective,
    count_targets,
    covering_windows,
    distinct_ranks,
    loss_terms,
    sample_negatives,
    training_samples,
)

ROWS = [[5, 3, 9, 1, 2, 7], [4], [8, 8], list(range(1, 12)), [6, 2, 2, 9, 10, 11, 3]]
V = 12
SMALL = {"d_model": 16, "encoder.0.repeat": 1}


def sequences() -> Sequences:
    return Sequences.from_rows(ROWS)


def left(values, width):
    values = list(values)[-width:]
    return [0] * (width - len(values)) + values


def rows_of(batch_ids):
    return [[int(v) for v in row if v > 0] for row in batch_ids]


def model(name="sasrec", **overrides):
    torch.manual_seed(0)
    return zoo.create(name, num_items=V, **{**SMALL, "encoder.0.layers.0.dropout": 0.0, "encoder.0.layers.0.attention_dropout": 0.0,
                                            "item_encoder.dropout": 0.0, **overrides})


def bidirectional(**overrides):
    return model(**{"encoder.0.layers.0.causal": False, "item_encoder.mask_token": True, "train.objective": "masked",
                    **overrides})


# ---------------------------------------------------------------------------- windows and sample sets


def test_covering_windows_match_loop():
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 50, size=40)
    ends = starts + rng.integers(0, 30, size=40)
    for width in (1, 4, 7, 100):
        rows, ws, we = covering_windows(starts, ends, width)
        expected = []
        for u, (s, e) in enumerate(zip(starts, ends)):
            end = e
            while end > s:
                expected.append((u, max(s, end - width), end))
                end -= width
        assert list(zip(rows.tolist(), ws.tolist(), we.tolist())) == expected
        rows, ws, we = covering_windows(starts, ends, width, newest_only=True)
        assert list(zip(rows.tolist(), ws.tolist(), we.tolist())) == [(u, max(s, e - width), e)
                                                                     for u, (s, e) in enumerate(zip(starts, ends)) if e > s]
        newest = rng.integers(1, width + 1, size=len(starts))
        rows, ws, we = covering_windows(starts, ends, width, newest_width=newest)
        expected = []
        for u, (s, e) in enumerate(zip(starts, ends)):
            end, size = e, newest[u]
            while end > s:
                expected.append((u, max(s, end - size), end))
                end, size = end - size, width
        assert list(zip(rows.tolist(), ws.tolist(), we.tolist())) == expected


def test_last_objective_is_every_prefix():
    samples = LastItemSamples(sequences(), max_len=4)
    batch = samples.batch(np.arange(samples.epoch_size(0)), 0, np.random.default_rng(0))
    expected = [(left(r[:t], 4), r[t]) for r in ROWS for t in range(1, len(r))]
    got = sorted(zip(batch["item_ids"].tolist(), batch["target"].tolist()))
    assert got == sorted(expected)
    assert set(batch) == {"item_ids", "timestamps", "target"}


@pytest.mark.parametrize("width", [3, 4, 20])
def test_all_objective_covers_every_target_once_with_its_previous_item(width):
    samples = AllPositionSamples(sequences(), max_len=width)
    batch = samples.batch(np.arange(samples.epoch_size(0)), 0, np.random.default_rng(0))
    inputs, targets = batch["item_ids"].numpy(), batch["targets"].numpy()
    assert ((inputs > 0) == (targets > 0)).all()
    # Every (user, position >= 1) target appears exactly once, with item[t-1] as its input.
    pairs = sorted((int(i), int(t)) for i, t in zip(inputs[targets > 0], targets[targets > 0]))
    expected = sorted((r[t - 1], r[t]) for r in ROWS for t in range(1, len(r)))
    assert pairs == expected
    # Each window is a contiguous run of a user's sequence, shifted by one.
    for ins, tgs in zip(inputs, targets):
        ins, tgs = ins[ins > 0].tolist(), tgs[tgs > 0].tolist()
        assert ins[1:] == tgs[:-1]
        assert any(r[i:i + len(ins) + 1] == ins + tgs[-1:] for r in ROWS for i in range(len(r)))
    recent = AllPositionSamples(sequences(), max_len=width, windows="recent")
    batch = recent.batch(np.arange(recent.epoch_size(0)), 0, np.random.default_rng(0))
    assert rows_of(batch["targets"]) == [r[1:][-width:] for r in ROWS if len(r) >= 2]


def overlapping_windows_loop(row, width, step, newest=None):
    """(inputs, targets) of each window of ``row`` for objective ``all`` with ``window_step=step``, newest first;
    the newest window trains ``newest`` targets (default ``step``)."""
    windows, end, size = [], len(row), newest or step
    while end > 1:
        first = 1 if end <= 1 + width else max(1, end - size)
        history = max(0, end - 1 - width)
        targets = [row[i] if i >= first else 0 for i in range(history + 1, end)]
        windows.append((left(row[history:end - 1], width), left(targets, width)))
        end, size = (first if first > 1 else 0), step
    return windows


@pytest.mark.parametrize("width, step", [(3, 1), (3, 2), (4, 3), (4, 4), (5, 2), (20, 7)])
def test_all_objective_with_overlapping_windows_trains_each_target_once_with_long_history(width, step):
    samples = AllPositionSamples(sequences(), max_len=width, step=step)
    batch = samples.batch(np.arange(samples.epoch_size(0)), 0, np.random.default_rng(0))
    got = list(zip(batch["item_ids"].tolist(), batch["targets"].tolist()))
    assert got == [w for r in ROWS for w in overlapping_windows_loop(r, width, step)]
    if step == width:
        disjoint = AllPositionSamples(sequences(), max_len=width)
        assert torch.equal(disjoint.batch(np.arange(disjoint.epoch_size(0)), 0, np.random.default_rng(0))["targets"],
                           batch["targets"])
    with pytest.raises(ValueError, match="window step must be in 1..max_len"):
        AllPositionSamples(sequences(), max_len=width, step=width + 1)


@pytest.mark.parametrize("width, step", [(4, 4), (5, 2), (6, 6)])
def test_shifted_windows_move_every_epoch_and_still_train_each_target_once(width, step):
    rows = ROWS + [list(range(1, n + 1)) for n in (13, 17, 30)]
    samples = AllPositionSamples(Sequences.from_rows(rows), max_len=width, step=step, shift=True, seed=3)
    grids = set()
    for epoch in range(12):
        batch = samples.batch(np.arange(samples.epoch_size(epoch)), epoch, np.random.default_rng(0))
        got = list(zip(batch["item_ids"].tolist(), batch["targets"].tolist()))
        # The newest window of each user: the first of its windows (windows come user by user, newest first).
        starts, ends, first_target = samples.windows_of(epoch)
        first_window = np.unique(first_target, return_index=True)[1]
        newest = ends[first_window] - starts[first_window]
        long_rows = [r for r in rows if len(r) >= 2]
        assert got == [w for r, n in zip(long_rows, newest) for w in overlapping_windows_loop(r, width, step, int(n))]
        assert newest.min() >= 1 and all(n <= step for r, n in zip(long_rows, newest) if len(r) > width + 1)
        grids.add(tuple(newest.tolist()))
        again = AllPositionSamples(Sequences.from_rows(rows), max_len=width, step=step, shift=True, seed=3)
        assert torch.equal(again.batch(np.arange(again.epoch_size(epoch)), epoch, np.random.default_rng(1))["targets"],
                           batch["targets"])
    assert len(grids) > 1
    with pytest.raises(ValueError, match="needs windows='cover'"):
        AllPositionSamples(sequences(), max_len=width, windows="recent", shift=True)


def test_window_step_from_the_recipe_reaches_the_sample_set():
    recipe = zoo.create("sasrec", num_items=V, **SMALL).recipe.train
    assert recipe.window_shift  # sasrec's recipe trains shifted windows
    config = recipe.model_copy(update={"window_step": 2, "window_shift": False})
    samples = training_samples(model(max_len=4), sequences(), config)
    assert isinstance(samples, AllPositionSamples)
    assert samples.epoch_size(0) == sum(len(overlapping_windows_loop(r, 4, 2)) for r in ROWS) > len(ROWS)
    shifted = training_samples(model(max_len=4), sequences(), config.model_copy(update={"window_shift": True}), seed=5)
    assert shifted.shift and shifted.seed == 5


def test_masked_objective_hides_items_behind_the_mask_token():
    rows = [list(range(1, 41))] * 50
    seqs = Sequences.from_rows(rows)
    samples = MaskedItemSamples(seqs, max_len=40, mask_token=99, mask_prob=0.3, mask_last_prob=0.2)
    assert samples.epoch_size(0) == 50
    batch = samples.batch(np.arange(50), 0, np.random.default_rng(1))
    ids, targets = batch["item_ids"].numpy(), batch["masked_targets"].numpy()
    original = np.array(rows)
    masked = ids == 99
    assert (masked == (targets > 0)).all()
    assert (targets[masked] == original[masked]).all() and (ids[~masked] == original[~masked]).all()
    assert masked.any(1).all() and masked[:, -1].sum() >= 10
    only_last = masked[:, -1] & (masked.sum(1) == 1)
    assert 3 <= only_last.sum() <= 20  # ~20% of 50 windows (plus rare cloze windows that masked only the last)
    cloze = ~only_last
    assert abs(masked[cloze, :-1].mean() - 0.3) < 0.05
    # A fresh generator with the same seed reproduces the batch.
    again = samples.batch(np.arange(50), 0, np.random.default_rng(1))
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_random_cut_is_one_uniform_cut_per_user_reproducible_per_epoch():
    seqs = Sequences.from_rows([list(range(1, 11))] * 400)
    samples = RandomCutSamples(seqs, max_len=5, seed=3)
    assert samples.epoch_size(0) == 400
    b0 = samples.batch(np.arange(400), 0, np.random.default_rng(0))
    b0_again = RandomCutSamples(seqs, max_len=5, seed=3).batch(np.arange(400), 0, np.random.default_rng(7))
    b1 = samples.batch(np.arange(400), 1, np.random.default_rng(0))
    assert torch.equal(b0["target"], b0_again["target"]) and not torch.equal(b0["target"], b1["target"])
    targets = b0["target"].numpy()
    assert set(targets.tolist()) == set(range(2, 11))  # cut c in 2..n: target item c (items are 1..10)
    assert np.bincount(targets, minlength=11)[2:].min() > 20
    for ids, target in zip(b0["item_ids"].tolist(), targets):
        assert ids == left(range(1, target), 5)


def test_training_samples_dispatch_and_model_checks():
    seqs = sequences()
    config = zoo.create("sasrec", num_items=V).recipe.train
    assert isinstance(training_samples(model(), seqs, config.model_copy(update={"objective": "all"})), AllPositionSamples)
    with pytest.raises(ValueError, match="'sasrec'.*block 'transformer_layer'.*looks ahead.*use objective 'last'"):
        model(**{"encoder.0.layers.0.causal": False})  # the recipe still trains with 'all': refused when built
    with pytest.raises(ValueError, match="'transformer_layer'.*looks ahead"):
        training_samples(bidirectional(), seqs, config.model_copy(update={"objective": "all"}))
    with pytest.raises(ValueError, match="MASK"):
        training_samples(model(), seqs, config.model_copy(update={"objective": "masked"}))
    assert isinstance(training_samples(bidirectional(), seqs, config.model_copy(update={"objective": "masked"})),
                      MaskedItemSamples)


def test_mask_token_row_is_never_scored():
    m = bidirectional()
    assert m.item_encoder.mask_token_id == V + 1
    assert m.item_encoder.embedding.weight.shape[0] == V + 2
    assert m.item_encoder.item_table().shape[0] == V + 1
    assert m.score(torch.tensor([[0, 1, 2, 3]])).shape == (1, V + 1)


# ---------------------------------------------------------------------------- negatives and losses


def test_negatives_are_uniform_and_never_the_positive():
    rng = np.random.default_rng(0)
    positives = rng.integers(1, 6, size=4000)
    negatives = sample_negatives(positives, 5, 3, rng)
    assert negatives.shape == (4000, 3)
    assert (negatives != positives[:, None]).all() and negatives.min() >= 1 and negatives.max() <= 5
    for item in range(1, 6):
        counts = np.bincount(negatives[positives == item].ravel(), minlength=6)[1:]
        others = np.delete(counts, item - 1)
        assert counts[item - 1] == 0 and others.min() > 0.8 * others.mean()
    with pytest.raises(ValueError, match="at least 2 items"):
        sample_negatives(positives, 1, 3, rng)


def random_sequences(rng: np.random.Generator, num_users: int, num_items: int) -> Sequences:
    """Users with 0..30 interactions, repeats allowed (as re-consumed items)."""
    return Sequences.from_rows([rng.integers(1, num_items + 1, size=rng.integers(0, 31)).tolist() for _ in range(num_users)])


@pytest.mark.parametrize("objective", ["random_cut", "last", "all", "masked"])
def test_unseen_negatives_are_distinct_and_never_in_the_users_sequence(objective):
    """Property check over many random batches: train.negatives 'unseen' (ConvRec §4.3)."""
    num_items, k = 60, 20
    for trial in range(25):
        rng = np.random.default_rng(trial)
        train = random_sequences(rng, 40, num_items)
        masked = {"encoder.0.layers.0.causal": False, "item_encoder.mask_token": True} if objective == "masked" else {}
        m = zoo.create("sasrec", num_items=num_items, **SMALL, **masked, **{"train.objective": objective})
        samples = training_samples(m, train, m.recipe.train, seed=trial)
        size = samples.epoch_size(trial)
        if not size:
            continue
        indices = rng.permutation(size)[: rng.integers(1, 17)]
        batch = samples.batch(indices, trial, rng)
        users = samples.users(indices, trial)
        out = add_negatives(batch, num_items, k, rng, ItemSets.of_sequences(train, num_items), users)
        key = next(key for key in ("target", "targets", "masked_targets") if key in batch)
        negatives = out["negatives"].reshape(len(indices), -1, k).numpy()
        for row, user in enumerate(users):
            sequence = set(train[user].tolist())
            shown = {int(i) for i in batch["item_ids"][row].tolist() + batch[key][row].reshape(-1).tolist()} - {0}
            assert shown - {num_items + 1} <= sequence, "the sample's user is wrong"
            for drawn in negatives[row]:
                assert len(set(drawn.tolist())) == k, "negatives repeat within a target"
                assert not set(drawn.tolist()) & sequence, "a negative is in the user's sequence (history or positive)"
                assert drawn.min() >= 1 and drawn.max() <= num_items


def test_unseen_negatives_are_uniform_over_the_items_outside_the_sequence():
    rng = np.random.default_rng(0)
    train = Sequences.from_rows([[2, 5, 5, 9], [1]])
    draws = ItemSets.of_sequences(train, 10).sample_outside(np.zeros(30_000, dtype=np.int64), 4, rng)
    counts = np.bincount(draws.ravel(), minlength=11)
    allowed = [1, 3, 4, 6, 7, 8, 10]
    assert counts[[0, 2, 5, 9]].sum() == 0
    expected = 30_000 * 4 / len(allowed)
    assert np.abs(counts[allowed] - expected).max() < 0.05 * expected
    ranks = distinct_ranks(np.array([5, 5]), 5, rng)  # a row with exactly as many values as asked
    assert ranks.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_unseen_negatives_need_enough_items_outside_the_sequence():
    sets = ItemSets.of_sequences(Sequences.from_rows([[1, 2, 3], [4]]), 6)
    with pytest.raises(ValueError, match="sequence 0 has only 3 of the 6 items outside it, fewer than the 4"):
        sets.sample_outside(np.array([1, 0]), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="one user per batch row"):
        add_negatives({"target": torch.tensor([1, 2])}, 6, 2, np.random.default_rng(0), sets, None)


def test_a_batch_without_negatives_draws_unseen_ones_outside_its_own_rows():
    """model.loss on a bare batch: 'unseen' negatives avoid each row's history and targets."""
    m = model(**{"train.objective": "all"}).eval()
    ids = torch.tensor([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    targets = torch.tensor([[0, 2, 3, 4, 10], [6, 7, 8, 9, 11]])
    batch = {"item_ids": ids, "targets": targets}
    found = _users_and_targets(m, batch)
    drawn = _draw_negatives(batch, found, V, 3, "unseen", torch.Generator().manual_seed(0))
    assert drawn.shape == (9, 3)
    for row, negatives in zip(found.rows.tolist(), drawn.tolist()):
        assert len(set(negatives)) == 3 and not set(negatives) & (set(ids[row].tolist()) | set(targets[row].tolist()))
    a = loss_terms(m, batch, "bce", 3, torch.Generator().manual_seed(1), negatives_from="unseen")
    b = loss_terms(m, batch, "bce", 3, torch.Generator().manual_seed(1), negatives_from="unseen")
    assert torch.equal(a.total, b.total) and a.count == 9


def test_bce_is_convrec_eq_15():
    """Eq. 15 per target, -log σ(s+) - Σ_j log(1 - σ(s-_j)), from the model's own scores in float64."""
    torch.manual_seed(0)
    m = zoo.create("convrec", num_items=150, d_model=16, max_len=10).eval()
    rng = np.random.default_rng(0)
    histories = [[3, 4, 9], [1, 2, 3, 4, 5, 6, 7], [120]]
    targets = [7, 100, 5]
    negatives = np.stack([rng.choice(np.setdiff1d(np.arange(1, 151), h + [t]), 100, replace=False)
                          for h, t in zip(histories, targets)])
    ids = torch.tensor([left(h, 10) for h in histories])
    times = torch.where(ids > 0, torch.arange(10, dtype=torch.float64) * 86_400 * 30 + 1e9, torch.zeros(()))
    batch = {"item_ids": ids, "timestamps": times, "target": torch.tensor(targets), "negatives": torch.from_numpy(negatives)}
    terms = loss_terms(m, batch, "bce")
    with torch.no_grad():
        scores = m.score(ids, times).double()
    expected = 0.0
    for row, (target, drawn) in enumerate(zip(targets, negatives)):
        expected -= torch.log(torch.sigmoid(scores[row, target]))
        expected -= torch.log(1 - torch.sigmoid(scores[row, torch.from_numpy(drawn)])).sum()
    assert terms.count == 3
    assert float(terms.total.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(m.loss(batch).detach()) == pytest.approx(float(expected) / 3, rel=1e-5)


def reference_user_vectors(m, histories):
    """The model's user vector of each history, one history at a time."""
    return torch.cat([m.readout(*m.encode(torch.tensor([h]))) for h in histories])


def test_full_softmax_ce_matches_a_loop_over_targets():
    m = model().eval()
    batch = {"item_ids": torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]]), "target": torch.tensor([7, 1])}
    terms = loss_terms(m, batch, "ce")
    users = reference_user_vectors(m, [[3, 4], [1, 2, 3, 4]])
    expected = 0.0
    for u, t in zip(users, [7, 1]):
        scores = torch.stack([u @ m.item_encoder.item_table()[i] for i in range(1, V + 1)])
        expected += -(scores[t - 1] - torch.logsumexp(scores, 0))
    assert terms.count == 2
    torch.testing.assert_close(terms.total, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(m.loss(batch), expected / 2, atol=1e-5)


def test_all_positions_loss_equals_the_sum_over_prefixes():
    m = model().eval()
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    targets = torch.tensor([[0, 0, 6, 7, 8], [2, 3, 4, 5, 6]])
    all_terms = loss_terms(m, {"item_ids": ids, "targets": targets}, "ce")
    prefixes, prefix_targets = [], []
    for row, tgt in zip(ids.tolist(), targets.tolist()):
        real = [i for i in row if i]
        for t, target in enumerate(tgt[len(row) - len(real):]):
            prefixes.append(left(real[: t + 1], 5))
            prefix_targets.append(target)
    last_terms = loss_terms(m, {"item_ids": torch.tensor(prefixes), "target": torch.tensor(prefix_targets)}, "ce")
    assert all_terms.count == last_terms.count == 8 == count_targets({"targets": targets})
    torch.testing.assert_close(all_terms.total, last_terms.total, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
@pytest.mark.parametrize("rows_per_candidate", [objectives.WHOLE_TABLE_PER_CANDIDATE, 0], ids=["whole-table", "gathered"])
def test_losses_with_negatives_match_hand_computation(loss, rows_per_candidate, monkeypatch):
    monkeypatch.setattr(objectives, "WHOLE_TABLE_PER_CANDIDATE", rows_per_candidate)
    m = model(**{"head.item_bias": True}).eval()
    with torch.no_grad():
        m.head.bias.uniform_(-1, 1)
    histories = [[3, 4], [1, 2, 3, 4]]
    batch = {"item_ids": torch.tensor([left(h, 4) for h in histories]), "target": torch.tensor([7, 1]),
             "negatives": torch.tensor([[1, 2, 9], [5, 5, 12]])}
    terms = loss_terms(m, batch, loss)
    users = reference_user_vectors(m, histories)
    table = m.item_encoder.item_table()
    expected = 0.0
    for u, t, negs in zip(users, [7, 1], [[1, 2, 9], [5, 5, 12]]):
        s = [float((u @ table[i] + m.head.bias[i]).detach()) for i in [t, *negs]]
        if loss == "sampled_softmax":
            expected += -(s[0] - math.log(sum(math.exp(x) for x in s)))
        else:
            expected += -math.log(1 / (1 + math.exp(-s[0]))) - sum(math.log(1 - 1 / (1 + math.exp(-x))) for x in s[1:])
    assert terms.count == 2
    assert abs(float(terms.total.detach()) - expected) < 1e-4


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_scoring_the_whole_table_gives_the_gathered_candidates_loss_and_gradients(loss, monkeypatch):
    """Both ways of scoring sampled candidates (objectives.candidate_scores), float64, projection and item bias on."""
    m = model(**{"head.item_bias": True, "head.projection": True, "head.activation": "gelu"}).double().train()
    with torch.no_grad():
        m.head.bias.uniform_(-1, 1)
    batch = {"item_ids": torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 9, 9, 5]]), "target": torch.tensor([7, 1, 2]),
             "negatives": torch.tensor([[1, 2, 9], [5, 5, 12], [12, 11, 3]])}
    results = []
    for rows_per_candidate in (objectives.WHOLE_TABLE_PER_CANDIDATE, 0):
        monkeypatch.setattr(objectives, "WHOLE_TABLE_PER_CANDIDATE", rows_per_candidate)
        m.zero_grad()
        total = loss_terms(m, batch, loss).total
        total.backward()
        results.append((total.detach(), {name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None}))
    (whole, whole_grads), (gathered, gathered_grads) = results
    assert whole_grads.keys() == gathered_grads.keys() and "head.bias" in whole_grads
    torch.testing.assert_close(whole, gathered, rtol=1e-12, atol=1e-12)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(grad, gathered_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_masked_loss_scores_the_masked_positions_of_a_bidirectional_model():
    m = bidirectional().eval()
    mask = m.item_encoder.mask_token_id
    ids = torch.tensor([[0, 3, mask, 5], [1, mask, 3, mask]])
    targets = torch.tensor([[0, 0, 4, 0], [0, 2, 0, 4]])
    terms = loss_terms(m, {"item_ids": ids, "masked_targets": targets}, "ce")
    hidden, _ = m.encode(ids)
    expected = 0.0
    for b, t in [(0, 2), (1, 1), (1, 3)]:
        logits = m.item_logits(hidden[b, t][None])[0]
        expected += -torch.log_softmax(logits, 0)[targets[b, t]]
    assert terms.count == 3
    torch.testing.assert_close(terms.total, expected, rtol=1e-5, atol=1e-5)


def test_sampled_loss_draws_its_own_negatives_when_the_batch_has_none():
    m = model().eval()
    batch = {"item_ids": torch.tensor([[0, 3, 4]]), "target": torch.tensor([2])}
    a = loss_terms(m, batch, "sampled_softmax", 5, torch.Generator().manual_seed(0))
    b = loss_terms(m, batch, "sampled_softmax", 5, torch.Generator().manual_seed(0))
    assert torch.equal(a.total, b.total) and torch.isfinite(a.total)
    with pytest.raises(ValueError, match="one of"):
        loss_terms(m, {"item_ids": torch.tensor([[1, 2]])}, "ce")


def test_objective_all_names_a_look_ahead_item_encoder():
    m = model(**{"train.objective": "last"})
    m.item_encoder.causal = False  # as an item encoder that reads later items would be
    with pytest.raises(ValueError, match="block 'item_id'.*looks ahead"):
        check_objective(m, "all")
