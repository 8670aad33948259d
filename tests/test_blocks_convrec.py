"""ConvRec blocks: the convolution down-scaling readout (conv_pyramid) and the attribute/context item encoder."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.conv_pyramid import ConvPyramid, pyramid_lengths
from zoo.blocks.convrec_encoder import AttributeContextEncoder, calendar_context, calendar_fields, packed_rows

ATOL, RTOL = 1e-5, 1e-4

# (pad, output length) per layer of the default schedule (2,2),(5,5),(7,7), worked out by hand with
# ConvRec's rule: n >= k -> pad (s - (n - k) % s) % s; n < k -> pad k - n; next = (n + pad - k) // s + 1.
HAND_SCHEDULES = {
    1: [(1, 1), (4, 1), (6, 1)],
    2: [(0, 1), (4, 1), (6, 1)],
    30: [(0, 15), (0, 3), (4, 1)],
    35: [(1, 18), (2, 4), (3, 1)],
    50: [(0, 25), (0, 5), (2, 1)],
    70: [(0, 35), (0, 7), (0, 1)],
    200: [(0, 100), (0, 20), (1, 3)],
}


@pytest.mark.parametrize("length", sorted(HAND_SCHEDULES))
def test_pyramid_length_schedule_matches_hand_computation(length):
    assert pyramid_lengths(length, [(2, 2), (5, 5), (7, 7)]) == HAND_SCHEDULES[length]
    block = ConvPyramid(d_model=4, max_len=length).eval()
    seen = []
    for layer in block.layers:
        def recorded(x, convolve=layer._convolve):
            out = convolve(x)
            seen.append((x.shape[1], out.shape[1]))
            return out

        layer._convolve = recorded
    mask = torch.ones(2, length, dtype=torch.bool)
    user = block(torch.randn(2, length, 4), mask)
    assert user.shape == (2, 4)
    lengths_in = [length] + [n for _, n in HAND_SCHEDULES[length][:-1]]
    expected = [(n + pad, out) for n, (pad, out) in zip(lengths_in, HAND_SCHEDULES[length])]
    assert seen == expected


def test_pyramid_schedule_with_overlapping_windows():
    # (2,1) slides one step: 10 -> 9; then 9 >= 5: (9 - 5) % 5 = 4 -> pad 1 -> 10 -> 2.
    assert pyramid_lengths(10, [(2, 1), (5, 5)]) == [(0, 9), (1, 2)]


def _layer_norm_c(x, layer_norm):
    centred = x - x.mean(-1, keepdim=True)
    return layer_norm.weight * centred / (x.std(-1, keepdim=True) + 1e-6) + layer_norm.bias


def _reference_pyramid(block: ConvPyramid, x: torch.Tensor) -> torch.Tensor:
    """The stack written window by window for one unbatched sequence ``x (max_len, D)`` (no pads)."""
    x_res = x
    for layer, (kernel, stride) in zip(block.layers, block.schedule):
        length = x.shape[0]
        pad = (stride - (length - kernel) % stride) % stride if length >= kernel else kernel - length
        x = torch.cat([torch.zeros(pad, x.shape[1]), x])
        x_res = torch.cat([torch.zeros(pad, x.shape[1]), x_res])
        outs, pooled, pooled_res = [], [], []
        for start in range(0, x.shape[0] - kernel + 1, stride):
            window = x[start:start + kernel]  # (k, D)
            conv = torch.einsum("oik,ki->o", layer.conv.weight, window) + layer.conv.bias
            outs.append(F.gelu(layer.out_linear(conv)))
            pooled.append(window.mean(0))
            pooled_res.append(x_res[start:start + kernel].mean(0))
        out, x_res = torch.stack(outs), torch.stack(pooled_res)
        x = _layer_norm_c(out + layer.w1 * torch.stack(pooled) + layer.w2 * x_res, layer.norm)
    return x.mean(0)


def test_pyramid_equals_window_by_window_reference():
    torch.manual_seed(0)
    block = ConvPyramid(d_model=6, max_len=11, schedule=((2, 2), (3, 3))).eval()
    with torch.no_grad():
        for layer in block.layers:  # make the residual weights and the norm non-trivial
            layer.w1.fill_(0.3)
            layer.w2.fill_(-0.7)
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(11, 6)
        got = block(x.unsqueeze(0), torch.ones(1, 11, dtype=torch.bool))[0]
        torch.testing.assert_close(got, _reference_pyramid(block, x), atol=ATOL, rtol=RTOL)


def test_pyramid_short_sequence_equals_left_zero_padded_full_window():
    torch.manual_seed(1)
    block = ConvPyramid(d_model=6, max_len=12, schedule=((3, 3), (4, 4))).eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        got = block(x.unsqueeze(0), torch.ones(1, 5, dtype=torch.bool))[0]
        want = _reference_pyramid(block, torch.cat([torch.zeros(7, 6), x]))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("width", [4, 9, 13, 20])
def test_pyramid_output_does_not_depend_on_batch_width(width):
    torch.manual_seed(2)
    block = ConvPyramid(d_model=8, max_len=9).eval()
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        alone = block(x, torch.ones(1, 4, dtype=torch.bool))
        garbage = 50 * torch.randn(1, width - 4, 8)
        mask = torch.cat([torch.zeros(1, width - 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)], 1)
        wide = block(torch.cat([garbage, x], 1), mask)
    torch.testing.assert_close(wide, alone, atol=ATOL, rtol=RTOL)


def test_pyramid_rejects_sequences_longer_than_max_len():
    block = ConvPyramid(d_model=4, max_len=5)
    with pytest.raises(ValueError, match="6 real items.*max_len=5"):
        block(torch.randn(1, 6, 4), torch.ones(1, 6, dtype=torch.bool))


def test_pyramid_ablation_modes():
    torch.manual_seed(3)
    x, mask = torch.randn(3, 7, 4), torch.ones(3, 7, dtype=torch.bool)
    mask[0, :4] = False
    avg = ConvPyramid(d_model=4, max_len=7, mode="avgpool")
    assert not list(avg.parameters())
    torch.testing.assert_close(avg(x, mask)[0], x[0, 4:].mean(0))
    one = ConvPyramid(d_model=4, max_len=7, mode="one_conv")
    assert one.schedule == [(7, 7)] and one.plan == [(0, 1)]
    bare = ConvPyramid(d_model=4, max_len=7, progressive_residual=False, original_residual=False)
    names = {n for n, _ in bare.named_parameters()}
    assert not any(n.endswith((".w1", ".w2")) for n in names)
    full = ConvPyramid(d_model=4, max_len=7)
    assert all(layer.w1.item() == 0.5 and layer.w2.item() == 0.5 for layer in full.layers)


def test_pyramid_grouped_heads_and_torch_norm():
    block = ConvPyramid(d_model=8, max_len=10, num_heads=4, norm="layernorm")
    assert block.layers[0].conv.weight.shape == (8, 2, 2)
    assert isinstance(block.layers[0].norm, torch.nn.LayerNorm)
    assert block(torch.randn(2, 10, 8), torch.ones(2, 10, dtype=torch.bool)).shape == (2, 8)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"schedule": ((2, 3),)}, "stride <= kernel"),
        ({"schedule": ()}, "at least one"),
        ({"num_heads": 3}, "divide d_model"),
        ({"max_len": 0}, "max_len"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_pyramid_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvPyramid(d_model=8, **kwargs)


# ---------------------------------------------------------------- attribute_context encoder


KNOWN_DATES = [
    datetime.datetime(1970, 1, 1, 0, 0, 0),
    datetime.datetime(1969, 12, 31, 23, 59, 59),
    datetime.datetime(1997, 9, 20, 3, 5, 10),
    datetime.datetime(1998, 4, 22, 23, 59, 59),
    datetime.datetime(2000, 2, 29, 12, 0, 0),
    datetime.datetime(2000, 3, 1, 0, 0, 0),
    datetime.datetime(2000, 12, 31, 8, 0, 0),
    datetime.datetime(1900, 3, 1, 0, 0, 0),
    datetime.datetime(2024, 12, 31, 23, 0, 0),
    datetime.datetime(2100, 2, 28, 0, 0, 0),
]


def test_calendar_fields_on_known_dates():
    stamps = [d.replace(tzinfo=datetime.timezone.utc).timestamp() for d in KNOWN_DATES]
    got = calendar_fields(torch.tensor(stamps, dtype=torch.float64)).tolist()
    want = [[d.year, d.month, d.day, d.weekday(), d.timetuple().tm_yday, (d.day - 1) // 7 + 1] for d in KNOWN_DATES]
    assert got == want
    assert calendar_fields(torch.tensor([951825600])).tolist() == [[2000, 2, 29, 1, 60, 5]]  # int seconds too


def test_calendar_context_normalisation():
    leap_day = datetime.datetime(2000, 2, 29, 12, tzinfo=datetime.timezone.utc).timestamp()
    got = calendar_context(torch.tensor([leap_day], dtype=torch.float64), (1990, 2030))[0]
    torch.testing.assert_close(got, torch.tensor([10 / 40, 2 / 12, 29 / 31, 1 / 7, 60 / 365, 5 / 4]))


def test_frequent_item_trick_mapping():
    block = AttributeContextEncoder(d_model=4, num_items=6, num_known_items=2)
    assert block.id_embedding.num_embeddings == 4  # pad, 2 known, 1 shared
    assert block.id_rows.tolist() == [0, 1, 2, 3, 3, 3, 3]  # ids assumed sorted by frequency
    block.set_item_features(item_counts=torch.tensor([100, 5, 1, 9, 9, 0, 2]))
    # ranks: item 3 (9), item 4 (9, tie -> larger id second), item 1 (5), item 6, item 2, item 5
    assert block.id_rows.tolist() == [0, 3, 3, 1, 2, 3, 3]
    assert "id_rows" in block.state_dict()
    every = AttributeContextEncoder(d_model=4, num_items=6)
    assert every.id_rows.tolist() == list(range(7)) and every.id_embedding.num_embeddings == 7


def test_items_sharing_an_id_differ_only_through_attributes():
    torch.manual_seed(4)
    block = AttributeContextEncoder(d_model=4, num_items=5, num_attributes=3, num_known_items=1).eval()
    attributes = torch.zeros(6, 3)
    attributes[4] = torch.tensor([1.0, 0.0, 1.0])
    block.set_item_features(attributes=attributes)
    table = block.item_table()
    torch.testing.assert_close(table[2], table[3])  # both rare, same (zero) attributes
    assert not torch.allclose(table[2], table[4])  # rare too, but its attributes differ
    assert not torch.allclose(table[1], table[2])  # item 1 keeps its own ID
    assert torch.equal(table[0], torch.zeros(4))


def _reference_encoder(block, ids, stamps, first):
    """ConvRec Eqs. 1-7 for one sequence without padding, written out with the block's weights."""
    outs, previous = [], None
    for item, stamp in zip(ids.tolist(), stamps.tolist()):
        context = calendar_context(torch.tensor([stamp], dtype=torch.float64), block.year_range)[0]
        f = block.features_encoder.weight @ block.attributes[item] + block.features_encoder.bias
        c = block.context_encoder.weight @ context + block.context_encoder.bias
        a = block.combine_encoder.weight @ torch.cat([f, c]) + block.combine_encoder.bias
        e = block.id_embedding.weight[block.id_rows[item]]
        v = block.item_encoder.weight @ torch.cat([e, a]) + block.item_encoder.bias
        interval = torch.full((3,), first) if previous is None else context[:3] - previous
        previous = context[:3]
        h = _layer_norm_c(F.gelu(torch.cat([v, interval])), block.norm)
        outs.append(F.gelu(block.in_linear.weight @ h + block.in_linear.bias))
    return torch.stack(outs)


@pytest.mark.parametrize("first_interval,first", [("zero", 0.0), ("one", 1.0)])
def test_encoder_equals_equations_with_intervals(first_interval, first):
    torch.manual_seed(5)
    block = AttributeContextEncoder(d_model=4, num_items=6, num_attributes=3, first_interval=first_interval).eval()
    block.set_item_features(attributes=torch.rand(7, 3))
    ids = torch.tensor([3, 1, 6, 2])
    day = 86400.0
    stamps = torch.tensor([8.8e8, 8.8e8 + 40 * day, 8.8e8 + 400 * day, 8.8e8 + 401 * day], dtype=torch.float64)
    want = _reference_encoder(block, ids, stamps, first)
    with torch.no_grad():
        got = block(ids.unsqueeze(0), torch.ones(1, 4, dtype=torch.bool), stamps.unsqueeze(0))[0]
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
        # the same sequence behind 3 pads with garbage ids and timestamps
        padded = block(
            torch.cat([torch.tensor([[5, 5, 5]]), ids.unsqueeze(0)], 1),
            torch.tensor([[False] * 3 + [True] * 4]),
            torch.cat([torch.tensor([[1e9, -3e9, 7.0]], dtype=torch.float64), stamps.unsqueeze(0)], 1),
        )
    torch.testing.assert_close(padded[0, 3:], want, atol=ATOL, rtol=RTOL)
    assert torch.equal(padded[0, :3], torch.zeros(3, 4))


class _ChannelDropout(torch.nn.Module):
    """A deterministic stand-in for dropout: zeroes every third channel and scales the rest by 1.5."""

    p = 1 / 3

    def forward(self, x):
        return x * (torch.arange(x.shape[-1]) % 3 != 0).to(x.dtype) * 1.5


def test_encoder_in_training_equals_equations_with_dropout_on_the_side_vector():
    """Training keeps dropout between the side map and W_v (Eq. 4), so only the side map is composed there."""
    torch.manual_seed(8)
    block = AttributeContextEncoder(d_model=4, num_items=6, num_attributes=3, dropout=0.5).double().train()
    block.set_item_features(attributes=torch.rand(7, 3, dtype=torch.float64))
    block.dropout = _ChannelDropout()
    ids = torch.tensor([3, 1, 6])
    stamps = torch.tensor([8.8e8, 8.9e8, 9.1e8], dtype=torch.float64)
    outs, previous = [], None
    for item, stamp in zip(ids.tolist(), stamps.tolist()):
        context = calendar_context(torch.tensor([stamp], dtype=torch.float64), block.year_range)[0].double()
        f = block.features_encoder.weight @ block.attributes[item] + block.features_encoder.bias
        c = block.context_encoder.weight @ context + block.context_encoder.bias
        a = block.dropout(block.combine_encoder.weight @ torch.cat([f, c]) + block.combine_encoder.bias)
        e = block.id_embedding.weight[block.id_rows[item]]
        v = block.item_encoder.weight @ torch.cat([e, a]) + block.item_encoder.bias
        interval = torch.zeros(3, dtype=torch.float64) if previous is None else context[:3] - previous
        previous = context[:3]
        h = _layer_norm_c(block.dropout(F.gelu(torch.cat([v, interval]))), block.norm)
        outs.append(F.gelu(block.in_linear.weight @ h + block.in_linear.bias))
    with torch.no_grad():
        got = block(ids.unsqueeze(0), torch.ones(1, 3, dtype=torch.bool), stamps.unsqueeze(0))[0]
        # beside a longer row, behind two pads: only the real positions are encoded
        padded = block(torch.tensor([[4, 4, 3, 1, 6], [2, 5, 1, 3, 6]]), torch.tensor([[False, False] + [True] * 3, [True] * 5]),
                       torch.cat([torch.tensor([[1e9, 2e9]], dtype=torch.float64), stamps.unsqueeze(0)], 1).expand(2, 5))
    torch.testing.assert_close(got, torch.stack(outs).detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(padded[0, 2:], got, atol=1e-12, rtol=1e-12)
    assert torch.equal(padded[0, :2], torch.zeros(2, 4, dtype=torch.float64))


def test_encoder_without_intervals_or_timestamps():
    torch.manual_seed(6)
    block = AttributeContextEncoder(d_model=4, num_items=6, intervals=False).eval()
    assert block.in_linear.in_features == 4
    ids, mask = torch.tensor([[0, 2, 5]]), torch.tensor([[False, True, True]])
    with torch.no_grad():
        got = block(ids, mask, None)
        table = block.item_table()
    # no timestamps -> zero context; without intervals each position is its item's table row
    torch.testing.assert_close(got[0, 1:], table[[2, 5]], atol=ATOL, rtol=RTOL)


def test_item_table_equals_a_one_item_history_without_time():
    torch.manual_seed(7)
    block = AttributeContextEncoder(d_model=4, num_items=5, num_attributes=2).eval()
    block.set_item_features(attributes=torch.rand(6, 2))
    with torch.no_grad():
        table = block.item_table()
        ids = torch.arange(1, 6).unsqueeze(1)
        alone = block(ids, torch.ones(5, 1, dtype=torch.bool), None)[:, 0]
    torch.testing.assert_close(table[1:], alone, atol=ATOL, rtol=RTOL)
    assert table.shape == (6, 4) and torch.equal(table[0], torch.zeros(4))


def test_encoder_feature_errors():
    block = AttributeContextEncoder(d_model=4, num_items=5, num_attributes=2)
    with pytest.raises(ValueError, match=r"shape \(6, 2\)"):
        block.set_item_features(attributes=torch.zeros(5, 2))
    with pytest.raises(ValueError, match="uses only"):
        block.set_item_features(text=torch.zeros(6, 8))
    with pytest.raises(ValueError, match="num_known_items"):
        block.set_item_features(item_counts=torch.ones(6))
    with pytest.raises(ValueError, match="timestamps"):
        block(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="num_known_items"):
        AttributeContextEncoder(d_model=4, num_items=5, num_known_items=9)
    with pytest.raises(ValueError, match="year_range"):
        AttributeContextEncoder(d_model=4, num_items=5, year_range=(2000, 1990))
    attributes = torch.ones(6, 2)
    block.set_item_features(attributes=attributes)
    assert torch.equal(block.attributes[0], torch.zeros(2)) and attributes[0].sum() == 2  # copied, row 0 zeroed


def test_packed_rows_are_the_real_positions_then_pads_up_to_an_eighth_of_the_grid():
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[0, 7:] = mask[1, 2:] = mask[3, 9:] = True  # 3 + 8 + 1 = 12 real of 40; steps of 5 rows
    chosen, real = packed_rows(mask)
    flat = mask.flatten()
    assert real == 12 and len(chosen) == 15 and len(set(chosen.tolist())) == 15
    assert torch.equal(chosen[:real], flat.nonzero().squeeze(1))
    assert not flat[chosen[real:]].any()
    chosen, real = packed_rows(torch.ones(2, 3, dtype=torch.bool))
    assert real == 6 and chosen.tolist() == list(range(6))
