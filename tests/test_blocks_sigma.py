"""SIGMA's blocks: partial flip orders, PF-Mamba (paper and code modes), the DS gate, FE-GRU.

References are written out here: flip orders by hand, the code mode as the released code's own
steps on a right-padded tensor (docs/models/sigma.md, "Released code"), gates from hand-set weights, the GRU as an explicit
loop over time. float32, ``atol=1e-5`` unless stated.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.blocks.bidirectional_mamba import partial_flip_index
from zoo.blocks.flips import code_flip_newest_index
from zoo.blocks.masking import gather_time
from padding import left_mask, left_padded
from zoo.registry import create_block

ATOL = 1e-5
SMALL_MAMBA = {"d_state": 4, "expand": 1}


def labels_after_flip(block, lengths: list[int], width: int) -> list[list[int]]:
    """Flip a batch whose real items are labelled 1..n (pads 0) and read the labels back."""
    mask = left_mask(lengths, width)
    labels = (mask.long().cumsum(1)) * mask
    return labels.gather(1, block.flip_index(mask)).tolist()


# ---------------------------------------------------------------- flip orders


def test_partial_flip_orders_by_hand():
    lengths = [6, 7, 5, 2, 8, 5, 0]
    cases = {
        2: [[0, 0, 4, 3, 2, 1, 5, 6], [0, 5, 4, 3, 2, 1, 6, 7], [0, 0, 0, 3, 2, 1, 4, 5], [0, 0, 0, 0, 0, 0, 1, 2],
            [6, 5, 4, 3, 2, 1, 7, 8], [0, 0, 0, 3, 2, 1, 4, 5], [0] * 8],
        5: [[0, 0, 1, 2, 3, 4, 5, 6], [0, 2, 1, 3, 4, 5, 6, 7], [0, 0, 0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0, 1, 2],
            [3, 2, 1, 4, 5, 6, 7, 8], [0, 0, 0, 1, 2, 3, 4, 5], [0] * 8],
        1: [[0, 0, 5, 4, 3, 2, 1, 6], [0, 6, 5, 4, 3, 2, 1, 7], [0, 0, 0, 4, 3, 2, 1, 5], [0, 0, 0, 0, 0, 0, 1, 2],
            [7, 6, 5, 4, 3, 2, 1, 8], [0, 0, 0, 4, 3, 2, 1, 5], [0] * 8],
    }
    for remain, expected in cases.items():
        block = create_block("bidirectional_mamba", d_model=4, flip="partial", remain=remain, **SMALL_MAMBA)
        assert labels_after_flip(block, lengths, 8) == expected, f"remain={remain}"


def test_full_and_no_flip_orders():
    full = create_block("bidirectional_mamba", d_model=4, flip="full", remain=5, **SMALL_MAMBA)
    assert labels_after_flip(full, [6, 1, 3], 7) == [[0, 6, 5, 4, 3, 2, 1], [0] * 6 + [1], [0, 0, 0, 0, 3, 2, 1]]
    none = create_block("bidirectional_mamba", d_model=4, flip="none", **SMALL_MAMBA)
    assert labels_after_flip(none, [6, 1], 7) == [[0, 1, 2, 3, 4, 5, 6], [0] * 6 + [1]]


def test_code_flip_is_a_fixed_index_on_right_aligned_slots():
    block = create_block("bidirectional_mamba", d_model=4, flip="code", remain=5, **SMALL_MAMBA)
    right = torch.tensor([[True, True, False, False, False, False, False, False],
                          [True] * 8])
    assert block.flip_index(right).tolist() == [[2, 1, 0, 3, 4, 5, 6, 7]] * 2  # L - r = 3 slots, whatever n
    assert block.flip_index(right[:, :4]).tolist() == [[0, 1, 2, 3]] * 2  # L <= r: nothing flips


def test_flip_index_is_an_involution():
    mask = torch.arange(11) >= 11 - torch.tensor([[0], [3], [6], [10], [11]])  # left padded, lengths 0..11
    for remain in (0, 2, 5):
        index = partial_flip_index(mask, remain)
        assert torch.equal(index.gather(1, index), torch.arange(11).expand(5, 11))


# ---------------------------------------------------------------- PF-Mamba against per-sequence references


def flipped_order(n: int, remain: int) -> list[int]:
    k = max(n - remain, 0)
    return list(range(k - 1, -1, -1)) + list(range(k, n))


@pytest.mark.parametrize("flip,remain,gate,shared,map_back", [
    ("partial", 2, "ds_gate", False, True),
    ("partial", 3, "sum", True, True),
    ("full", 5, "ds_gate", True, True),
    ("partial", 2, "ds_gate", False, False),
    ("full", 5, "sum", True, False),
])
def test_pf_mamba_paper_modes_match_per_sequence_reference(flip, remain, gate, shared, map_back):
    torch.manual_seed(0)
    d, width, lengths = 6, 9, [9, 6, 3, 1]
    block = create_block("bidirectional_mamba", d_model=d, flip=flip, remain=remain, gate=gate, shared=shared,
                         map_back=map_back, **SMALL_MAMBA).eval()
    x, mask = left_padded(lengths, width, d)
    r = 0 if flip == "full" else remain
    backward = block.mamba if shared else block.flipped_mamba
    with torch.no_grad():
        y = block(x, mask)
        for b, n in enumerate(lengths):
            u = x[b:b + 1, width - n:]
            order = flipped_order(n, r)
            u_f = u[:, order]
            m, m_f = block.mamba(u), backward(u_f)
            if gate == "ds_gate":  # Eq. 3: G(H)·M + G(H^f)·M^f, the flipped product mapped back
                ones = torch.ones(1, n, dtype=torch.bool)
                m, m_f = block.gate(u, ones) * m, block.gate(u_f, ones) * m_f
            back = torch.empty_like(m_f)
            back[:, order] = m_f  # map_back: slot i gets the flipped stream's output for item i
            want = m + (back if map_back else m_f)  # else slot by slot, as the released code adds
            torch.testing.assert_close(y[b:b + 1, width - n:], want, atol=ATOL, rtol=1e-4)


def test_map_back_changes_only_the_positions_the_flip_moved():
    torch.manual_seed(0)
    kept = create_block("bidirectional_mamba", d_model=4, remain=2, **SMALL_MAMBA).eval()
    slotwise = create_block("bidirectional_mamba", d_model=4, remain=2, map_back=False, **SMALL_MAMBA).eval()
    slotwise.load_state_dict(kept.state_dict())
    x, mask = left_padded([7, 3], 7, 4)
    with torch.no_grad():
        a, b = kept(x, mask), slotwise(x, mask)
    torch.testing.assert_close(a[:, -2:], b[:, -2:], atol=ATOL, rtol=0)  # the remain = 2 newest items stay in place
    assert not torch.allclose(a[0, :5], b[0, :5], atol=1e-4)  # the five reversed items of the 7-item row
    assert create_block("bidirectional_mamba", d_model=4, flip="code").map_back is False


def test_no_flip_with_shared_weights_is_twice_the_forward_stream():
    torch.manual_seed(0)
    block = create_block("bidirectional_mamba", d_model=4, flip="none", gate="sum", **SMALL_MAMBA).eval()
    x, mask = left_padded([5, 2], 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask)[mask], 2 * block.mamba(x, mask)[mask], atol=ATOL, rtol=0)


def code_reference(block, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The released code's GMambaBlock steps (docs/models/sigma.md, "Released code") on a right-padded, zero-padded copy."""
    width = x.shape[1]
    lengths = mask.sum(1).tolist()
    xr = torch.zeros_like(x)
    mr = torch.zeros_like(mask)
    for b, n in enumerate(lengths):
        xr[b, :n], mr[b, :n] = x[b, width - n:], True
    k = max(width - block.remain, 0)
    xf, mf = xr.clone(), mr.clone()
    xf[:, :k], mf[:, :k] = xr[:, :k].flip(1), mr[:, :k].flip(1)
    gate = block.gate
    m, m_f = block.mamba(xr, mr), block.mamba(xf, mf)
    h1 = xr + gate.dense(xr)
    gate1 = gate.silu_proj(F.silu(h1)) + gate.sigmoid_proj(torch.sigmoid(h1))
    h2 = block.flipped_dense(xf) + xf
    gate2 = gate.silu_proj(F.silu(h2)) + gate.sigmoid_proj(torch.sigmoid(gate1))
    w = block.stream_weights
    z = w[0] * (m * gate1 + m) + w[1] * (m_f * gate2 + m_f)
    return [z[b, :n] for b, n in enumerate(lengths)]


def test_code_mode_reproduces_the_released_code():
    torch.manual_seed(0)
    d, width, lengths = 6, 10, [10, 8, 6, 4, 1]
    block = create_block("bidirectional_mamba", d_model=d, flip="code", remain=3, gate_form="code",
                         stream_weights=(0.8, 0.1), max_len=width, **SMALL_MAMBA).eval()
    x, mask = left_padded(lengths, width, d)
    with torch.no_grad():
        y = block(x, mask)
        for b, (n, want) in enumerate(zip(lengths, code_reference(block, x, mask))):
            torch.testing.assert_close(y[b, width - n:], want, atol=ATOL, rtol=1e-4)


def test_code_mode_flips_fixed_slots_of_max_len_whatever_the_batch_padding():
    torch.manual_seed(0)
    block = create_block("bidirectional_mamba", d_model=4, flip="code", remain=2, gate="sum", max_len=12, **SMALL_MAMBA).eval()
    x, mask = left_padded([4], 4, 4)
    wide_x, wide_mask = torch.cat([torch.randn(1, 8, 4), x], 1), torch.cat([torch.zeros(1, 8, dtype=torch.bool), mask], 1)
    with torch.no_grad():
        narrow, wide = block(x, mask), block(wide_x, wide_mask)[:, -4:]
        torch.testing.assert_close(narrow, wide, atol=ATOL, rtol=0)
        # max_len 12, r = 2: slots 0..9 reversed, so 4 items (<= 10 / 2) see only masked pads in the flipped
        # stream, whose output is then exactly zero: the sum is the forward stream alone
        # (docs/models/sigma.md, "Fixed-index flip": n <= 22 at max_len 50)
        torch.testing.assert_close(narrow, block.mamba(x, mask), atol=ATOL, rtol=0)
        block.max_len = 4  # the code's semantics depend on the padded width it was trained with
        assert not torch.allclose(block(x, mask), narrow, atol=1e-3)


def test_pf_mamba_rejects_bad_arguments():
    with pytest.raises(ValueError, match="flip must be"):
        create_block("bidirectional_mamba", d_model=4, flip="half")
    with pytest.raises(ValueError, match="remain"):
        create_block("bidirectional_mamba", d_model=4, remain=-1)
    with pytest.raises(ValueError, match="stream_weights"):
        create_block("bidirectional_mamba", d_model=4, gate="linear", stream_weights=(0.8, 0.1))
    with pytest.raises(ValueError, match="gate must be"):
        create_block("bidirectional_mamba", d_model=4, gate="max")
    block = create_block("bidirectional_mamba", d_model=4, **SMALL_MAMBA)
    with pytest.raises(ValueError, match=r"expected x \(B, L, 4\)"):
        block(torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool))


def test_pf_mamba_shared_weights_are_stored_once():
    shared = create_block("bidirectional_mamba", d_model=4, **SMALL_MAMBA)
    separate = create_block("bidirectional_mamba", d_model=4, shared=False, **SMALL_MAMBA)
    assert not any(k.startswith("flipped_mamba.") for k in shared.state_dict())
    assert sum(k.startswith("flipped_mamba.") for k in separate.state_dict()) == sum(k.startswith("mamba.") for k in separate.state_dict())


# ---------------------------------------------------------------- DS gate


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_ds_gate_paper_form_by_hand():
    gate = create_block("ds_gate", d_model=2, kernel_size=3, padding="same").eval()
    with torch.no_grad():
        gate.dense.weight.copy_(torch.eye(2))
        gate.dense.bias.zero_()
        weight = torch.zeros(2, 2, 3)
        weight[:, :, 0] = weight[:, :, 2] = torch.eye(2)  # G0_t = x_{t-1} + x_{t+1}
        gate.conv.conv.weight.copy_(weight)
        gate.conv.conv.bias.zero_()
        gate.delta.weight.copy_(torch.eye(2))
        gate.delta.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[[50.0, -70.0], [1.0, 2.0], [-1.0, 0.5], [0.0, -2.0]]])  # a garbage pad first
    mask = torch.tensor([[False, True, True, True]])
    # G0 = (-1, 0.5), (1, 0), (-1, 0.5); δ = G0 + (0.5, -0.5)
    deltas = [(-0.5, 0.0), (1.5, -0.5), (-0.5, 0.0)]
    want = torch.tensor([[v * sig(v) + sig(v) for v in row] for row in deltas])  # SiLU(δ) + σ(δ)
    torch.testing.assert_close(gate(x, mask)[0, 1:], want, atol=ATOL, rtol=0)
    m = torch.randn(1, 4, 2)
    torch.testing.assert_close(gate.modulate(m, want.new_ones(1, 4, 2) * 2), 2 * m)


def test_ds_gate_code_form_by_hand():
    gate = create_block("ds_gate", d_model=2, form="code", dropout=0.3).eval()
    with torch.no_grad():
        gate.dense.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # h = x + swap(x)
        gate.dense.bias.zero_()
        gate.silu_proj.weight.copy_(torch.eye(2))
        gate.silu_proj.bias.zero_()
        gate.sigmoid_proj.weight.copy_(2 * torch.eye(2))
        gate.sigmoid_proj.bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])
    # h = (-1, -1) and (1, 1); gate = SiLU(h) + 2 σ(h) + (0, 1)
    want = torch.tensor([[[-sig(-1) + 2 * sig(-1), -sig(-1) + 2 * sig(-1) + 1],
                          [sig(1) + 2 * sig(1), sig(1) + 2 * sig(1) + 1]]])
    g = gate(x, torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(g, want, atol=ATOL, rtol=0)
    m = torch.randn(1, 2, 2)
    torch.testing.assert_close(gate.modulate(m, g), m * (1 + want))  # M · (1 + G)
    other = torch.zeros(1, 2, 2)  # the flipped stream's sigmoid term reads another tensor
    h = torch.tensor([[[-1.0, -1.0], [1.0, 1.0]]])
    torch.testing.assert_close(gate.code_gate(h, other), F.silu(h) + 2 * 0.5 + torch.tensor([0.0, 1.0]))
    assert gate.causal and gate.streaming


def test_ds_gate_causal_padding_streams_and_same_does_not():
    assert not create_block("ds_gate", d_model=4).causal
    gate = create_block("ds_gate", d_model=4, padding="causal", kernel_size=3).eval()
    x, mask = left_padded([6], 6, 4)
    with torch.no_grad():
        full, state = gate(x, mask), gate.init_state(1)
        for t in range(6):
            g_t, state = gate.step(x[:, t], state)
            torch.testing.assert_close(g_t, full[:, t], atol=ATOL, rtol=0)


def test_ds_gate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="form must be"):
        create_block("ds_gate", d_model=4, form="both")
    with pytest.raises(ValueError, match="dropout"):
        create_block("ds_gate", d_model=4, dropout=-0.1)


# ---------------------------------------------------------------- FE-GRU


def gru_loop(gru: torch.nn.GRU, c: torch.Tensor) -> torch.Tensor:
    """torch's GRU equations for one sequence ``c (n, D)``, h_0 = 0."""
    w_r, w_z, w_n = gru.weight_ih_l0.chunk(3)
    u_r, u_z, u_n = gru.weight_hh_l0.chunk(3)
    zero = torch.zeros(3 * gru.hidden_size)
    b_r, b_z, b_n = (gru.bias_ih_l0 if gru.bias else zero).chunk(3)
    c_r, c_z, c_n = (gru.bias_hh_l0 if gru.bias else zero).chunk(3)
    h, out = torch.zeros(gru.hidden_size), []
    for x_t in c:
        r = torch.sigmoid(w_r @ x_t + b_r + u_r @ h + c_r)
        z = torch.sigmoid(w_z @ x_t + b_z + u_z @ h + c_z)
        n = torch.tanh(w_n @ x_t + b_n + r * (u_n @ h + c_n))
        h = z * h + (1 - z) * n
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("padding,bias", [("same", False), ("causal", True)])
def test_fe_gru_masked_batch_equals_unpadded_loop(padding, bias):
    torch.manual_seed(0)
    d, width, lengths = 5, 8, [8, 5, 2, 1]
    block = create_block("fe_gru", d_model=d, kernel_size=3, padding=padding, bias=bias).eval()
    x, mask = left_padded(lengths, width, d)
    left = 2 if padding == "causal" else 1
    conv = block.conv.conv
    with torch.no_grad():
        y = block(x, mask)
        for b, n in enumerate(lengths):
            u = x[b, width - n:]
            c = torch.stack([conv.bias + sum(conv.weight[:, :, j] @ u[t - left + j]
                                             for j in range(3) if 0 <= t - left + j < n) for t in range(n)])
            torch.testing.assert_close(y[b, width - n:], gru_loop(block.gru, c), atol=ATOL, rtol=0)
            alone = block(u.unsqueeze(0), torch.ones(1, n, dtype=torch.bool))[0]
            torch.testing.assert_close(y[b, width - n:], alone, atol=ATOL, rtol=0)
    assert block.causal == (padding == "causal") and block.streaming == (padding == "causal")
    assert ("bias_ih_l0" in dict(block.gru.named_parameters())) == bias


def test_fe_gru_step_equals_forward():
    block = create_block("fe_gru", d_model=4, kernel_size=4, padding="causal").eval()
    x, mask = left_padded([7], 7, 4)
    with torch.no_grad():
        full, state = block(x, mask), block.init_state(1)
        for t in range(7):
            y_t, state = block.step(x[:, t], state)
            torch.testing.assert_close(y_t, full[:, t], atol=ATOL, rtol=0)


@pytest.mark.parametrize("remain", [0, 1, 5, 12])
def test_code_flip_newest_index_gathers_the_flipped_slots_up_to_the_newest(remain):
    """Slots ``0 .. n - 1`` of the code's flipped stream (the right-aligned row reversed in its first ``L - remain``
    slots, whatever they hold), moved to the row's last ``n`` slots, in one gather of the left-padded row."""
    length, lengths = 12, [12, 0, 1, 5, 7, 11]
    mask = torch.arange(length).expand(len(lengths), length) >= length - torch.tensor(lengths)[:, None]
    x = torch.randn(len(lengths), length, 3)
    got = gather_time(x, code_flip_newest_index(mask, remain))
    for b, n in enumerate(lengths):
        right = torch.cat([x[b, length - n:], x[b, :length - n]])  # the items first, then what the pads hold
        flipped = torch.cat([right[:max(length - remain, 0)].flip(0), right[max(length - remain, 0):]])
        torch.testing.assert_close(got[b, length - n:], flipped[:n], rtol=0, atol=0)


@pytest.mark.parametrize("pad_slots", ["masked", "read"])
def test_code_flip_forward_last_on_a_batch_of_short_rows(pad_slots):
    """Scoring a batch whose rows are all shorter than max_len (the columns before the longest row are skipped)
    gives the full forward's newest position; the padded slots hold one padding vector, as in a model."""
    torch.manual_seed(3)
    block = create_block("bidirectional_mamba", d_model=8, flip="code", remain=2, gate="ds_gate", gate_form="code",
                         stream_weights=(0.8, 0.1), pad_slots=pad_slots, max_len=12).eval()
    lengths = [5, 2, 7]
    mask = torch.arange(12).expand(3, 12) >= 12 - torch.tensor(lengths)[:, None]
    x = torch.where(mask.unsqueeze(-1), torch.randn(3, 12, 8), torch.randn(8))
    with torch.no_grad():
        torch.testing.assert_close(block.forward_last(x, mask), block(x, mask)[:, -1:], atol=2e-5, rtol=1e-4)
