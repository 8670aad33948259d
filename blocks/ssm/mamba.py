"""The Mamba (v1) layer with mamba-ssm's parameters, initialisation and forward math.

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", §3 and Fig. 3;
parameter names, shapes and initialisation follow mamba-ssm's ``mamba_ssm/modules/mamba_simple.py``
(docs/models/mamba4rec.md, "The Mamba layer"), so state dicts load in both directions.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock
from zoo.blocks.ssm import cpu_kernel
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d
from zoo.blocks.ssm.final_state_scan import projected_final_state_scan
from zoo.blocks.ssm.projected_scan import projected_selective_scan
from zoo.blocks.ssm.softplus import softplus
from zoo.registry import register_block


def split_projection(in_proj: nn.Linear, x: Tensor, gate_everywhere: bool) -> tuple[Tensor, Tensor]:
    """``in_proj(x).chunk(2, -1)`` as two products, each time-major ``(B, L, E)`` and contiguous (their gradients
    then need no concatenation), or without ``gate_everywhere`` the gate ``z`` at the newest position alone,
    ``(B, E)``: scoring reads it nowhere else, and it is half the projection's work."""
    weight, bias = in_proj.weight.chunk(2), (None, None) if in_proj.bias is None else in_proj.bias.chunk(2)
    u = F.linear(x, weight[0], bias[0])
    return u, F.linear(x if gate_everywhere else x[:, -1], weight[1], bias[1])


class MambaState(NamedTuple):
    """Streaming state: the last ``d_conv`` conv inputs ``(B, d_inner, d_conv)`` and the SSM state ``(B, d_inner, d_state)``."""

    conv: Tensor
    ssm: Tensor


@register_block("mamba")
class Mamba(SequenceBlock):
    """Mamba block (Gu & Dao 2023, Fig. 3; mamba-ssm ``Mamba``, non-fused path).

    ``x, z = in_proj(u)``; ``x = SiLU(causal_depthwise_conv(x))``; ``dt, B, C = x_proj(x)``;
    ``delta = softplus(dt_proj(dt))``; ``y = selective_scan(x, delta, A = -exp(A_log), B, C, D)``
    (``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t``, ``y_t = C_t h_t + D x_t``);
    ``out = out_proj(y * SiLU(z))``.

    With a padding mask (left padding) the conv input is zeroed at pads and ``delta`` is 0 there, so
    the state stays exactly zero through the padding and real positions do not depend on it.
    """

    causal = True
    streaming = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | Literal["auto"] = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if value < 1:
                raise ValueError(f"mamba: {name} must be a positive integer, got {value}")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"mamba: dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"mamba: dt_init must be 'random' or 'constant', got {dt_init!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self._init_dt_proj(dt_init, dt_scale, dt_min, dt_max, dt_init_floor)

    def _init_dt_proj(self, dt_init: str, dt_scale: float, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Weights ~ U(-s, s) (or constant s), s = dt_rank^-0.5 * dt_scale; bias = softplus^-1(dt),
        dt log-uniform in [dt_min, dt_max] floored at dt_init_floor (mamba-ssm's init)."""
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                self.dt_proj.weight.fill_(std)
            else:
                self.dt_proj.weight.uniform_(-std, std)
            log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt).clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        u, z, dt, B, C = self._scan_inputs(x, mask)
        # Every (B, ., L) operand is a view of a time-major product: the compiled scan reads u, z, dt, B and C in place
        # (dt_proj's step it forms itself, zero at padded positions: no decay, no input) and writes its output in u's
        # layout, so out_proj reads it, and the gradients come back, without a transposing copy.
        y = projected_selective_scan(u, dt.transpose(1, 2), self.dt_proj.weight, -torch.exp(self.A_log),
                                     B.transpose(1, 2), C.transpose(1, 2), self.D, z=z.transpose(1, 2),
                                     delta_bias=self.dt_proj.bias, valid=mask)
        return self.out_proj(y.transpose(1, 2))

    def forward_last(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``forward(x, mask)[:, -1:]`` with the scan read out at the newest position alone (eq. 2b there
        only, :func:`~zoo.blocks.ssm.final_state_scan.final_state_scan`) and the gate and output projection
        applied there only: what scoring needs. Where that scan has no compiled kernel (a tracer, CUDA,
        ``SEQREC_ZOO_CPU_KERNEL=0``) it is ``forward`` read at the newest position."""
        if not cpu_kernel.applies("final_state_scan", x):
            return super().forward_last(x, mask)
        u, z, dt, B, C = self._scan_inputs(x, mask, gate_everywhere=False)
        # The step 0 at pads (the scan skips them), formed inside the scan when nothing is differentiated.
        y = projected_final_state_scan(u, dt, self.dt_proj.weight, self.dt_proj.bias, mask, -torch.exp(self.A_log), B,
                                       C[:, -1], self.D)
        return self.out_proj(y * F.silu(z)).unsqueeze(1)

    def _scan_inputs(self, x: Tensor, mask: Tensor | None,
                     gate_everywhere: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The scan's inputs: ``u`` after the convolution and its SiLU (B, E, L), the gate ``z`` (B, L, E), or
        (B, E) at the newest position alone without ``gate_everywhere``, the step's low-rank input ``dt``
        (B, L, dt_rank), which ``dt_proj`` maps to the step before its softplus, and ``B``, ``C`` (B, L, n), all as
        ``x_proj`` gives them."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"mamba: expected x of shape (batch, length, {self.d_model}), got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mamba: mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        u, z = split_projection(self.in_proj, x, gate_everywhere)
        u = u.transpose(1, 2)
        if u.is_cuda:  # causal-conv1d's CUDA kernel gets time-major rows (its channels-last path wants aligned strides)
            u = u.contiguous()
        # Padded positions read as zero (the CPU kernel skips them; elsewhere u is masked first).
        u = causal_depthwise_conv1d(u, self.conv1d.weight, self.conv1d.bias, activation="silu", valid=mask)
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return u, z, dt, B, C

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> MambaState:
        device = self.A_log.device if device is None else device
        dtype = self.out_proj.weight.dtype if dtype is None else dtype
        return MambaState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        )

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """One position: ``x_t (B, d_model)`` -> ``(y_t (B, d_model), new state)``; equals ``forward`` position by position."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"mamba.step: expected x_t of shape (batch, {self.d_model}), got {tuple(x_t.shape)}")
        conv_state, ssm_state = state
        u, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E)
        conv_state = torch.cat([conv_state[..., 1:], u.unsqueeze(-1)], dim=-1)
        u = (conv_state * self.conv1d.weight.squeeze(1)).sum(-1)
        if self.conv1d.bias is not None:
            u = u + self.conv1d.bias
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = softplus(self.dt_proj(dt))  # (B, E)
        A = -torch.exp(self.A_log)
        ssm_state = torch.exp(delta.unsqueeze(-1) * A) * ssm_state + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
        y = (ssm_state @ C.unsqueeze(-1)).squeeze(-1) + self.D * u
        y = y * F.silu(z)
        return self.out_proj(y), MambaState(conv_state, ssm_state)
