"""CNN-Mamba's short-term module: convolution + squeeze-excitation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.blocks.activations import make_activation
from zoo.blocks.base import SequenceBlock, State
from zoo.blocks.dropout import HashDropout
from zoo.blocks.masked_conv import MaskedConv1d, Padding
from zoo.blocks.masking import shift_time
from zoo.blocks.squeeze_excite import SqueezeExcite
from zoo.registry import register_block

@register_block("se_conv")
class SEConv(SequenceBlock):
    """CNN-Mamba's short-term module: ``y = SE(LN(Dropout(act(Conv1d_k(U)))))``.

    Source: CNN-Mamba (Feng, Wang, Wang) §3.2.1, Eqs. 1-5 (docs/models/cnn-mamba.md, "Short-term module: SE-Conv"):

    * optional input transform, Eq. 1: ``U = LN(Dropout(H W_en + b_en))`` (``input_transform=True``;
      in the paper ``U`` is shared with the long-term SSD branch, so a recipe may instead put it
      before the parallel branches);
    * Eqs. 2-3: ``C = act(Conv1d(U))``, a full ``Conv1d(D, D, k)`` (the paper's m kernels of width k
      concatenated over features); kernel sizes 3..11 are studied (k = 7 best on Beauty), activation
      by name (GELU best);
    * Eq. 4: ``S = LN(Dropout(C))``;
    * Eq. 5: ``L_conv = SEAtt(S)``, the :class:`~blocks.squeeze_excite.SqueezeExcite` block.

    Pads are zeroed before the convolution and excluded from the squeeze, so outputs at real
    positions do not depend on padding. ``padding="same"`` centres the window (the paper's window
    ``[j, j+k-1]`` also looks ahead); ``"causal"`` looks back only. The block is causal, and
    streams, when ``padding="causal"`` and ``se_causal=True`` (running-mean squeeze).
    """

    causal = False
    contract_variants = (
        {"padding": "causal", "se_causal": True, "input_transform": True},
        {"kernel_size": 7, "activation": "relu", "reduction": 2},
    )

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 3,
        padding: Padding = "same",
        activation: str = "gelu",
        dropout: float = 0.0,
        input_transform: bool = False,
        reduction: int = 4,
        se_causal: bool = False,
        norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"se_conv: dropout must be in [0, 1), got {dropout}")
        if not norm_eps > 0.0:
            raise ValueError(f"se_conv: norm_eps must be > 0, got {norm_eps}")
        self.d_model = d_model
        self.input_transform = (
            nn.Sequential(nn.Linear(d_model, d_model), HashDropout(dropout), nn.LayerNorm(d_model, eps=norm_eps))
            if input_transform
            else nn.Identity()
        )
        self.conv = MaskedConv1d(d_model, d_model, kernel_size, padding)
        self.activation = make_activation(activation)
        self.dropout = HashDropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.se = SqueezeExcite(d_model, reduction=reduction, causal=se_causal)
        self.causal = padding == "causal" and se_causal
        self.streaming = self.causal

    def _short_term(self, conv_out: Tensor) -> Tensor:
        return self.norm(self.dropout(self.activation(conv_out)))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"se_conv: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        s = self._short_term(self.conv(self.input_transform(x), mask))
        return self.se(s, mask)

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, x: Tensor, mask: Tensor) -> Tensor:
        """SE-Conv at the newest position of every prefix, all at once.

        The prefix ending at ``t`` squeezes the mean of its own short-term features ``S``. With a centred
        window that reads ``R`` later positions, its last ``R`` positions have those taps cut off by the
        prefix's end (:meth:`MaskedConv1d.forward_truncated`); every earlier one is the ordinary ``S``. So
        the mean is a running sum of the ordinary ``S`` up to ``t - R`` plus the ``R`` cut values.
        """
        u = self.input_transform(x)
        reach = self.conv.lookahead
        cut = [self._short_term(self.conv.forward_truncated(u, mask, lookahead)) for lookahead in range(reach)]
        full = self._short_term(self.conv(u, mask))
        real = mask.unsqueeze(-1).to(u.dtype)
        total = shift_time((full * real).cumsum(1), reach)
        for lookahead, s in enumerate(cut):  # position t - lookahead of the prefix ending at t
            total = total + shift_time(s * real, lookahead)
        newest = cut[0] if cut else full
        pooled = total / real.cumsum(1).clamp_min(1.0)
        return newest * self.se.channel_weights(pooled)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.streaming:
            return super().init_state(batch_size, device, dtype)
        return self.conv.init_state(batch_size, device, dtype), self.se.init_state(batch_size, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.streaming:
            return super().step(x_t, state)
        window, se_state = state
        c_t, window = self.conv.step(self.input_transform(x_t), window)
        y_t, se_state = self.se.step(self._short_term(c_t), se_state)
        return y_t, (window, se_state)
