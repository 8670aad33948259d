"""M2Rec's multi-scale Mamba block with a learnable time-axis Fourier filter (AFFM block)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.fft_filter import TimeFilter
from zoo.blocks.masking import zero_pads
from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d
from zoo.blocks.ssm.final_state_scan import final_state_scan
from zoo.blocks.ssm.mamba import split_projection
from zoo.blocks.ssm.selective_scan import selective_scan
from zoo.blocks.ssm.softplus import projected_softplus
from zoo.registry import register_block


@register_block("multiscale_mamba", aliases=("affm",))
class MultiScaleMamba(SequenceBlock):
    """M2Rec's AFFM block: a Mamba whose causal conv runs at several temporal scales, followed by a
    learnable Fourier filter along time (reconstruction from M2Rec's framework figure: docs/models/m2rec.md, "AFFM block")::

        u, z = split(W_in x)                                       (2 · d_inner channels, no bias)
        u    = (1/S) Σ_{k in kernel_sizes} CausalDWConv_k(u)        multi-scale causal depthwise convs
        u    = irfft(rfft(u) ⊙ W_f)                                 learnable filter along time
        u    = SiLU(u)
        y    = SelectiveScan(u; Δ, B, C from u; A, D)               Mamba's SSM (Gu & Dao 2023, Alg. 2)
        out  = W_out (LayerNorm(y) ⊙ SiLU(z))                       (no bias)

    Assumptions where M2Rec's sources are silent (its full paper is unavailable; its released code does
    not implement the described model, docs/models/m2rec.md, "What the released code does"):

    * "Multi-scale" = parallel causal depthwise convolutions with kernel sizes ``kernel_sizes``
      (default (3, 5, 7), the sizes in the code's unused ``mamba_simple_v2.py``), each with its own
      weight and bias, fused by their mean (the figure shows one Conv1d; docs/models/m2rec.md, "Deviations (assumptions)").
    * The filter ("AFFT → IFFT" in the figure) is FMLP-Rec's learnable complex filter along **time** (the
      code's fixed channel-axis low-pass is not used), defined on the fixed grid of ``2 · max_len``
      frequencies and applied as an exact linear convolution (:class:`~blocks.fft_filter.TimeFilter`).
      ``time_filter="causal"`` (default) keeps only non-negative lags so the block stays causal and streams;
      ``"global"`` is FMLP-Rec's two-sided filter (non-causal: use it with last-position training only);
      ``"none"`` removes it. The filter starts as the identity (all-pass) so the block starts as Mamba.
    * Δ, B, C are computed from the filtered, activated ``u`` as in Mamba; LayerNorm (eps 1e-5) on the
      SSM output before the SiLU(z) gate, as the figure draws it. Parameter init is Mamba's
      (``A = -[1..d_state]``, ``D = 1``, Δ bias = softplus⁻¹ of log-uniform [dt_min, dt_max]).
    * Padding: inputs at pads are zeroed, the conv and filter outputs are zeroed at pads, and Δ = 0 at
      pads, so a pad never moves the SSM state (which starts at 0): output at real positions does not
      depend on padding.

    The Mamba4Rec-style dropout / residual / LayerNorm / FFN around the block come from recipe
    combinators. ``d_inner = expand · d_model``; ``dt_rank = ceil(d_model / 16)``.
    """

    causal = True
    streaming = True
    contract_variants = ({"time_filter": "global"}, {"time_filter": "none", "kernel_sizes": (4,), "d_state": 4})

    def __init__(
        self,
        d_model: int,
        max_len: int = 50,
        d_state: int = 16,
        expand: int = 2,
        kernel_sizes: tuple[int, ...] = (3, 5, 7),
        time_filter: Literal["causal", "global", "none"] = "causal",
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        if d_state < 1 or expand < 1:
            raise ValueError(f"multiscale_mamba: d_state and expand must be >= 1, got {d_state} and {expand}")
        if not kernel_sizes or any(k < 1 for k in kernel_sizes):
            raise ValueError(f"multiscale_mamba: kernel_sizes must be a non-empty list of sizes >= 1, got {kernel_sizes}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"multiscale_mamba: need 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
        d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        if self.dt_rank < 1:
            raise ValueError(f"multiscale_mamba: dt_rank must be >= 1, got {dt_rank}")
        self.d_inner, self.d_state = d_inner, d_state
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.convs = nn.ModuleList(nn.Conv1d(d_inner, d_inner, k, groups=d_inner) for k in self.kernel_sizes)
        self.filter = (
            None if time_filter == "none" else TimeFilter(d_inner, max_len, causal=time_filter == "causal", init="identity")
        )
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        self._init_dt(dt_min, dt_max)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.causal = time_filter != "global"
        self.streaming = self.causal

    def _init_dt(self, dt_min: float, dt_max: float) -> None:
        """Mamba's Δ init: weight U(±dt_rank^-1/2); bias = softplus⁻¹(dt), log dt ~ U[log dt_min, log dt_max]."""
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp_min(1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _ssm_inputs(self, u: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Δ (softplus applied; 0 where ``mask`` is False), B, C from ``u (..., d_inner)``."""
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], -1)
        return projected_softplus(dt, self.dt_proj.weight, self.dt_proj.bias, mask), B, C

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        return self.out_proj(self.norm(y) * F.silu(z))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        u, z, delta, B, C = self._scan_inputs(x, mask)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D.float())
        return self._output(y.transpose(1, 2), z)

    def forward_last(self, x: Tensor, mask: Tensor) -> Tensor:
        """``forward(x, mask)[:, -1:]`` with the scan read out at the newest position alone
        (:func:`~zoo.blocks.ssm.final_state_scan.final_state_scan`) and the norm, gate and output projection
        there only. Where that scan has no compiled kernel it is ``forward`` read at the newest position."""
        if not cpu_kernel.applies("final_state_scan", x):
            return super().forward_last(x, mask)
        u, z, delta, B, C = self._scan_inputs(x, mask, gate_everywhere=False)
        A = -torch.exp(self.A_log.float())
        y = final_state_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B, C[:, -1], self.D.float())
        return self._output(y.unsqueeze(1), z.unsqueeze(1))

    def _scan_inputs(self, x: Tensor, mask: Tensor,
                     gate_everywhere: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``u`` after the convolutions, filter and SiLU, the gate ``z`` (at the newest position alone, ``(B, E)``,
        without ``gate_everywhere``), the step Δ (0 at pads), ``B`` and ``C``, all ``(B, L, ·)``."""
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"multiscale_mamba: expected x (B, L, D) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
        x = zero_pads(x, mask)
        u, z = self.in_proj(x).chunk(2, -1) if gate_everywhere else split_projection(self.in_proj, x, gate_everywhere=False)
        u = u.transpose(1, 2)
        u = sum(causal_depthwise_conv1d(u, conv.weight, conv.bias) for conv in self.convs) / len(self.convs)
        u = zero_pads(u.transpose(1, 2), mask)
        if self.filter is not None:
            u = zero_pads(self.filter(u), mask)
        u = F.silu(u)
        delta, B, C = self._ssm_inputs(u, mask)
        return u, z, delta, B, C

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.streaming:
            return super().init_state(batch_size, device, dtype)
        conv = torch.zeros(batch_size, self.d_inner, max(self.kernel_sizes), device=device, dtype=dtype)
        history = None if self.filter is None else self.filter.init_state(batch_size, device, dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype)
        return conv, history, ssm

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.streaming:
            return super().step(x_t, state)
        conv_window, history, h = state
        u, z = self.in_proj(x_t).chunk(2, -1)
        conv_window = torch.cat([conv_window[..., 1:], u.unsqueeze(-1)], -1)
        u = sum(
            (conv_window[..., -conv.kernel_size[0]:] * conv.weight[:, 0]).sum(-1) + conv.bias for conv in self.convs
        ) / len(self.convs)
        if self.filter is not None:
            u, history = self.filter.step(u, history)
        u = F.silu(u)
        delta, B, C = self._ssm_inputs(u)
        A = -torch.exp(self.A_log.float())
        h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
        y = (h * C.unsqueeze(1)).sum(-1) + self.D * u
        return self._output(y, z), (conv_window, history, h)
