"""Every-prefix outputs (``forward_prefixes``) against running each prefix on its own.

``block.forward_prefixes(x, mask)[:, t]`` must equal ``block(x[:, :t + 1], mask[:, :t + 1])[:, -1]``
wherever position ``t`` holds a real item: what scoring the history up to ``t`` sees. Checked for
every registered sequence block and contract variant that offers it (the others must refuse), and
for the encoder of every bundled recipe. float64, tolerance 1e-9 (the same arithmetic regrouped:
prefix sums instead of step-by-step scans).
"""

from __future__ import annotations

import pytest
import torch
from test_contract import CASES, build

import zoo
from padding import left_padded
from zoo.blocks.bidirectional_mamba import BidirectionalMamba
from zoo.blocks.conv_pyramid import ConvPyramid

D = 16
LENGTHS = [12, 7, 1, 4, 9, 2]
TOL = dict(rtol=1e-9, atol=1e-9)


def inputs(width: int = 12, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x, mask = left_padded(LENGTHS, width, D, garbage=10.0, generator=g)
    return x.double(), mask


def assert_matches_each_prefix(run_prefixes, run, x, mask):
    got = run_prefixes(x, mask)
    for t in range(mask.shape[1]):
        rows = mask[:, t]
        if rows.any():
            want = run(x[rows, : t + 1], mask[rows, : t + 1])[:, -1]
            torch.testing.assert_close(got[rows, t], want, **TOL, msg=f"position {t}")


SEQUENCE_CASES = [case for case in CASES if build(*case.values).kind == "sequence"]


@pytest.mark.parametrize("name, kwargs", SEQUENCE_CASES)
def test_block_prefixes_equal_each_prefix_run_alone(name, kwargs):
    block = build(name, kwargs).double()
    x, mask = inputs()
    if not block.offers_prefixes():
        assert not block.causal
        with pytest.raises(NotImplementedError):
            block.forward_prefixes(x, mask)
        return
    with torch.no_grad():
        assert_matches_each_prefix(block.forward_prefixes, block, x, mask)


READOUT_CASES = [case for case in CASES if build(*case.values).kind == "readout"]


@pytest.mark.parametrize("name, kwargs", READOUT_CASES)
def test_readout_prefixes_equal_each_prefix_read_alone(name, kwargs):
    """``forward_prefixes(x, mask)[:, t] == forward(x[:, :t + 1], mask[:, :t + 1])``, the user vector itself."""
    block = build(name, kwargs).double()
    x, mask = inputs()
    assert block.offers_prefixes()
    with torch.no_grad():
        assert_matches_each_prefix(block.forward_prefixes, lambda x, mask: block(x, mask).unsqueeze(1), x, mask)


@pytest.mark.parametrize("width, kwargs", [
    (12, {"max_len": 12, "schedule": [(3, 2), (4, 3), (2, 2)]}),  # pads at the first two layers, read by the next
    (12, {"max_len": 12, "schedule": [(5, 5), (3, 1)]}),  # overlapping windows after a padded layer
    (9, {"max_len": 12, "schedule": [(2, 2), (2, 2), (3, 3)], "num_heads": 4}),  # narrower than max_len
    (30, {"max_len": 50}),  # ConvRec's pyramid (2, 2), (5, 5), (7, 7)
    (20, {"max_len": 20, "mode": "one_conv"}),
])
def test_pyramid_prefixes_where_the_pad_rule_puts_zeros_into_windows(width, kwargs):
    torch.manual_seed(0)
    block = ConvPyramid(D, **kwargs).double().eval()
    g = torch.Generator().manual_seed(2)
    lengths = [width, width - 1, 1, 5, width // 2, 2]
    x, mask = left_padded(lengths, width, D, garbage=10.0, generator=g)
    with torch.no_grad():
        assert_matches_each_prefix(block.forward_prefixes, lambda x, mask: block(x.double(), mask).unsqueeze(1),
                                   x.double(), mask)


def test_pyramid_prefixes_refuse_a_sequence_longer_than_max_len():
    block = ConvPyramid(D, max_len=8)
    with pytest.raises(ValueError, match="has 9 real items but the block was built for max_len=8"):
        block.forward_prefixes(torch.randn(1, 9, D), torch.ones(1, 9, dtype=torch.bool))


@pytest.mark.parametrize("kwargs", [
    {"remain": 1, "gate": "sum"}, {"remain": 2}, {"remain": 3, "d_conv": 2}, {"remain": 4, "d_conv": 6, "gate": "linear"},
    {"remain": 15, "shared": False}, {"flip": "none", "shared": False}, {"remain": 2, "gate_form": "code"},
    {"remain": 5, "stream_weights": (0.8, 0.1)},
])
def test_partial_flip_prefixes_across_remain_and_conv_width(kwargs):
    torch.manual_seed(0)
    block = BidirectionalMamba(D, d_state=4, expand=1, **kwargs).double().eval()
    x, mask = inputs(width=14, seed=5)
    assert block.offers_prefixes()
    with torch.no_grad():
        assert_matches_each_prefix(block.forward_prefixes, block, x, mask)


def test_flips_that_move_the_newest_item_refuse():
    for kwargs in ({"flip": "full"}, {"remain": 0}, {"flip": "code"}, {"remain": 1}):  # remain 1: the gate reads item n - 1
        assert not BidirectionalMamba(D, **kwargs).offers_prefixes()


def test_gradients_flow_through_the_prefix_pass():
    torch.manual_seed(0)
    block = BidirectionalMamba(D, d_state=4, expand=1, remain=3).double()
    x, mask = inputs()
    x.requires_grad_(True)
    block.forward_prefixes(x, mask)[mask].square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[mask].abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("recipe", zoo.list_models())
def test_recipe_encoders(recipe):
    torch.manual_seed(0)
    model = zoo.create(recipe, num_items=30).eval()
    g = torch.Generator().manual_seed(1)
    mask = torch.arange(12).expand(len(LENGTHS), 12) >= 12 - torch.tensor(LENGTHS)[:, None]
    ids = torch.randint(1, 31, (len(LENGTHS), 12), generator=g) * mask
    with torch.no_grad():
        if not model.encoder.offers_prefixes():
            with pytest.raises(NotImplementedError):
                model.encoder.forward_prefixes(model.item_encoder(ids, mask), mask)
            return
        x = model.item_encoder(ids, mask).double()
        encoder = model.encoder.double()
        assert_matches_each_prefix(encoder.forward_prefixes, encoder, x, mask)


@pytest.mark.parametrize("recipe", [r for r in zoo.list_models() if zoo.create(r, num_items=30).trains_every_prefix])
def test_recipe_prefix_users(recipe):
    """What objective ``all`` trains on: the user vector of every prefix, equal to scoring that prefix alone."""
    torch.manual_seed(0)
    model = zoo.create(recipe, num_items=30).double().eval()
    if "text" in getattr(model.item_encoder, "item_features", ()):
        model.set_item_features(text=torch.randn(31, model.item_encoder.text_dim, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    mask = torch.arange(12).expand(len(LENGTHS), 12) >= 12 - torch.tensor(LENGTHS)[:, None]
    ids = torch.randint(1, 31, (len(LENGTHS), 12), generator=g) * mask
    stamps = (8.8e8 + 86400.0 * torch.arange(12, dtype=torch.float64) * 3).expand(len(LENGTHS), 12) * mask

    def users_alone(ids, stamps):
        hidden, mask = model.encode(ids, stamps)
        return model.readout(hidden, mask).unsqueeze(1)

    with torch.no_grad():
        got, _ = model.prefix_users(ids, stamps)
        for t in range(12):
            rows = mask[:, t]
            want = users_alone(ids[rows, : t + 1], stamps[rows, : t + 1])[:, -1]
            torch.testing.assert_close(got[rows, t], want, **TOL, msg=f"{recipe}: position {t}")
