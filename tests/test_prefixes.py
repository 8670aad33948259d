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
import torch.nn.functional as F
from test_contract import CASES, build

import zoo
from padding import left_padded
from zoo.blocks.bidirectional_mamba import BidirectionalMamba
from zoo.blocks.conv_pyramid import ConvPyramid
from zoo.blocks.fe_gru import FeatureExtractGRU

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
    for kwargs in ({"flip": "full"}, {"remain": 0}, {"remain": 1},  # remain 1: the gate reads item n - 1
                   {"flip": "code"}):  # the paper's gate convolves the flipped stream around the moved item
        assert not BidirectionalMamba(D, **kwargs).offers_prefixes()


def padded_before(lengths: list[int], max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``max_len`` slots or fewer, each after ``max_len`` more padded slots, every padded slot holding one
    vector (the padding encoding, as a model's item encoder gives it in evaluation)."""
    g = torch.Generator().manual_seed(seed)
    x, mask = left_padded(lengths, 2 * max_len, D, garbage=0.0, generator=g)
    pad = torch.randn(D, generator=g)
    return torch.where(mask.unsqueeze(-1), x, pad).double(), mask


def assert_matches_each_padded_prefix(block, x, mask, max_len):
    """Like :func:`assert_matches_each_prefix` for blocks that read padded slots: each prefix run alone is the
    ``max_len`` slots ending at it, as :class:`zoo.model.SeqRecModel` gives such a block."""
    assert_matches_each_prefix(block.forward_prefixes, lambda x, mask: block(x[:, -max_len:], mask[:, -max_len:]), x, mask)


@pytest.mark.parametrize("max_len, remain, d_conv", [(50, 5, 4), (12, 0, 4), (12, 1, 2), (13, 2, 1), (13, 3, 4),
                                                     (20, 5, 6), (7, 7, 4), (9, 12, 3)])
@pytest.mark.parametrize("pad_slots", ["masked", "read"])
def test_code_flip_prefixes_across_remain_conv_width_and_pads(max_len, remain, d_conv, pad_slots):
    """The fixed-slot flip: prefixes reading only padded slots, padded slots then items (boundary and later
    items on both sides of the split), and the whole window's flipped sequence -- every length 1 .. max_len."""
    torch.manual_seed(0)
    block = BidirectionalMamba(D, flip="code", remain=remain, d_state=4, expand=1, d_conv=d_conv, gate_form="code",
                               stream_weights=(0.8, 0.1), pad_slots=pad_slots, max_len=max_len).double().eval()
    assert block.offers_prefixes()
    lengths = [max_len, max_len - 1, 1, max_len // 2, max_len // 2 + 1, 3, max(max_len - remain, 1)]
    x, mask = padded_before(lengths, max_len, seed=max_len + remain)
    with torch.no_grad():
        assert_matches_each_padded_prefix(block, x, mask, max_len)


@pytest.mark.parametrize("gate", ["sum", "linear"])
def test_code_flip_prefixes_with_the_other_mixes(gate):
    torch.manual_seed(0)
    block = BidirectionalMamba(D, flip="code", remain=3, d_state=4, expand=1, gate=gate, shared=False, pad_slots="read",
                               max_len=12).double().eval()
    x, mask = padded_before([12, 5, 1, 8, 9], 12, seed=1)
    with torch.no_grad():
        assert_matches_each_padded_prefix(block, x, mask, 12)


def test_padded_slot_passes_refuse_rows_without_padding_to_read():
    block = BidirectionalMamba(D, flip="code", gate_form="code", pad_slots="read", max_len=12)
    x, mask = padded_before([12, 3], 12, seed=0)
    with pytest.raises(ValueError, match="first 7 slots, which must all be padding"):
        block.forward_prefixes(x[:, 6:], mask[:, 6:])
    gru = FeatureExtractGRU(D, pad_slots="read", max_len=12)
    with pytest.raises(ValueError, match="first slot, which must be padding"):
        gru.forward_prefixes(x[:, 12:], mask[:, 12:])


@pytest.mark.parametrize("kernel_size", [3, 4, 5])
def test_fe_gru_prefixes_reading_padded_slots(kernel_size):
    """The centred window's taps past each prefix's newest item read the padded slots there, or nothing past
    ``max_len`` slots."""
    torch.manual_seed(0)
    block = FeatureExtractGRU(D, kernel_size=kernel_size, pad_slots="read", max_len=8, bias=False).double().eval()
    x, mask = padded_before([8, 7, 1, 2, 4, 6], 8, seed=kernel_size)
    with torch.no_grad():
        assert_matches_each_padded_prefix(block, x, mask, 8)


def assert_same_gradients_as_each_prefix(block, x, mask, run=None):
    """The gradients of one weighted sum of every real position's output, taken through the every-prefix pass and
    through each prefix run alone, for ``x`` and every parameter."""
    run = block if run is None else run
    weights = torch.randn(*mask.shape, block.d_model if hasattr(block, "d_model") else x.shape[-1],
                          generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    x = x.clone().requires_grad_(True)
    leaves = [x, *block.parameters()]
    fast = (block.forward_prefixes(x, mask) * weights)[mask].sum()
    slow = sum((run(x[mask[:, t], : t + 1], mask[mask[:, t], : t + 1])[:, -1] * weights[mask[:, t], t]).sum()
               for t in range(mask.shape[1]) if mask[:, t].any())
    for name, got, want in zip(["x", *(n for n, _ in block.named_parameters())],
                               torch.autograd.grad(fast, leaves, allow_unused=True),
                               torch.autograd.grad(slow, leaves, allow_unused=True)):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want, **TOL, msg=f"gradient of {name}")


@pytest.mark.parametrize("kwargs", [{"remain": 3}, {"remain": 2, "d_conv": 2}, {"remain": 5, "shared": False},
                                    {"remain": 4, "d_conv": 6, "gate": "linear"}])
def test_partial_flip_prefix_pass_gradients_equal_each_prefix_run(kwargs):
    """Every gradient of the partial flip's every-prefix pass (its row ranges, short scans and decayed prefix
    readout) equals the one taken through each prefix run alone."""
    torch.manual_seed(0)
    block = BidirectionalMamba(D, d_state=4, expand=1, **kwargs).double().eval()
    x, mask = inputs(width=14, seed=5)
    assert_same_gradients_as_each_prefix(block, x, mask)


def test_gradients_flow_through_the_code_flip_prefix_pass():
    torch.manual_seed(0)
    block = BidirectionalMamba(D, flip="code", remain=2, d_state=4, expand=1, gate_form="code", pad_slots="read",
                               max_len=10).double()
    x, mask = padded_before([10, 6, 3], 10, seed=3)
    x.requires_grad_(True)
    block.forward_prefixes(x, mask)[mask].square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[mask].abs().sum() > 0 and x.grad[~mask].abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


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
        encoder = model.encoder.double()
        if model.reads_pads:  # each prefix alone is its max_len slots, as model.encode gives them
            ids, mask = F.pad(ids, (model.max_len, 0)), F.pad(mask, (model.max_len, 0))
            x = model.item_encoder(ids, mask).double()
            assert_matches_each_prefix(encoder.forward_prefixes,
                                       lambda x, mask: encoder(x[:, -model.max_len:], mask[:, -model.max_len:]), x, mask)
            return
        x = model.item_encoder(ids, mask).double()
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
