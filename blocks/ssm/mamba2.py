"""The Mamba2 layer (Dao & Gu 2024), parameter-for-parameter compatible with ``mamba_ssm.Mamba2``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.masking import zero_pads
from zoo.blocks.norms import GatedRMSNorm
from zoo.blocks.ssm._dispatch import causal_depthwise_conv1d
from zoo.blocks.ssm.ssd import discretize_dt, ssd_scan
from zoo.registry import register_block


@register_block("mamba2", aliases=("ssd",))
class Mamba2(SequenceBlock):
    """Mamba2 / SSD layer: mamba-ssm's ``Mamba2`` (non-fused path) with a padding mask and streaming.

    With ``[z, xBC, dt] = in_proj(u)`` (widths ``d_inner``, ``d_inner + 2·ngroups·d_state``,
    ``nheads``)::

        x, B, C = split(silu(causal_depthwise_conv(xBC)))
        dt_t    = clamp(softplus(dt_t + dt_bias), *dt_limit),   A = -exp(A_log)   (one scalar per head)
        S_t     = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,          y_t = S_t C_t + D x_t   (per head)
        out     = out_proj(GatedRMSNorm(y, z))   or   out_proj(y · silu(z)) when rmsnorm=False

    (Mamba2 paper §7 "the Mamba-2 architecture"; mamba-ssm ``modules/mamba2.py``; sizes: docs/models/cnn-mamba.md, "Mamba2 sizes".)
    Parameter names, shapes and initialisation are mamba-ssm's, so ``load_state_dict`` works both
    ways: ``in_proj`` ``(2·d_inner + 2·ngroups·d_state + nheads, d_model)``, ``conv1d`` depthwise
    over ``conv_dim``, ``dt_bias`` = softplus⁻¹ of a log-uniform step in ``[dt_min, dt_max]``,
    ``A_log = log U(A_init_range)``, ``D`` ones (``d_inner`` of them when ``D_has_hdim``),
    ``norm.weight`` ones, ``out_proj``. ``headdim`` is capped at ``d_inner`` so that small
    ``d_model`` builds with the defaults (mamba-ssm would reject those sizes).

    Padding mask (left padding): pads are zeroed before the convolution and get ``dt = 0``, so
    they neither decay nor feed the state and real positions see exactly what an unpadded
    sequence sees. ``init_state`` / ``step`` run the same recurrence one position at a time.
    """

    causal = True
    streaming = True

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                            ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"mamba2: {name} must be >= 1, got {value}")
        d_inner = expand * d_model
        headdim = min(headdim, d_inner)
        if d_inner % headdim != 0:
            raise ValueError(f"mamba2: d_inner = expand * d_model = {d_inner} must be divisible by headdim {headdim}")
        nheads = d_inner // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"mamba2: nheads = {nheads} (d_inner {d_inner} / headdim {headdim}) must be divisible "
                             f"by ngroups {ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"mamba2: A_init_range must satisfy 0 < low <= high, got {A_init_range}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"mamba2: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0 <= dt_limit[0] <= dt_limit[1]:
            raise ValueError(f"mamba2: dt_limit must be (low, high) with 0 <= low <= high, got {dt_limit}")

        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups = d_inner, headdim, nheads, ngroups
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = (float(dt_limit[0]), float(dt_limit[1]))
        self.chunk_size = chunk_size
        self.conv_dim = d_inner + 2 * ngroups * d_state

        # Creation order follows mamba-ssm's, so the same seed draws the same parameters.
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias)  # [z, x, B, C, dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        A = torch.empty(nheads, dtype=torch.float32).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner if D_has_hdim else nheads))
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True
        if rmsnorm:
            self.norm = GatedRMSNorm(d_inner, eps=1e-5, group_size=d_inner // ngroups,
                                     norm_before_gate=norm_before_gate)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"mamba2: expected x of shape (B, L, {self.d_model}), got {tuple(x.shape)}")
        if mask is not None and mask.shape != x.shape[:2]:
            raise ValueError(f"mamba2: mask must have shape {tuple(x.shape[:2])} (B, L), got {tuple(mask.shape)}")
        batch, seqlen, _ = x.shape
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = causal_depthwise_conv1d(xBC.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                                      activation="silu", valid=mask).transpose(1, 2)  # pads read as zero
        xs, B, C = xBC.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dt = self._discretize(dt)
        if mask is not None:
            dt = zero_pads(dt, mask)
        y = ssd_scan(
            xs.unflatten(-1, (self.nheads, self.headdim)),
            dt,
            self._A(),
            B.unflatten(-1, (self.ngroups, self.d_state)),
            C.unflatten(-1, (self.ngroups, self.d_state)),
            self.chunk_size,
            D=self._D(),
            z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
        )
        return self._output(y.flatten(-2), z)

    def init_state(self, batch_size: int, device: torch.device | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """``(conv_state (B, conv_dim, d_conv), ssm_state (B, nheads, headdim, d_state))``, all zeros."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=dtype)
        return conv_state, ssm_state

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One position: ``x_t (B, d_model)`` -> ``(y_t (B, d_model), new state)``; the state is not modified."""
        conv_state, ssm_state = state
        z, xBC, dt = self.in_proj(x_t).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state = torch.cat([conv_state[..., 1:], xBC.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
        xBC = (conv_state * self.conv1d.weight.squeeze(1)).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        xs, B, C = F.silu(xBC).split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        xs = xs.unflatten(-1, (self.nheads, self.headdim))
        heads_per_group = self.nheads // self.ngroups
        B = B.unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(heads_per_group, dim=1)
        C = C.unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(heads_per_group, dim=1)
        dt = self._discretize(dt)  # (B, nheads)
        decay = torch.exp(dt * self._A())
        ssm_state = ssm_state * decay[..., None, None].to(ssm_state.dtype) + (
            (dt[..., None] * xs).unsqueeze(-1) * B.unsqueeze(-2)
        ).to(ssm_state.dtype)
        D = self._D()
        y = (ssm_state * C.unsqueeze(-2)).sum(-1) + xs * (D.unsqueeze(-1) if D.dim() == 1 else D)
        if not self.rmsnorm:
            y = y * F.silu(z.unflatten(-1, (self.nheads, self.headdim)))
        return self._output(y.flatten(-2).to(x_t.dtype), z), (conv_state, ssm_state)

    def _A(self) -> Tensor:
        """``A = -exp(A_log)``, in at least float32 (half precision would underflow to -inf)."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _D(self) -> Tensor:
        return self.D.view(self.nheads, self.headdim) if self.D_has_hdim else self.D

    def _discretize(self, dt: Tensor) -> Tensor:
        dt = dt.to(torch.promote_types(dt.dtype, torch.float32))
        return discretize_dt(dt, self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit)

    def _output(self, y: Tensor, z: Tensor) -> Tensor:
        if self.rmsnorm:
            y = self.norm(y, z)
        return self.out_proj(y)
