"""Time-axis helpers of zoo.blocks.masking: gather_time against a loop, right_align / left_align on left-padded rows."""

from __future__ import annotations

import torch

from zoo.blocks.masking import gather_time, left_align, right_align


def test_gather_time_matches_a_loop_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 6, (3, 6), generator=g)  # repeats: their gradients add up
    got = gather_time(x, index)
    want = torch.stack([torch.stack([x[b, index[b, t]] for t in range(6)]) for b in range(3)])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    got_grad, = torch.autograd.grad(got, x, grad)
    want_grad, = torch.autograd.grad(want, x, grad)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)


def test_gather_time_takes_a_transposed_view_and_a_mask():
    x = torch.arange(24.0).reshape(2, 4, 3).transpose(1, 2)  # (2, 3, 4) not contiguous
    index = torch.tensor([[2, 0, 1], [1, 1, 0]])
    assert torch.equal(gather_time(x, index), torch.stack([x[0, [2, 0, 1]], x[1, [1, 1, 0]]]))
    mask = torch.tensor([[False, True, True], [True, False, True]])
    assert torch.equal(gather_time(mask, index), torch.stack([mask[0, [2, 0, 1]], mask[1, [1, 1, 0]]]))


def test_right_align_moves_real_items_to_the_front_and_left_align_undoes_it():
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, True], [False] * 4 + [True]])
    x = torch.randn(3, 5, 2)
    aligned = right_align(x, mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(aligned[b, :n], x[b, 5 - n:], rtol=0, atol=0)
    torch.testing.assert_close(left_align(aligned, mask), x, rtol=0, atol=0)
