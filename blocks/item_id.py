"""Item-ID embedding encoder: the item encoder of SASRec, GRU4Rec, Mamba4Rec, SIGMA and CNN-Mamba."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from zoo.blocks import compiled
from zoo.blocks.base import ItemEncoderBlock, State
from zoo.blocks.dropout import HashDropout
from zoo.blocks.masking import positions_from_mask
from zoo.registry import register_block


@register_block("item_id")
class ItemIdEncoder(ItemEncoderBlock):
    """``e_t = Norm(Dropout(E[i_t] (+ P[pos_t])))`` -- a learned item table, optional learned positions.

    * ``E`` is ``(num_items + 1, D)`` with row 0 the padding item, initialised N(0, ``init_std``)
      (RecBole's init, docs/models/mamba4rec.md, "RecBole initialisation"); the tied head scores against the same table.
    * ``positions="learned"`` adds ``P[pos_t]`` where ``pos_t`` counts real items from the oldest
      (SASRec, Kang & McAuley 2018 §III-B; CNN-Mamba §3.1), so left padding never shifts them.
      ``max_len`` rows cover the recipe's maximum length.
    * ``order`` sets dropout-then-norm (Mamba4Rec, SIGMA: docs/models/mamba4rec.md, "Forward pass of the
      official code") or norm-then-dropout (RecBole SASRec). ``scale=True`` multiplies ``E[i]`` by sqrt(D) (the original SASRec).
    * ``mask_token=True`` adds one more row, index ``num_items + 1``, as BERT4Rec's ``[MASK]``
      token (Sun et al. 2019 §3.6; ``mask_token_id``); ``item_table()`` still returns only rows
      ``0..num_items``, so the token is never scored or recommended. At inference the model appends
      it after the history; ``mask_displaces_oldest=True`` makes it always take the oldest item's
      place, also in histories shorter than ``max_len``, as RecBole 1.2.1's BERT4Rec does
      (``reconstruct_test_data`` appends the token, then drops the first slot of every row); by
      default only a history of ``max_len`` items loses its oldest one.
    """

    causal = True
    streaming = True

    def __init__(
        self,
        d_model: int,
        num_items: int,
        max_len: int = 50,
        positions: Literal["none", "learned"] = "none",
        dropout: float = 0.0,
        norm: Literal["layernorm", "none"] = "none",
        norm_eps: float = 1e-12,
        order: Literal["dropout_norm", "norm_dropout"] = "dropout_norm",
        scale: bool = False,
        init_std: float = 0.02,
        mask_token: bool = False,
        mask_displaces_oldest: bool = False,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"item_id: num_items must be >= 1, got {num_items}")
        if mask_displaces_oldest and not mask_token:
            raise ValueError("item_id: mask_displaces_oldest needs mask_token: true (it says where the [MASK] goes)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"item_id: dropout must be in [0, 1), got {dropout}")
        if not init_std >= 0.0:
            raise ValueError(f"item_id: init_std must be >= 0, got {init_std}")
        if not norm_eps > 0.0:
            raise ValueError(f"item_id: norm_eps must be > 0, got {norm_eps}")
        self.num_items = num_items
        self.mask_token_id = num_items + 1 if mask_token else None
        self.mask_displaces_oldest = mask_displaces_oldest
        self.embedding = nn.Embedding(num_items + 2 if mask_token else num_items + 1, d_model, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=init_std)
        self.position = nn.Embedding(max_len, d_model) if positions == "learned" else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=init_std)
        self.dropout = HashDropout(dropout)
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if norm == "layernorm" else nn.Identity()
        self.order = order
        self.scale = d_model**0.5 if scale else 1.0

    def item_table(self) -> Tensor:
        return self.embedding.weight[: self.num_items + 1]

    def _embed(self, item_ids: Tensor) -> Tensor:
        e = self.embedding(item_ids)
        return e * self.scale if self.scale != 1.0 else e  # no pass over the batch for a scale of 1

    def _finish(self, e: Tensor) -> Tensor:
        if self.order == "dropout_norm":
            return self.norm(self.dropout(e))
        return self.dropout(self.norm(e))

    def _add_position(self, e: Tensor, positions: Tensor) -> Tensor:
        if self.position is None:
            return e
        return e + self.position(positions.clamp_max(self.position.num_embeddings - 1))

    def forward(self, item_ids: Tensor, mask: Tensor, timestamps: Tensor | None = None) -> Tensor:
        if self._use_compiled_kernel(item_ids):
            return self._forward_compiled(item_ids, mask)
        e = self._embed(item_ids)
        return self._finish(self._add_position(e, positions_from_mask(mask)))

    def _use_compiled_kernel(self, item_ids: Tensor) -> bool:
        """The fused C++ pass (``item_embedding_cpu.cpp``) serves inference on the CPU when the
        compiled kernels are enabled (:mod:`zoo.blocks.compiled`): no gradient to compute and no dropout to apply."""
        norm_supported = isinstance(self.norm, nn.Identity) or (self.norm.weight is not None and self.norm.bias is not None)
        float_table = self.embedding.weight.dtype in (torch.float32, torch.float64)
        return (float_table and norm_supported
                and compiled.serves_inference("item_embedding", item_ids, self, dropout_active=self.training and self.dropout.p > 0))

    def _forward_compiled(self, item_ids: Tensor, mask: Tensor) -> Tensor:
        table = self.embedding.weight
        empty = table.new_empty(0)
        norm = self.norm if isinstance(self.norm, nn.LayerNorm) else None
        return compiled.load("item_embedding").embed(
            item_ids.contiguous(), mask.contiguous(), table, self.scale,
            empty if self.position is None else self.position.weight,
            empty if norm is None else norm.weight, empty if norm is None else norm.bias,
            norm.eps if norm is not None else 0.0,
        )

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return torch.zeros(batch_size, dtype=torch.long, device=device)

    def step(self, item_ids_t: Tensor, state: State, timestamps_t: Tensor | None = None) -> tuple[Tensor, State]:
        e = self._embed(item_ids_t)
        return self._finish(self._add_position(e, state)), state + 1
