"""Frozen item text embeddings (e.g. from a sentence encoder) projected to the model width."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from zoo.blocks.activations import make_activation
from zoo.blocks.base import ItemEncoderBlock, State
from zoo.blocks.compiled import tracing
from zoo.blocks.dropout import HashDropout
from zoo.registry import register_block

ActivationName = Literal["gelu", "relu", "silu", "swish", "tanh", "sigmoid", "identity"]


def item_feature_table(who: str, kind: str, value: Tensor, num_items: int, width: int | None) -> Tensor:
    """Check a per-item table ``(num_items + 1, width)`` (row 0 = padding) and return it as float32.

    ``width=None`` checks a vector ``(num_items + 1,)`` instead. Row 0 is set to zero.
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{who}: {kind} must be a torch.Tensor, got {type(value).__name__}")
    expected = (num_items + 1,) if width is None else (num_items + 1, width)
    if tuple(value.shape) != expected:
        raise ValueError(
            f"{who}: {kind} must have shape {expected} (row 0 for the padding item, then items 1..{num_items}), "
            f"got {tuple(value.shape)}"
        )
    table = value.detach().to(torch.float32).clone()
    if not torch.isfinite(table).all():
        raise ValueError(f"{who}: {kind} contains NaN or infinite values")
    table[0] = 0.0
    return table


def reject_unused_features(who: str, used: tuple[str, ...], **given: Tensor | None) -> None:
    """Raise when item features this encoder does not use were passed."""
    unused = sorted(k for k, v in given.items() if v is not None and k not in used)
    if unused:
        raise ValueError(f"{who}: got item features {unused}, but this encoder uses only {list(used)}")


@register_block("llm_projector", aliases=("text_projector",))
class LLMProjector(ItemEncoderBlock):
    """``e_i = [E_id[i] +] A(T[i])`` with the adapter ``A(t) = W2 · act(W1 t + b1) + b2``.

    ``T`` is a frozen ``(num_items + 1, text_dim)`` table of item text embeddings (a buffer: saved in the
    checkpoint, never trained), loaded with :meth:`set_item_features` (``text=``). Row 0 (padding) and
    the rows of items without a text (left at zero) are zero vectors, so every unknown item maps to the
    one learned vector ``A(0)``. The default ``text_dim = 384`` is all-MiniLM-L6-v2's width and the
    adapter's hidden width defaults to ``text_dim // 2``. ``zoo.train`` fills the table from the
    dataset's item texts (:mod:`zoo.data.item_text`); training with a table that was never loaded
    (every row zero) raises, since the adapter would then see one constant input.

    Source: LLM-ESR's adapter over frozen LLM item embeddings (Linear(d_llm, d_llm/2) → Linear(·, D));
    M2Rec's semantic stream (LLM text embeddings of items; docs/models/m2rec.md, "Semantic stream and item encoder").
    ``id_embedding="add"`` adds a learned ID embedding ``E_id`` (N(0, 0.02), padding row 0), so the
    block can also serve as the whole item encoder. Outputs at padded positions are zero.
    """

    causal = True
    streaming = True
    item_features: ClassVar[tuple[str, ...]] = ("text",)
    contract_variants = ({"id_embedding": "add", "activation": "identity", "hidden_dim": 8, "text_dim": 12},)

    def __init__(
        self,
        d_model: int,
        num_items: int,
        text_dim: int = 384,
        hidden_dim: int | None = None,
        activation: ActivationName = "gelu",
        dropout: float = 0.0,
        id_embedding: Literal["none", "add"] = "none",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"llm_projector: num_items must be >= 1, got {num_items}")
        if text_dim < 1:
            raise ValueError(f"llm_projector: text_dim must be >= 1, got {text_dim}")
        hidden = max(1, text_dim // 2) if hidden_dim is None else hidden_dim
        if hidden < 1:
            raise ValueError(f"llm_projector: hidden_dim must be >= 1, got {hidden_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"llm_projector: dropout must be in [0, 1), got {dropout}")
        if not init_std >= 0.0:
            raise ValueError(f"llm_projector: init_std must be >= 0, got {init_std}")
        self.num_items, self.text_dim = num_items, text_dim
        self.register_buffer("text", torch.zeros(num_items + 1, text_dim))
        self._checked_table: tuple[int, int] | None = None  # (data_ptr, version) of the last table found loaded
        self.adapter = nn.Sequential(nn.Linear(text_dim, hidden), make_activation(activation), nn.Linear(hidden, d_model))
        self.id_embedding = nn.Embedding(num_items + 1, d_model, padding_idx=0) if id_embedding == "add" else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=init_std)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
        self.dropout = HashDropout(dropout)

    def set_item_features(
        self, *, text: Tensor | None = None, attributes: Tensor | None = None, item_counts: Tensor | None = None
    ) -> None:
        """Load the frozen text table ``text (num_items + 1, text_dim)``; row 0 is forced to zero."""
        reject_unused_features("llm_projector", self.item_features, text=text, attributes=attributes, item_counts=item_counts)
        if text is None:
            raise ValueError("llm_projector: pass text=(num_items + 1, text_dim) item text embeddings")
        self.text.copy_(item_feature_table("llm_projector", "text", text, self.num_items, self.text_dim))

    def _encode(self, item_ids: Tensor) -> Tensor:
        """``e_i`` for each id. Where the ids outnumber the table's rows (a batch of 128 x 50 positions against
        ml-100k's 1,683 items), the adapter runs once over the whole table and its rows are gathered: the same
        numbers, since the adapter reads each row alone, for a quarter of the work or less, forward and backward.
        A tracer (``torch.export``, ONNX) records the per-position form, which holds for every batch size."""
        if not tracing() and item_ids.numel() > self.num_items + 1:
            return self._adapted(torch.arange(self.num_items + 1, device=item_ids.device))[item_ids]
        return self._adapted(item_ids)

    def _adapted(self, item_ids: Tensor) -> Tensor:
        e = self.adapter(self.text[item_ids])
        if self.id_embedding is not None:
            e = e + self.id_embedding(item_ids)
        return e

    def item_table(self) -> Tensor:
        table = self._encode(torch.arange(self.num_items + 1, device=self.text.device))
        return torch.cat([torch.zeros_like(table[:1]), table[1:]], 0)

    def _require_loaded_table(self) -> None:
        """Raise when the text table is still all zeros: a training loop that forgot ``set_item_features``.

        The table is looked at again only after it changed (new storage or an in-place write such as
        ``set_item_features`` or ``load_state_dict``), so training steps do not pay for the check.
        """
        key = (self.text.data_ptr(), self.text._version)
        if key == self._checked_table:
            return
        if not bool(self.text[1:].any()):
            raise ValueError(
                "llm_projector: training with an empty item text table (every item's row is zero, so the adapter sees "
                f"one constant input); load it first with model.set_item_features(text=<({self.num_items + 1}, "
                f"{self.text_dim}) tensor>), or train with zoo.train on a dataset with item texts, which embeds them"
            )
        self._checked_table = key

    def forward(self, item_ids: Tensor, mask: Tensor, timestamps: Tensor | None = None) -> Tensor:
        if item_ids.shape != mask.shape:
            raise ValueError(f"llm_projector: item_ids {tuple(item_ids.shape)} and mask {tuple(mask.shape)} must match")
        if self.training:
            self._require_loaded_table()
        e = self.dropout(self._encode(item_ids * mask))
        return e * mask.unsqueeze(-1).to(e.dtype)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        return None

    def step(self, item_ids_t: Tensor, state: State, timestamps_t: Tensor | None = None) -> tuple[Tensor, State]:
        return self.dropout(self._encode(item_ids_t)), state
