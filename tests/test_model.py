"""The model API (score, recommend, streaming, loss, input errors), end to end over every bundled recipe."""

from __future__ import annotations

import pytest
import torch

import zoo
from zoo.model import left_pad

V = 40


def histories(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, V + 1, (n,), generator=g).tolist() for n in lengths]


def timestamps_for(rows):
    return [[8.8e8 + 86400.0 * 3 * i for i in range(len(r))] for r in rows]


def make(name, **overrides):
    torch.manual_seed(0)
    model = zoo.create(name, num_items=V, **overrides).eval()
    if "text" in getattr(model.item_encoder, "item_features", ()):
        # as zoo.train does: a text item encoder refuses to train on a table that was never loaded
        model.set_item_features(text=torch.randn(V + 1, model.item_encoder.text_dim))
    return model


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_recipe_builds_scores_and_trains_one_step(name):
    model = make(name, **{"train.num_negatives": 5})  # ConvRec draws distinct negatives outside the history: few of V are left
    rows = histories([model.max_len, 5, 1])
    ids = left_pad(rows)
    ts = left_pad(timestamps_for(rows), dtype=torch.float64)
    scores = model.score(ids, ts)
    assert scores.shape == (3, V + 1)
    assert torch.isinf(scores[:, 0]).all() and (scores[:, 0] < 0).all()
    assert torch.isfinite(scores[:, 1:]).all()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model.loss({"item_ids": ids, "timestamps": ts, "target": torch.tensor([1, 2, 3])})
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, f"{name}: one training step changed no weight"


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_recipe_is_padding_invariant_end_to_end(name):
    model = make(name)
    rows = histories([model.max_len, 6, 2], seed=1)
    ts_rows = timestamps_for(rows)
    with torch.no_grad():
        batched = model.score(left_pad(rows), left_pad(ts_rows, dtype=torch.float64))
        for i, row in enumerate(rows):
            alone = model.score(left_pad([row]), left_pad([ts_rows[i]], dtype=torch.float64))
            torch.testing.assert_close(batched[i, 1:], alone[0, 1:], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", zoo.list_models())
def test_score_equals_the_readout_of_the_full_encoding(name):
    # score() runs only the newest position through the encoder's last layers when the readout
    # reads nothing else; the full per-position encoding must give the same scores.
    model = make(name)
    rows = histories([model.max_len, 9, 3], seed=2)
    ids, ts = left_pad(rows), left_pad(timestamps_for(rows), dtype=torch.float64)
    with torch.no_grad():
        hidden, mask = model.encode(*model._append_mask_token(ids, ts))
        full = model.item_logits(model.readout(hidden, mask))
        torch.testing.assert_close(model.score(ids, ts), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in zoo.list_models() if zoo.create(n, num_items=V).supports_streaming])
def test_streaming_step_equals_score(name):
    model = make(name)
    rows = histories([8, 8], seed=2)
    ts_rows = timestamps_for(rows)
    ids, ts = left_pad(rows), left_pad(ts_rows, dtype=torch.float64)
    with torch.no_grad():
        state = model.init_state(2)
        for t in range(8):
            stepped, state = model.step(ids[:, t], state, ts[:, t])
            full = model.score(ids[:, : t + 1], ts[:, : t + 1])
            torch.testing.assert_close(stepped[:, 1:], full[:, 1:], atol=2e-5, rtol=1e-4)


def test_gru4rec_streams_and_sasrec_does_not():
    assert make("gru4rec").supports_streaming
    sasrec = make("sasrec")
    assert not sasrec.supports_streaming
    with pytest.raises(RuntimeError, match="does not support streaming"):
        sasrec.init_state(1)


def test_long_histories_keep_the_most_recent_items():
    model = make("sasrec", max_len=10)
    long_row = histories([25], seed=3)[0]
    with torch.no_grad():
        torch.testing.assert_close(model.score(left_pad([long_row])), model.score(left_pad([long_row[-10:]])))


def test_positions_do_not_shift_with_left_padding():
    model = make("sasrec")
    row = histories([4], seed=4)[0]
    with torch.no_grad():
        a = model.score(left_pad([row]))
        b = model.score(torch.cat([torch.zeros(1, 9, dtype=torch.long), left_pad([row])], 1))
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_recommend_top_k_and_exclude_seen():
    model = make("sasrec")
    rows = [[1, 2, 3], [4, 5]]
    rec = model.recommend(rows, k=5)
    assert rec.items.shape == (2, 5) and rec.scores.shape == (2, 5)
    assert (rec.items > 0).all() and (rec.scores[:, :-1] >= rec.scores[:, 1:]).all()
    scores = model.score(left_pad(rows))
    torch.testing.assert_close(rec.scores, scores.topk(5).values)
    unseen = model.recommend(rows, k=V - 3, exclude_seen=True)
    assert not set(unseen.items[0].tolist()) & {1, 2, 3}
    assert not set(unseen.items[1].tolist()) & {4, 5}
    assert model.training is False


@pytest.mark.parametrize(
    "item_ids,message",
    [
        (torch.tensor([[0, 1, V + 1]]), "out of range"),
        (torch.tensor([[0, -2, 3]]), "out of range"),
        (torch.tensor([[0.0, 1.0]]), "integer item indices"),
        (torch.tensor([1, 2, 3]), "shape \\(B, L\\)"),
        ([[1, 2]], "LongTensor"),
        (torch.tensor([[0, 0], [1, 2]]), "no items"),
        (torch.tensor([[1, 0, 2]]), "padding \\(0\\) after a real item"),
    ],
)
def test_score_rejects_bad_input(item_ids, message):
    with pytest.raises(ValueError, match=message):
        make("sasrec").score(item_ids)


def test_recommend_rejects_empty_history_and_bad_k():
    model = make("sasrec")
    with pytest.raises(ValueError, match="history 1 is empty"):
        model.recommend([[1], []])
    with pytest.raises(ValueError, match="k must be"):
        model.recommend([[1]], k=0)


def test_all_positions_loss_needs_a_state_per_position():
    ids = left_pad([[1, 2, 3, 4]])
    targets = left_pad([[2, 3, 4, 5]])
    assert torch.isfinite(make("sasrec").loss({"item_ids": ids, "targets": targets}))
    # a whole-sequence readout trains every prefix behind a causal encoder (its running mean) ...
    assert torch.isfinite(make("sasrec", readout="mean").loss({"item_ids": ids, "targets": targets}))
    # ... but not behind one that looks ahead: refused when built, and by the loss
    why = "readout 'mean' reads every position's state, and block 'transformer_layer' .* makes those depend on later items"
    with pytest.raises(ValueError, match=why):
        make("bert4rec", readout="mean", **{"train.objective": "all"})
    with pytest.raises(ValueError, match=why):
        make("bert4rec", readout="mean", **{"train.objective": "last"}).loss({"item_ids": ids, "targets": targets})


def test_no_weight_decay_lists_norms_biases_and_ssm_parameters():
    model = make("sasrec")
    names = model.no_weight_decay()
    assert any(n.endswith("bias") for n in names) and all(p.dim() <= 1 for n, p in model.named_parameters() if n in names)
    assert "item_encoder.embedding.weight" not in names


def test_cloze_models_score_at_an_appended_mask_token():
    model = make("bert4rec")
    token = model.item_encoder.mask_token_id
    assert token == V + 1
    rows = [[3, 4, 5], [i % V + 1 for i in range(model.max_len)]]
    with torch.no_grad():
        scores = model.score(left_pad(rows))
        for i, row in enumerate(rows):
            ids = torch.tensor([(row + [token])[-model.max_len:]])
            hidden, mask = model.encode(ids)
            torch.testing.assert_close(scores[i], model.item_logits(model.readout(hidden, mask))[0])
    assert scores.shape == (2, V + 1), "the [MASK] token is never scored"
