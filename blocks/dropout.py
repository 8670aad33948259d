"""Dropout for every block: ``torch.nn.Dropout``'s semantics, with the CPU mask from a compiled hash.

Inverted dropout (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural Networks from
Overfitting", §4): in training each element is zeroed with probability ``p`` and the others are scaled
by ``1 / (1 - p)``; in evaluation it is the identity.

torch's CPU dropout draws its mask element by element through its generator, which made dropout a
tenth to a fifth of a training step of the zoo's models on the CPU. On the CPU (float32, float64, and the
bfloat16 / float16 of autocast, the compiled kernels enabled, :mod:`zoo.blocks.compiled`) the mask here is
``hash(seed, index) >= p · 2^32`` (``dropout_cpu.cpp``; 16-bit values are scaled in float32), with one
seed drawn per call from torch's default generator, so ``torch.manual_seed`` makes training reproducible
and a resumed run continues the same stream. The backward pass regenerates the mask from the seed instead
of keeping it. Elsewhere (CUDA, other dtypes, ``SEQREC_ZOO_CPU_KERNEL=0``, a tracer) it is
``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks import compiled

KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # bfloat16 / float16: under autocast


def check_probability(p: float) -> None:
    """Refuse a drop probability outside ``[0, 1]``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")


def hash_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by ``1 / (1 - p)`` when
    ``training``; ``x`` itself otherwise."""
    check_probability(p)
    if not training or p == 0.0:
        return x
    if p == 1.0 or x.dtype not in KERNEL_DTYPES or not compiled.applies("dropout", x):
        return F.dropout(x, p, training=True)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return _HashedDropout.apply(x, p, seed)


class _HashedDropout(torch.autograd.Function):
    """``y = keep(seed) · x / (1 - p)``; the gradient is the same masked scaling of ``dy`` with the same seed."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return compiled.load("dropout").apply(x.contiguous(), p, seed)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        return compiled.load("dropout").apply(grad_y.contiguous(), ctx.p, ctx.seed), None, None


class HashDropout(nn.Module):
    """Drop-in for ``torch.nn.Dropout(p)`` that uses :func:`hash_dropout` (``p`` the drop probability)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        check_probability(p)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return hash_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
