"""The evaluator against a small fake model, with plain-loop references for ranks, masking and negatives."""

import json
import math

import numpy as np
import pytest
import torch

import zoo
from zoo.data import InteractionDataset, NextItemSamples, Sequences, Vocabulary, generate_dataset
from zoo.evaluate import (BATCH_BOUNDS, SCORES_BUDGET_BYTES, default_batch_size, evaluate, metrics_from_ranks,
                          sample_negatives)

NUM_ITEMS = 30


class FakeModel(torch.nn.Module):
    """Scores depend on the last two items of the history (so truncation and padding matter)."""

    def __init__(self, num_items: int = NUM_ITEMS, max_len: int = 4, seed: int = 0, quantise: bool = False):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(num_items + 1, num_items + 1, generator=gen)
        self.table = torch.nn.Parameter(table.round(decimals=0) if quantise else table)  # quantised: many ties
        self.max_len = max_len
        self.calls = []

    def score(self, item_ids, timestamps=None):
        self.calls.append({"shape": tuple(item_ids.shape), "training": self.training,
                           "grad": torch.is_grad_enabled(), "timestamps": timestamps is not None,
                           "autocast": torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")})
        item_ids = torch.nn.functional.pad(item_ids[:, -self.max_len:], (1, 0))  # at least 2 columns
        scores = self.table[item_ids[:, -1]] + 0.5 * self.table[item_ids[:, -2]] * (item_ids[:, -2:-1] > 0)
        scores = scores.clone()
        scores[:, 0] = -math.inf
        return scores


def toy_dataset(seed=0, users=25):
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, NUM_ITEMS + 1, size=int(rng.integers(3, 15))).tolist() for _ in range(users)]
    seqs = Sequences.from_rows(rows)
    return rows, InteractionDataset("toy", seqs, Vocabulary([str(i) for i in range(1, NUM_ITEMS + 1)]),
                                    Vocabulary([str(u) for u in range(users)], padding=False, name="user"))


def reference_ranks(model, rows, cut, mask_history=False, negatives=None):
    """One example at a time, plain Python counting with ties counted above the target."""
    ranks = []
    for u, row in enumerate(rows):
        history, target = row[:-cut], row[-cut]
        window = history[-model.max_len:]
        with torch.no_grad():
            scores = model.score(torch.tensor([window]))[0].tolist()
        if mask_history:
            for item in set(history) - {target}:
                scores[item] = -math.inf
        candidates = range(1, NUM_ITEMS + 1) if negatives is None else negatives[u]
        ranks.append(1 + sum(1 for c in candidates if c != target and scores[c] >= scores[target]))
    return np.array(ranks)


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("mask_history", [False, True])
def test_full_ranking_matches_loop(quantise, mask_history):
    rows, data = toy_dataset()
    model = FakeModel(quantise=quantise)
    split = data.split()
    expected = reference_ranks(model, rows, cut=1, mask_history=mask_history)
    for batch_size in (1, 7, 1000):
        result = evaluate(model, split, batch_size=batch_size, mask_history=mask_history)
        assert result.ranks.tolist() == expected.tolist()
    assert result.metrics == metrics_from_ranks(expected, (5, 10, 20))
    valid = evaluate(model, split, which="valid", mask_history=mask_history)
    assert valid.ranks.tolist() == reference_ranks(model, rows, cut=2, mask_history=mask_history).tolist()


def test_evaluator_runs_without_grad_in_eval_mode_and_restores_training():
    _, data = toy_dataset()
    model = FakeModel(max_len=3)
    model.train()
    evaluate(model, data.split(), batch_size=10)
    assert model.training
    assert all(not c["training"] and not c["grad"] and c["timestamps"] for c in model.calls)
    assert max(c["shape"][1] for c in model.calls) <= 3  # a DataSplit is cut to model.max_len


def test_bf16_precision_scores_every_batch_under_autocast():
    _, data = toy_dataset()
    model = FakeModel()
    fp32 = evaluate(model, data.split(), batch_size=10)
    assert not any(c["autocast"] for c in model.calls)
    model.calls.clear()
    bf16 = evaluate(model, data.split(), batch_size=10, precision="bf16")
    assert len(model.calls) == 3 and all(c["autocast"] == torch.bfloat16 for c in model.calls)
    assert bf16.protocol["precision"] == "bf16" and fp32.protocol["precision"] == "fp32"
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the evaluation
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        evaluate(model, data.split(), precision="fp16")


def test_seqrec_model_scores_in_fp32_under_autocast():
    """bf16 logits would tie most of 3000 items (8 mantissa bits); the zoo's scores stay fp32."""
    model = zoo.create("sasrec", num_items=3000).eval()
    items = torch.randint(1, 3001, (4, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = model.score(items)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.score(items)
            rounded = model.item_logits(model.readout(*model.encode(items, newest_only=True)))
    assert mixed.dtype == torch.float32
    assert min(len(row[1:].unique()) for row in mixed) > 2990
    assert max(len(row[1:].unique()) for row in rounded) < 2000  # what scoring in bf16 would give
    # bf16 rounds to 8 significant bits (0.4% each time); through two layers, well under 1% of the scale
    torch.testing.assert_close(mixed[:, 1:], exact[:, 1:], atol=0.01 * float(exact[:, 1:].abs().max()), rtol=0)


def test_batches_hold_similar_lengths_so_padding_is_trimmed():
    rows, data = toy_dataset()
    model = FakeModel(max_len=20)
    evaluate(model, data.split(), batch_size=5)
    widths = [c["shape"][1] for c in model.calls]
    histories = sorted(len(row) - 1 for row in rows)  # test histories, shortest first
    assert widths == [max(histories[i:i + 5]) for i in range(0, len(rows), 5)]


def test_sampled_negatives_exclude_history_and_target_and_repeat():
    rows, data = toy_dataset()
    samples = data.split().eval_samples("test", max_len=4)
    negatives = sample_negatives(samples, NUM_ITEMS, num_negatives=10, seed=3)
    assert negatives.shape == (len(rows), 10)
    for u, row in enumerate(rows):
        chosen = negatives[u].tolist()
        assert len(set(chosen)) == 10 and all(1 <= c <= NUM_ITEMS for c in chosen)
        assert not set(chosen) & set(row)  # history (row[:-1]) and target (row[-1])
    assert np.array_equal(negatives, sample_negatives(samples, NUM_ITEMS, 10, seed=3))
    assert not np.array_equal(negatives, sample_negatives(samples, NUM_ITEMS, 10, seed=4))


def test_sampled_negatives_are_uniform_over_allowed_items():
    seqs = Sequences.from_rows([[2, 5, 9]])  # history {2, 5}, target 9 -> 7 allowed items of 10
    samples = NextItemSamples(seqs, rows=np.zeros(3000, dtype=np.int64), ends=np.full(3000, 2), max_len=3)
    counts = np.bincount(sample_negatives(samples, 10, num_negatives=3, seed=0).ravel(), minlength=11)
    assert counts[[0, 2, 5, 9]].tolist() == [0, 0, 0, 0]
    allowed = counts[[1, 3, 4, 6, 7, 8, 10]]
    assert np.all(np.abs(allowed - 9000 / 7) < 5 * np.sqrt(9000 / 7))


def test_sampled_ranking_matches_loop_and_ignores_batch_size():
    rows, data = toy_dataset()
    model = FakeModel(quantise=True)
    split = data.split()
    samples = split.eval_samples("test", model.max_len)
    negatives = sample_negatives(samples, NUM_ITEMS, 8, seed=11)
    expected = reference_ranks(model, rows, cut=1, negatives=negatives)
    a = evaluate(model, split, mode="sampled", num_negatives=8, seed=11, batch_size=4)
    b = evaluate(model, split, mode="sampled", num_negatives=8, seed=11, batch_size=100)
    assert a.ranks.tolist() == b.ranks.tolist() == expected.tolist()
    assert a.ranks.max() <= 9


def test_too_few_items_for_negatives():
    _, data = toy_dataset()
    with pytest.raises(ValueError, match="fewer than num_negatives=29"):
        evaluate(FakeModel(), data.split(), mode="sampled", num_negatives=29)


def test_groups_and_result_serialisation():
    rows, data = toy_dataset(users=40)
    result = evaluate(FakeModel(), data.split(), ks=(10, 1), group_bounds=(5, 10))
    lengths = np.array([len(r) - 1 for r in rows])
    assert result.history_lengths.tolist() == lengths.tolist()
    assert [g["count"] for g in result.groups.values()] == [
        int((lengths < 5).sum()), int(((lengths >= 5) & (lengths < 10)).sum()), int((lengths >= 10).sum())]
    middle = (lengths >= 5) & (lengths < 10)
    assert result.groups["[5,10)"]["NDCG@10"] == pytest.approx(metrics_from_ranks(result.ranks[middle], (10,))["NDCG@10"])
    facts = json.loads(json.dumps(result.to_dict()))
    assert facts["protocol"]["ks"] == [1, 10] and facts["protocol"]["ties"] == "pessimistic"
    assert facts["num_examples"] == 40 and result["HR@10"] == facts["metrics"]["HR@10"]
    table = result.table()
    assert "full ranking, 40 examples" in table and "NDCG" in table and "[10,inf)" in table


def test_bad_model_outputs_are_reported():
    _, data = toy_dataset()

    class NaNModel(FakeModel):
        def score(self, item_ids, timestamps=None):
            out = super().score(item_ids, timestamps)
            out[0, 3] = math.nan
            return out

    class ShortModel(FakeModel):
        def score(self, item_ids, timestamps=None):
            return super().score(item_ids, timestamps)[:, :10]

    class InfiniteModel(FakeModel):  # +inf and -inf scores are legal (their sum is NaN, which must not trip the check)
        def score(self, item_ids, timestamps=None):
            out = super().score(item_ids, timestamps)
            out[:, 2], out[:, 5] = math.inf, -math.inf
            return out

    with pytest.raises(ValueError, match="NaN scores"):
        evaluate(NaNModel(), data.split())
    assert evaluate(InfiniteModel(), data.split()).ranks.min() >= 1
    with pytest.raises(ValueError, match="beyond the model's 9 items"):
        evaluate(ShortModel(), data.split())
    with pytest.raises(ValueError, match="mode must be"):
        evaluate(FakeModel(), data.split(), mode="topk")


def test_seqrec_model_end_to_end():
    data = generate_dataset(num_users=20, num_items=40, length=(4, 12), seed=2)
    model = zoo.create("sasrec", num_items=data.num_items)
    split = data.split()
    result = evaluate(model, split, batch_size=8)
    samples = split.eval_samples("test", model.max_len)
    model.eval()
    expected = []
    for s in range(len(samples)):
        batch = samples[[s]]
        with torch.no_grad():
            scores = model.score(batch["item_ids"])[0]
        expected.append(int((scores[1:] >= scores[batch["target"][0]]).sum()))
    assert result.ranks.tolist() == expected


def test_default_batch_size_keeps_a_batchs_scores_within_the_budget():
    assert default_batch_size(1682) == BATCH_BOUNDS[1]  # ml-100k: 943 users in batches of 256
    for num_items in (100_000, 200_000):
        size = default_batch_size(num_items)
        assert BATCH_BOUNDS[0] < size < BATCH_BOUNDS[1]
        assert size * 4 * (num_items + 1) <= SCORES_BUDGET_BYTES < (size + 1) * 4 * (num_items + 1)
    assert default_batch_size(10_000_000) == BATCH_BOUNDS[0]
    assert default_batch_size(None) == 256
