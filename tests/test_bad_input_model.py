"""Bad input to a model, as a user meets it: ``recommend`` (ids, k, exclude_seen, timestamps), ``score`` /
``step`` timestamps, and ``zoo recommend --exclude-seen`` with too large a ``-k``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import zoo
from zoo.cli import main
from zoo.data.vocab import Vocabulary
from zoo.model import left_pad

V = 20  # items 1..20
T0 = 1_700_000_000.0


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One intra-op thread: tiny models run fastest so on a busy machine."""


def make(name="sasrec", **overrides):
    torch.manual_seed(0)
    return zoo.create(name, num_items=V, d_model=16, **overrides).eval()


@pytest.fixture(scope="module")
def sasrec():
    return make(max_len=5)


@pytest.fixture(scope="module")
def convrec():
    return make("convrec")


def allowed_top(model, rows, k, exclude_seen):
    """Reference top-k scores: the model's own scores with padding (and seen items) set to -inf."""
    scores = model.score(left_pad([row[-model.max_len:] for row in rows]))
    scores[:, 0] = float("-inf")
    if exclude_seen:
        for i, row in enumerate(rows):
            scores[i, row] = float("-inf")
    return scores.topk(k).values


# ---------------------------------------------------------------- item ids


@pytest.mark.parametrize("histories", [
    [[1.7, 2.2]],
    [[2.0, 3.0]],  # whole floats are refused too: they were truncated silently before
    [[3, 4.0]],
    [[True, 2]],
    [[np.float32(2)]],
    np.array([[1.0, 2.0]]),
    np.array([[True, False]]),
    [torch.tensor([1.0, 2.0])],
    [torch.tensor([True, True])],
    torch.tensor([[1.0, 2.0]]),
    [[torch.tensor(2.0)]],
])
def test_recommend_refuses_non_integer_ids(sasrec, histories):
    with pytest.raises(ValueError, match="integer"):
        sasrec.recommend(histories, k=3)


@pytest.mark.parametrize("histories", [
    [[3, 4, 5]],
    [[np.int64(3), np.int32(4), 5]],
    np.array([[3, 4, 5]]),
    [torch.tensor([3, 4, 5])],
    torch.tensor([[3, 4, 5]], dtype=torch.int32),
    [[0, 0, 3, 4, 5]],  # leading padding
])
def test_recommend_takes_every_integer_form_alike(sasrec, histories):
    expected = sasrec.recommend([[3, 4, 5]], k=4)
    got = sasrec.recommend(histories, k=4)
    assert torch.equal(got.items, expected.items)
    torch.testing.assert_close(got.scores, expected.scores)


@pytest.mark.parametrize("histories, message", [
    ([[1, 0, 2]], "history 0, position 1: padding \\(0\\) after a real item"),
    ([[4], [1, 2, 0]], "history 1, position 2: padding \\(0\\) after a real item"),
    ([[1, V + 1]], f"history 0, position 1: item index {V + 1} is out of range"),
    ([[-1, 2]], "item index -1 is out of range"),
    ([[1], []], "history 1 is empty"),
    ([], "histories is empty"),
    ("12", "sequence of histories"),
])
def test_recommend_refuses_malformed_histories(sasrec, histories, message):
    with pytest.raises(ValueError, match=message):
        sasrec.recommend(histories, k=3)


@pytest.mark.parametrize("k", [0, V + 1, 3.0, True, "3", None])
def test_recommend_refuses_a_k_that_is_not_a_count_of_items(sasrec, k):
    with pytest.raises(ValueError, match=f"k must be an integer in 1..{V}"):
        sasrec.recommend([[1, 2]], k=k)


# ---------------------------------------------------------------- what comes back


def test_padding_is_never_returned_even_for_k_equal_to_all_items(sasrec):
    rec = sasrec.recommend([[1, 2, 3], [7]], k=V)
    for row in rec.items.tolist():
        assert sorted(row) == list(range(1, V + 1))
    torch.testing.assert_close(rec.scores, allowed_top(sasrec, [[1, 2, 3], [7]], V, False))


def test_exclude_seen_returns_no_seen_item_and_no_padding(sasrec):
    rows = [[1, 2, 3], [0, 0, 4, 5]]
    rec = sasrec.recommend(rows, k=V - 3, exclude_seen=True)
    assert rec.items.shape == (2, V - 3)
    assert set(rec.items[0].tolist()) == set(range(4, V + 1))  # exactly the unseen items
    second = rec.items[1].tolist()
    assert len(set(second)) == V - 3 and set(second) <= set(range(1, V + 1)) - {4, 5}
    torch.testing.assert_close(rec.scores[0], allowed_top(sasrec, rows[:1], V - 3, True)[0])


def test_exclude_seen_covers_history_beyond_max_len(sasrec):
    """max_len 5 scores items 6..10 of this history, but 1..5 are seen too."""
    history = list(range(1, 11))
    rec = sasrec.recommend([history], k=V - 10, exclude_seen=True)
    assert set(rec.items[0].tolist()) == set(range(11, V + 1))
    full = sasrec.score(left_pad([history[-5:]]))[0]
    torch.testing.assert_close(rec.scores[0], full[rec.items[0]])  # scored on the newest max_len items


def test_exclude_seen_with_too_large_k_names_the_largest_allowed_k(sasrec):
    rows = [[1, 2], list(range(1, 13))]  # 18 and 8 unseen items
    with pytest.raises(ValueError) as info:
        sasrec.recommend(rows, k=9, exclude_seen=True)
    message = str(info.value)
    assert "k=9" in message and "history 1" in message and "only 8 unseen" in message and "k <= 8" in message
    rec = sasrec.recommend(rows, k=8, exclude_seen=True)
    assert set(rec.items[1].tolist()) == set(range(13, V + 1))
    assert not {0, 1, 2} & set(rec.items[0].tolist())
    with pytest.raises(ValueError, match="k <= 0"):
        sasrec.recommend([list(range(1, V + 1))], k=1, exclude_seen=True)  # every item seen
    assert sasrec.recommend(rows, k=9).items.shape == (2, 9)  # without exclude_seen any k <= V goes


def test_items_scored_minus_infinity_still_rank_above_excluded_ones(monkeypatch):
    """A head can give -inf; recommend must then still return real, unseen items, never 0 or a seen one."""
    model = make(max_len=5)
    real_score = model.score

    def score(item_ids, timestamps=None):
        scores = real_score(item_ids, timestamps).clone()
        scores[:, 1:16] = float("-inf")  # only 16..20 have finite scores
        return scores

    monkeypatch.setattr(model, "score", score)
    rec = model.recommend([[16, 3]], k=V - 2, exclude_seen=True)
    items = rec.items[0].tolist()
    assert sorted(items) == sorted(set(range(1, V + 1)) - {3, 16})
    assert set(items[:4]) == {17, 18, 19, 20}  # the finite scores first
    assert torch.isinf(rec.scores[0, 4:]).all()
    assert sorted(model.recommend([[16]], k=V).items[0].tolist()) == list(range(1, V + 1))


def test_nan_scores_raise_instead_of_ranking():
    model = make(max_len=5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(RuntimeError, match=r"NaN scores for histories \[0, 1\]"):
        model.recommend([[1, 2], [3]], k=3)


# ---------------------------------------------------------------- timestamps


@pytest.mark.parametrize("timestamps, message", [
    ([[T0]], "timestamps 0 has 1 values for the 2 items of history 0"),
    ([[T0, T0 + 1, T0 + 2]], "timestamps 0 has 3 values"),
    ([[T0, T0 + 1], [T0]], "timestamps has 2 rows for 1 histories"),
    ([[T0, float("nan")]], "timestamps 0, position 1: nan is not a finite"),
    ([[float("inf"), T0]], "timestamps 0, position 0: inf is not a finite"),
    ([["soon", T0]], "timestamps 0 must be a sequence of numbers"),
    ("T0", "sequence of rows"),
])
def test_recommend_checks_timestamp_rows(sasrec, timestamps, message):
    with pytest.raises(ValueError, match=message):
        sasrec.recommend([[1, 2]], k=3, timestamps=timestamps)


def test_time_aware_score_refuses_non_finite_timestamps_at_real_items(convrec):
    ids = left_pad([[1, 2, 3], [4, 5]])
    ts = left_pad([[T0, T0 + 60, T0 + 120], [T0, T0 + 5]], dtype=torch.float64)
    scores = convrec.score(ids, ts)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = ts.clone()
        broken[1, 2] = bad
        with pytest.raises(ValueError, match=r"timestamps\[1, 2\] is .*finite Unix seconds"):
            convrec.score(ids, broken)
        padded = ts.clone()
        padded[1, 0] = bad  # a padded slot: never read
        torch.testing.assert_close(convrec.score(ids, padded), scores)
    with pytest.raises(ValueError, match="shaped like the item ids"):
        convrec.score(ids, ts[:, 1:])
    with pytest.raises(ValueError, match="Unix seconds"):
        convrec.score(ids, ts > 0)


@pytest.mark.parametrize("seconds, hint", [(T0 * 1000, True), (T0 * 1_000_000, True), (-7e10, False), (3e11, True)])
def test_time_aware_models_refuse_dates_outside_the_calendar(convrec, seconds, hint):
    ids = left_pad([[1, 2]])
    ts = torch.tensor([[T0, seconds]], dtype=torch.float64)
    with pytest.raises(ValueError, match="years 1..9999") as info:
        convrec.score(ids, ts)
    assert ("milliseconds" in str(info.value)) == hint
    with pytest.raises(ValueError, match="years 1..9999"):
        convrec.recommend([[1, 2]], k=3, timestamps=[[T0, seconds]])


def test_calendar_bounds_are_inclusive(convrec):
    from datetime import datetime, timezone

    first = datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
    scores = convrec.score(left_pad([[1, 2]]), torch.tensor([[first, last]], dtype=torch.float64))
    assert torch.isfinite(scores[:, 1:]).all()


def test_step_refuses_non_finite_timestamps():
    model = make("gru4rec")
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"timestamps_t\[1\] is nan"):
        model.step(torch.tensor([1, 2]), state, torch.tensor([T0, float("nan")], dtype=torch.float64))
    with pytest.raises(ValueError, match="timestamps_t must be a tensor shaped like the item ids"):
        model.step(torch.tensor([1, 2]), state, torch.tensor([T0], dtype=torch.float64))
    scores, _ = model.step(torch.tensor([1, 2]), state, torch.tensor([T0, T0], dtype=torch.float64))
    assert scores.shape == (2, V + 1)


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved tiny model whose raw item ids are ``i1..i20``."""
    model = make(max_len=5)
    model.item_vocab = Vocabulary([f"i{k}" for k in range(1, V + 1)])
    return model.save_pretrained(tmp_path_factory.mktemp("run") / "tiny")


def test_cli_recommend_too_large_k_with_exclude_seen_is_a_clear_error(folder):
    done = subprocess.run([sys.executable, "-m", "zoo.cli", "--threads", "1", "recommend", str(folder),
                           "--history", "i1,i2,i3", "-k", str(V - 2), "--exclude-seen"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert f"k={V - 2}" in done.stderr and f"k <= {V - 3}" in done.stderr, done.stderr
    assert done.stdout.strip() == ""


def test_cli_recommend_largest_allowed_k_lists_every_unseen_item(folder, capsys):
    assert main(["recommend", str(folder), "--history", "i1,i2,i3", "-k", str(V - 3), "--exclude-seen"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[2:]
    items = [line.split()[1] for line in lines]
    assert sorted(items) == sorted(f"i{k}" for k in range(4, V + 1))  # no seen item, no [PAD]
