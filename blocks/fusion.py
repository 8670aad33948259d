"""Fusions: combine k parallel streams ``(B, L, D)`` into one (sum, mixing, adaptive, gate, softmax gate)."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from zoo.blocks.base import FusionBlock, State
from zoo.blocks.masking import causal_prefix_mean, masked_mean
from zoo.registry import register_block


def check_streams(who: str, streams: Sequence[Tensor], expected: int, like: Tensor) -> None:
    """Raise a clear error unless there are ``expected`` streams, each shaped like ``like``."""
    if len(streams) != expected:
        raise ValueError(f"{who}: expected {expected} streams, got {len(streams)}")
    for i, s in enumerate(streams):
        if s.shape != like.shape:
            raise ValueError(f"{who}: stream {i} has shape {tuple(s.shape)}; every stream must match the input {tuple(like.shape)}")


class PositionwiseFusion(FusionBlock):
    """A fusion that combines the streams position by position; it is causal and streams statelessly.

    Subclasses implement ``combine(streams, x)`` for tensors ``(..., D)``.
    """

    causal = True
    positionwise = True
    streams_positionwise = True
    streaming = True
    num_inputs: int

    def combine(self, streams: Sequence[Tensor], x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, streams: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(f"{self.block_name}: expected x (B, L, D) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}")
        check_streams(self.block_name, streams, self.num_inputs, x)
        return self.combine(streams, x)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return None

    def step(self, streams_t: Sequence[Tensor], state: State, x_t: Tensor) -> tuple[Tensor, State]:
        check_streams(self.block_name, streams_t, self.num_inputs, x_t)
        return self.combine(streams_t, x_t), state


@register_block("sum")
class Sum(PositionwiseFusion):
    """``y = Σ_i s_i``: the streams added, no parameters (e.g. SIGMA's code, where each stream
    already carries its own learned weight; recipes/sigma-code.yaml)."""

    contract_variants = ({"num_inputs": 3},)

    def __init__(self, d_model: int, num_inputs: int = 2) -> None:
        super().__init__()
        if num_inputs < 2:
            raise ValueError(f"sum: needs at least 2 streams, got num_inputs={num_inputs}")
        self.num_inputs = self.min_inputs = self.max_inputs = num_inputs

    def combine(self, streams: Sequence[Tensor], x: Tensor) -> Tensor:
        return sum(streams[1:], streams[0])


@register_block("mixing")
class Mixing(PositionwiseFusion):
    """``y = Σ_i a_i s_i`` with learnable scalars ``a_i`` -- SIGMA's mixing layer (Eq. 8, ``Z = a1 M + a2 F``).

    ``init`` sets the starting scalars and thereby the number of streams (e.g. the released code's
    three streams: ``[0.1, 0.1, 0.8]`` for GRU, flipped, forward; docs/models/sigma.md, "Stream weights"); default
    ``num_inputs`` equal weights ``1 / num_inputs``. The scalars are raw (no softmax), as in the code.
    """

    contract_variants = ({"init": [0.8, 0.1, 0.1]},)

    def __init__(self, d_model: int, num_inputs: int = 2, init: list[float] | None = None) -> None:
        super().__init__()
        if init is not None:
            num_inputs = len(init)
        if num_inputs < 2:
            raise ValueError(f"mixing: needs at least 2 streams (num_inputs or len(init)), got {num_inputs}")
        start = [1.0 / num_inputs] * num_inputs if init is None else [float(a) for a in init]
        self.weights = nn.Parameter(torch.tensor(start))
        self.num_inputs = self.min_inputs = self.max_inputs = num_inputs

    def combine(self, streams: Sequence[Tensor], x: Tensor) -> Tensor:
        return sum(a * s for a, s in zip(self.weights, streams))


@register_block("gate")
class GateFusion(PositionwiseFusion):
    """Per-position sigmoid gate of two streams: ``g = σ([s1; s2] W + b)``, ``y = g ⊙ s1 + (1 - g) ⊙ s2``.

    ``W: 2D -> D`` (per channel); ``g -> 1`` keeps the first stream. The two-stream gate of the M2Rec
    reconstruction, ``g = σ(W_g [m; e_llm] + b)`` (docs/models/m2rec.md, "Gate").
    """

    min_inputs = max_inputs = 2
    num_inputs = 2

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * d_model, d_model)

    def combine(self, streams: Sequence[Tensor], x: Tensor) -> Tensor:
        first, second = streams
        g = torch.sigmoid(self.proj(torch.cat([first, second], -1)))
        return g * first + (1 - g) * second


@register_block("softmax_gate")
class SoftmaxGateFusion(PositionwiseFusion):
    """``w = softmax(u W + b)`` over the k streams at each position, ``y = Σ_k w_k s_k``.

    ``u`` is the concatenated streams ``[s_1; ...; s_k]`` (``source="streams"``, ``W: kD -> k``) or the
    streams' common input ``x`` (``source="input"``, ``W: D -> k``). M2Rec's learnable gate balancing
    its temporal, frequency and semantic features (M2Rec summary; docs/models/m2rec.md, "Gate"), hence the
    default ``num_inputs=3``.
    """

    contract_variants = ({"num_inputs": 2, "source": "input"},)

    def __init__(self, d_model: int, num_inputs: int = 3, source: Literal["streams", "input"] = "streams") -> None:
        super().__init__()
        if num_inputs < 2:
            raise ValueError(f"softmax_gate: num_inputs must be >= 2, got {num_inputs}")
        if source not in ("streams", "input"):
            raise ValueError(f"softmax_gate: source must be 'streams' or 'input', got {source!r}")
        self.source = source
        self.score = nn.Linear(num_inputs * d_model if source == "streams" else d_model, num_inputs)
        self.num_inputs = self.min_inputs = self.max_inputs = num_inputs

    def combine(self, streams: Sequence[Tensor], x: Tensor) -> Tensor:
        u = torch.cat(list(streams), -1) if self.source == "streams" else x
        w = torch.softmax(self.score(u), -1)
        return sum(w[..., i : i + 1] * s for i, s in enumerate(streams))


@register_block("adaptive")
class AdaptiveFusion(FusionBlock):
    """CNN-Mamba's adaptive fusion (Eqs. 10-12): ``p = mean_t Out(x_t)``, ``a = σ(p W + b)``,
    ``y = a ⊙ s1 + (1 - a) ⊙ s2`` (s1 the short-term conv stream, s2 the long-term SSD stream).

    ``x`` is the layer input; the mean runs over its real items only (Eq. 10 divides by the true
    length n). ``Out`` is undefined in the paper: ``pool_proj="identity"`` or a D x D ``"linear"``
    (docs/models/cnn-mamba.md, "Adaptive fusion"). ``weight="channel"`` gives ``a`` per channel (``W: D -> D``), ``"scalar"`` one
    weight per sequence (``W: D -> 1``). One weight per sequence sees the whole sequence, so the block
    is not causal by default; ``causal=True`` uses the running mean of the items so far
    (``p_t = mean_{s <= t} Out(x_s)``), making it causal and streamable (state: running sum, count).
    """

    causal = False
    streams_positionwise = True  # only the weight ``a`` pools, over the input x
    min_inputs = max_inputs = 2
    contract_variants = ({"causal": True, "weight": "scalar", "pool_proj": "linear"},)

    def __init__(
        self,
        d_model: int,
        pool_proj: Literal["identity", "linear"] = "identity",
        weight: Literal["channel", "scalar"] = "channel",
        causal: bool = False,
    ) -> None:
        super().__init__()
        if pool_proj not in ("identity", "linear"):
            raise ValueError(f"adaptive: pool_proj must be 'identity' or 'linear', got {pool_proj!r}")
        if weight not in ("channel", "scalar"):
            raise ValueError(f"adaptive: weight must be 'channel' or 'scalar', got {weight!r}")
        self.d_model = d_model
        self.pool_proj = nn.Linear(d_model, d_model) if pool_proj == "linear" else nn.Identity()
        self.score = nn.Linear(d_model, d_model if weight == "channel" else 1)
        self.causal = causal
        self.streaming = causal

    def _mix(self, streams: Sequence[Tensor], pooled: Tensor) -> Tensor:
        a = torch.sigmoid(self.score(pooled))
        first, second = streams
        return a * first + (1 - a) * second

    def forward(self, streams: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        return self._fuse(streams, mask, x, running=self.causal)

    def offers_prefixes(self) -> bool:
        return True

    def forward_prefixes(self, streams: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        """The prefix ending at ``t`` pools its own items, ``mean_{s <= t}``: the running mean, exactly."""
        return self._fuse(streams, mask, x, running=True)

    def forward_last(self, newest: Sequence[Tensor], mask: Tensor, x: Tensor) -> Tensor:
        """The weight from the mean over every real item of ``x`` (the running mean at the newest position is that
        mean too), mixing the streams' newest outputs."""
        self._check_input(mask, x)
        check_streams("adaptive", newest, 2, x[:, -1:])
        return self._mix(newest, masked_mean(self.pool_proj(x), mask).unsqueeze(1))

    def _check_input(self, mask: Tensor, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model or mask.shape != x.shape[:2]:
            raise ValueError(
                f"adaptive: expected x (B, L, {self.d_model}) and mask (B, L), got {tuple(x.shape)} and {tuple(mask.shape)}"
            )

    def _fuse(self, streams: Sequence[Tensor], mask: Tensor, x: Tensor, running: bool) -> Tensor:
        self._check_input(mask, x)
        check_streams("adaptive", streams, 2, x)
        h = self.pool_proj(x)
        pooled = causal_prefix_mean(h, mask) if running else masked_mean(h, mask).unsqueeze(1)
        return self._mix(streams, pooled)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        if not self.causal:
            return super().init_state(batch_size, device, dtype)
        dtype = self.score.weight.dtype if dtype is None else dtype
        zeros = torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)
        return zeros, zeros[:, :1].clone()

    def step(self, streams_t: Sequence[Tensor], state: State, x_t: Tensor) -> tuple[Tensor, State]:
        if not self.causal:
            return super().step(streams_t, state, x_t)
        check_streams("adaptive", streams_t, 2, x_t)
        total, count = state
        total, count = total + self.pool_proj(x_t), count + 1
        return self._mix(streams_t, total / count), (total, count)
