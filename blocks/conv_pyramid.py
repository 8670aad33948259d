"""ConvRec's convolution down-scaling stack (CDS): a readout that collapses ``(B, L, D)`` to ``(B, D)``."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import ReadoutBlock
from zoo.blocks.dropout import HashDropout
from zoo.blocks.masking import causal_prefix_mean, fit_to_length, masked_mean, shift_time, zero_pads
from zoo.blocks.norms import create_norm
from zoo.registry import register_block


def pyramid_lengths(length: int, schedule: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(left pad, output length)`` of each (kernel, stride) layer for an input of ``length``.

    ConvRec's pad rule (docs/models/convrec.md, "Padding rule"): when the current length ``n >= k`` pad ``(s - (n - k) % s) % s``
    so the windows tile it exactly; when ``n < k`` pad ``k - n`` so one window fits. The output length
    is ``(n + pad - k) // s + 1``.
    """
    plan = []
    for kernel, stride in schedule:
        pad = (stride - (length - kernel) % stride) % stride if length >= kernel else kernel - length
        length = (length + pad - kernel) // stride + 1
        plan.append((pad, length))
    return plan


class ConvDownscaleLayer(nn.Module):
    """One ConvBlock (ConvRec §4.2, Eqs. 9-11):

    ``x' = LN(Dropout(GELU(W_o · Conv_{k,s}(x) + b_o)) + w1 · AvgPool_{k,s}(x) + w2 · AvgPool_{k,s}(x_res))``

    ``Conv_{k,s}`` is a grouped Conv1d (``num_heads`` groups, no padding, bias) and ``W_o`` the Linear
    after it; ``w1`` weighs the pooled layer input (the paper's progressive residual), ``w2`` the pooled
    original input ``x_res``; both scalars start at 0.5. A residual turned off is left out entirely.
    """

    def __init__(
        self,
        d_model: int,
        kernel: int,
        stride: int,
        num_heads: int,
        dropout: float,
        progressive_residual: bool,
        original_residual: bool,
        norm: Literal["layernorm_c", "layernorm"],
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(d_model, d_model, kernel, stride=stride, groups=num_heads)
        self.out_linear = nn.Linear(d_model, d_model)
        self.dropout = HashDropout(dropout)
        self.w1 = nn.Parameter(torch.tensor(0.5)) if progressive_residual else None
        self.w2 = nn.Parameter(torch.tensor(0.5)) if original_residual else None
        self.norm = create_norm(norm, d_model)

    def _tiles(self, x: Tensor) -> bool:
        """Whether the windows are side by side (kernel = stride) and ``x``'s length a whole number of them."""
        return self.kernel == self.stride and x.shape[1] % self.kernel == 0

    def _convolve(self, x: Tensor) -> Tensor:
        """``Conv_{k,s}(x)`` for ``x (B, n, D)``. Side-by-side windows without groups are rows of ``k · D`` values
        and the convolution one matrix product on them (the same sums; on the CPU a few times faster with its
        backward pass than ``conv1d``)."""
        if not self._tiles(x) or self.conv.groups != 1:
            return self.conv(x.transpose(1, 2)).transpose(1, 2)
        weight = self.conv.weight.transpose(1, 2).flatten(1)  # (D_out, k · D_in), tap-major like the rows
        return F.linear(x.flatten(1).unflatten(1, (-1, self.kernel * x.shape[2])), weight, self.conv.bias)

    def _pool(self, x: Tensor) -> Tensor:
        if self._tiles(x):
            return x.unflatten(1, (-1, self.kernel)).mean(2)
        return F.avg_pool1d(x.transpose(1, 2), self.kernel, self.stride).transpose(1, 2)

    def _finish(self, conv: Tensor, pooled: Tensor | None, pooled_res: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. 11 from the window's convolution and average pools of ``x`` and ``x_res``."""
        out = self.dropout(F.gelu(self.out_linear(conv)))
        if self.w1 is not None:
            out = out + self.w1 * pooled
        if self.w2 is not None:
            out = out + self.w2 * pooled_res
        return self.norm(out), pooled_res

    def forward(self, x: Tensor, x_res: Tensor, pad: int) -> tuple[Tensor, Tensor]:
        if pad:
            x, x_res = F.pad(x, (0, 0, pad, 0)), F.pad(x_res, (0, 0, pad, 0))
        return self._finish(self._convolve(x), self._pool(x) if self.w1 is not None else None, self._pool(x_res))

    def forward_dilated(self, taps: Sequence[tuple[Tensor, Tensor] | None], dilation: int) -> tuple[Tensor, Tensor]:
        """The layer on a shared time axis: the output at time ``p`` is the window whose tap ``τ`` (0 the oldest)
        reads the pair ``taps[τ] = (x, x_res)``, each ``(B, T, D)``, at time ``p - (kernel - 1 - τ) · dilation``,
        or a pad zero where ``taps[τ]`` is None. Taps reading the same pair share one dilated convolution."""
        sources: dict[int, tuple[tuple[Tensor, Tensor], list[int]]] = {}
        for tap, pair in enumerate(taps):
            if pair is not None:
                sources.setdefault(id(pair), (pair, []))[1].append(tap)
        channels = self.conv.in_channels
        conv, pooled, pooled_res = 0.0, 0.0, 0.0
        for (x, x_res), chosen in sources.values():
            select = torch.zeros(self.kernel, dtype=x.dtype, device=x.device)
            select[chosen] = 1.0
            average = (select / self.kernel).expand(channels, 1, self.kernel)
            conv = conv + causal_dilated_conv(x, self.conv.weight * select, dilation, self.conv.groups)
            pooled_res = pooled_res + causal_dilated_conv(x_res, average, dilation, channels)
            if self.w1 is not None:
                pooled = pooled + causal_dilated_conv(x, average, dilation, channels)
        return self._finish(conv + self.conv.bias, pooled if self.w1 is not None else None, pooled_res)


def causal_dilated_conv(x: Tensor, weight: Tensor, dilation: int, groups: int) -> Tensor:
    """``out[:, p] = Σ_τ weight[..., τ] · x[:, p - (k - 1 - τ) · dilation]`` for ``x (B, T, C)`` (zeros before time 0)."""
    reach = (weight.shape[-1] - 1) * dilation
    out = F.conv1d(F.pad(x.transpose(1, 2), (reach, 0)), weight, dilation=dilation, groups=groups)
    return out.transpose(1, 2)


@register_block("conv_pyramid", aliases=("cds",))
class ConvPyramid(ReadoutBlock):
    """ConvRec's convolution down-scaling stack (CDS; ConvRec §4.2, Eqs. 8-13; code:
    docs/models/convrec.md, "Convolution down-scaling").

    Each (kernel, stride) of ``schedule`` is a :class:`ConvDownscaleLayer`; before it the sequence is
    left zero-padded so the windows tile it (rule in :func:`pyramid_lengths`). After the last layer an
    adaptive average pool reduces whatever length remains to 1 (Eq. 13): ``u = mean_t x^{(N)}_t``.

    **Fixed length.** Where an item falls in the windows depends on the padded length, so a pyramid run
    on the batch's own width would give a sequence a different vector in a wider batch. Here every batch
    is first brought to ``max_len`` positions (pads zeroed, then left zero-padded, or cropped when only
    padding is dropped), as ConvRec's code does with its fixed ``input_length``; the vector of a sequence
    therefore never depends on how it was batched. A sequence longer than ``max_len`` is an error.

    Ablations of ConvRec Table 4:

    * ``mode="one_conv"`` -- "w/ one Conv": one layer with kernel = stride = ``max_len`` (replaces ``schedule``).
    * ``mode="avgpool"`` -- "w/ AvgPool": "the average pooling of item embeddings without any additional
      layers", read as the mean of the real items (``u = (1/n) Σ_t x_t``; no parameters).
    * ``progressive_residual=False, original_residual=False`` -- "w/o Residuals".
    * "w/o Intervals" is an option of the item encoder (``attribute_context``), not of this block.

    ``num_heads > 1`` is the code's grouped multi-head convolution (docs/models/convrec.md, "Multi-head convolution"); ``norm`` picks
    ConvRec's ``LayerNormC`` (the code's) or torch's LayerNorm.
    """

    causal = False
    contract_variants = (
        {"mode": "one_conv"},
        {"mode": "avgpool"},
        {"schedule": [(2, 1), (5, 5)], "num_heads": 2, "norm": "layernorm", "original_residual": False},
    )

    def __init__(
        self,
        d_model: int,
        max_len: int = 50,
        schedule: tuple[tuple[int, int], ...] = ((2, 2), (5, 5), (7, 7)),
        mode: Literal["pyramid", "one_conv", "avgpool"] = "pyramid",
        num_heads: int = 1,
        dropout: float = 0.0,
        progressive_residual: bool = True,
        original_residual: bool = True,
        norm: Literal["layernorm_c", "layernorm"] = "layernorm_c",
    ) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"conv_pyramid: max_len must be >= 1, got {max_len}")
        if mode == "pyramid" and not schedule:
            raise ValueError("conv_pyramid: schedule must list at least one (kernel, stride) pair, e.g. [[2, 2], [5, 5]]")
        for pair in schedule:
            if len(pair) != 2 or not 1 <= pair[1] <= pair[0]:
                raise ValueError(
                    f"conv_pyramid: each schedule entry must be (kernel, stride) with 1 <= stride <= kernel, got {pair}"
                )
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"conv_pyramid: num_heads={num_heads} must be >= 1 and divide d_model={d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"conv_pyramid: dropout must be in [0, 1), got {dropout}")
        self.max_len = max_len
        self.mode = mode
        self.schedule = [(max_len, max_len)] if mode == "one_conv" else [tuple(p) for p in schedule]
        self.plan = [] if mode == "avgpool" else pyramid_lengths(max_len, self.schedule)
        self.layers = nn.ModuleList(
            ConvDownscaleLayer(d_model, k, s, num_heads, dropout, progressive_residual, original_residual, norm)
            for k, s in ([] if mode == "avgpool" else self.schedule)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"conv_pyramid: expected x (B, L, D) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
        if self.mode == "avgpool":
            return masked_mean(x, mask)
        x, mask = fit_to_length(zero_pads(x, mask), mask, self.max_len, "conv_pyramid")
        x_res = x
        for layer, (pad, _) in zip(self.layers, self.plan):
            x, x_res = layer(x, x_res, pad)
        return x.mean(1)

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """The user vector of every prefix at once, ``(B, L, D)``: ``out[:, t] == forward(x[:, :t+1], mask[:, :t+1])``.

        A strided pyramid read from the newest item is a dilated one read at every time (the à-trous form of
        a strided convolution): for the prefix ending at ``t``, layer ``i``'s window ``g`` (counted from the
        newest) ends at time ``t - g · d_{i+1}``, ``d_{i+1}`` the product of the strides so far, and its taps
        read layer ``i - 1`` every ``d_i`` steps. So each layer runs once as a causal convolution with dilation
        ``d_i`` over one time axis shared by all prefixes, and the prefix at ``t`` averages its last layer's
        windows at ``t, t - d_{N+1}, ...``. A window is not shared where the pad rule puts zeros into it (the
        oldest window of a layer whose length the windows do not tile): that window is computed apart, with
        those taps reading zero, and so is every window that reads it. The time axis reaches back far enough
        (zeros before the window) that every shared value any prefix reads is its own."""
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"conv_pyramid: expected x (B, L, D) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
        if self.mode == "avgpool":
            return causal_prefix_mean(x, mask)
        longest = int(mask.sum(1).max())
        if longest > self.max_len:
            raise ValueError(f"conv_pyramid: a sequence has {longest} real items but the block was built for max_len={self.max_len}")
        reach, length, dilation = self.max_len, self.max_len, 1
        for (_, stride), (_, out_length) in zip(self.schedule, self.plan):
            dilation *= stride
            reach = max(reach, out_length * dilation)
        start = F.pad(zero_pads(x, mask), (0, 0, reach, 0))
        normal: tuple[Tensor, Tensor] | None = (start, start)
        apart: dict[int, tuple[Tensor, Tensor]] = {}  # windows computed apart, by their index from the newest
        dilation = 1
        for layer, (kernel, stride), (_, out_length) in zip(self.layers, self.schedule, self.plan):
            outputs: dict[tuple, tuple[Tensor, Tensor]] = {}
            next_normal, next_apart = None, {}
            for window in range(out_length):
                elements = [window * stride + kernel - 1 - tap for tap in range(kernel)]
                taps = [None if e >= length else apart.get(e, normal) for e in elements]
                key = tuple(None if pair is None else id(pair) for pair in taps)
                if key not in outputs:
                    outputs[key] = layer.forward_dilated(taps, dilation)
                if normal is not None and all(pair is normal for pair in taps):
                    next_normal = outputs[key]
                else:
                    next_apart[window] = outputs[key]
            normal, apart, length, dilation = next_normal, next_apart, out_length, dilation * stride
        last = [apart.get(window, normal)[0] for window in range(length)]
        user = sum(shift_time(out, window * dilation) for window, out in enumerate(last)) / length
        return user[:, reach:]
