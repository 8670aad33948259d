"""ConvRec's item encoder: item ID + attributes + calendar time context, with time intervals."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.blocks.base import ItemEncoderBlock, State
from zoo.blocks.compiled import tracing
from zoo.blocks.dropout import HashDropout
from zoo.blocks.norms import create_norm
from zoo.blocks.llm_projector import item_feature_table, reject_unused_features
from zoo.registry import register_block

SECONDS_PER_DAY = 86400
NUM_CONTEXT = 6  # year, month, day, day of week, day of year, week of month
NUM_INTERVALS = 3  # differences of the normalised (year, month, day)
_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
FIRST_SECOND, LAST_SECOND = -62135596800, 253402300799  # 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z


def calendar_fields(timestamps: Tensor) -> Tensor:
    """Unix seconds (UTC) ``(...)`` -> integer ``(..., 6)``: year, month 1-12, day 1-31, day of week
    (Monday = 0, as pandas' ``dayofweek``), day of year 1-366, week of month ``(day - 1) // 7 + 1``.

    Proleptic Gregorian calendar; the civil date is computed from the day count with the era-based
    algorithm (400-year eras of 146 097 days, years starting on 1 March).
    """
    days = torch.div(timestamps, SECONDS_PER_DAY, rounding_mode="floor").long()
    shifted = days + 719468  # days since 0000-03-01
    era = torch.div(shifted, 146097, rounding_mode="floor")
    day_of_era = shifted - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524 - day_of_era // 146096) // 365
    day_of_march_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_march_year + 2) // 153  # 0 = March
    day = day_of_march_year - (153 * month_index + 2) // 5 + 1
    month = torch.where(month_index < 10, month_index + 3, month_index - 9)
    year = year_of_era + era * 400 + (month <= 2).long()
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    before = torch.tensor(_DAYS_BEFORE_MONTH, device=days.device)[month - 1]
    day_of_year = before + day + (leap & (month > 2)).long()
    day_of_week = (days + 3) % 7  # 1970-01-01 was a Thursday
    week = (day - 1) // 7 + 1
    return torch.stack([year, month, day, day_of_week, day_of_year, week], -1)


def check_calendar_seconds(timestamps: Tensor) -> None:
    """Refuse timestamps that have no calendar date: NaN, infinite, or outside the years 1..9999 (milliseconds
    or microseconds given for seconds land there). Read them where the item is real: pads are zeroed first."""
    outside = ~((timestamps >= FIRST_SECOND) & (timestamps <= LAST_SECOND))  # NaN compares False
    if outside.any():
        where = tuple(outside.nonzero()[0].tolist())
        value = float(timestamps[where])
        hint = " (milliseconds? divide by 1000)" if math.isfinite(value) and value > LAST_SECOND else ""
        raise ValueError(f"attribute_context: timestamps{list(where)} is {value}: timestamps must be finite Unix "
                         f"seconds of a date in the years 1..9999, {FIRST_SECOND}..{LAST_SECOND}{hint}")


def calendar_context(timestamps: Tensor, year_range: tuple[int, int]) -> Tensor:
    """ConvRec's 6 normalised calendar features (docs/models/convrec.md, "Calendar context"): ``[(year - y0) / (y1 - y0), month / 12,
    day / 31, dayofweek / 7, dayofyear / 365, week / 4]`` as float32 ``(..., 6)``.

    The code min-max normalises the year over the dataset; here the range ``(y0, y1)`` is fixed by the
    recipe so no dataset statistics are needed.
    """
    fields = calendar_fields(timestamps).to(torch.float32)
    start, end = year_range
    scale = torch.tensor([end - start, 12, 31, 7, 365, 4], dtype=torch.float32, device=fields.device)
    offset = torch.tensor([start, 0, 0, 0, 0, 0], dtype=torch.float32, device=fields.device)
    return (fields - offset) / scale


def known_item_count(num_known_items: int | float | None, num_items: int) -> int | None:
    """K of the frequent-item ID trick: an int is K itself, a float in (0, 1) the share of the ``num_items`` items."""
    if num_known_items is None:
        return None
    if isinstance(num_known_items, float):
        if not 0.0 < num_known_items < 1.0:
            raise ValueError(f"attribute_context: a float num_known_items is a share of the items, in (0, 1); got "
                             f"{num_known_items} (write an int for a count of items)")
        return max(1, int(num_known_items * num_items))
    if not 1 <= num_known_items <= num_items:
        raise ValueError(f"attribute_context: num_known_items must be in [1, num_items={num_items}], got {num_known_items}")
    return num_known_items


def packed_rows(mask: Tensor, sizes: int = 8) -> tuple[Tensor, int]:
    """Flat indices of ``mask``'s real positions, then of some pads up to the next of ``sizes`` equal steps of
    the whole grid, and how many are real. Encoding only the real positions saves the pads' work, but a new
    row count every batch fragmented glibc's heap (ConvRec's peak memory rose from 1.2 to over 3 GB in 80
    epochs); rounding the count to a few sizes lets the allocator reuse its blocks."""
    flat = mask.flatten()
    real = flat.nonzero().squeeze(1)
    step = -(-flat.numel() // sizes)
    count = min(flat.numel(), -(-len(real) // step) * step)
    pads = (~flat).nonzero().squeeze(1)[: count - len(real)]
    return torch.cat([real, pads]), len(real)


@register_block("attribute_context", aliases=("convrec_encoder",))
class AttributeContextEncoder(ItemEncoderBlock):
    """ConvRec's item encoder (ConvRec §4.1 Eqs. 1-7; code ``ConvItemEncoder``, docs/models/convrec.md, "Item encoder").

    For item ``i`` at time ``τ`` with attributes ``f_i`` (multi-hot or dense) and calendar context
    ``c_τ`` (:func:`calendar_context`)::

        a   = Dropout(W_ac [W_f f_i + b_f ; W_c c_τ + b_c] + b_ac)     W_f: F -> 4D, W_c: 6 -> D, W_ac: 5D -> 4D
        v   = W_v [E[id(i)] ; a] + b_v                                 W_v: 5D -> D
        out = GELU(W_in Norm(Dropout(GELU([v ; Δ_τ]))) + b_in)        W_in: D+3 -> D   (Eqs. 5-7)

    * ``Δ_τ`` (``intervals=True``) = difference of the normalised (year, month, day) to the previous
      real item. For the first real item the paper sets 0 (``first_interval="zero"``, default); the code
      uses 1 (``"one"``) for a full window, but for a padded sequence takes the difference to the zero
      context of the pad -- that quirk depends on the padding and is not reproduced. ``intervals=False``
      is the "w/o Intervals" ablation (ConvRec Table 4): ``[v]`` alone (width D) goes through the same
      GELU/Dropout/Norm/Linear/GELU.
    * Frequent-item ID trick (ProxyRCA; ConvRec §4.1): with ``num_known_items = K`` only the K most
      frequent items keep their own ID embedding; all others share row K+1. A float in (0, 1) is a share
      of the catalogue, ``K = max(1, floor(share * num_items))``, as ProxyRCA's ``num_known_item``. The
      frequency order comes from ``set_item_features(item_counts=...)`` (the trainer passes the training
      split's counts) and is kept in the ``id_rows`` buffer, so a saved model keeps it; until it is given,
      item ids are assumed to be numbered by decreasing frequency already (id 1 the most frequent).
    * Attributes are a frozen buffer ``(num_items + 1, num_attributes)`` set with
      ``set_item_features(attributes=...)`` (row 0 zero; zeros until set; part of the checkpoint).
    * ``timestamps=None`` gives a zero context (and zero intervals). :meth:`item_table` encodes every item
      with a zero context and ``Δ = 0`` (the code's candidate path uses ``Δ`` = target time minus the last
      history time, which a context-free table cannot know) and without the history dropout.
    * ``norm``: the code's ``LayerNormC`` or torch's LayerNorm. Padded positions output zero and are not
      computed: outside a tracer only the real positions go through Eqs. 1-7 (ConvRec's random prefix cuts
      leave about 40% of a training batch padding on ml-100k). No custom
      init (PyTorch defaults, as the code: the ID embedding is N(0, 1)).
    """

    causal = True
    streaming = True
    item_features: ClassVar[tuple[str, ...]] = ("attributes", "item_counts")
    contract_variants = (
        {"intervals": False, "num_known_items": 5, "norm": "layernorm"},
        {"num_known_items": 0.5},
        {"first_interval": "one", "num_attributes": 3, "dropout": 0.1},
    )

    def __init__(
        self,
        d_model: int,
        num_items: int,
        num_attributes: int = 19,
        intervals: bool = True,
        first_interval: Literal["zero", "one"] = "zero",
        num_known_items: int | float | None = None,
        dropout: float = 0.0,
        year_range: tuple[int, int] = (1990, 2030),
        norm: Literal["layernorm_c", "layernorm"] = "layernorm_c",
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"attribute_context: num_items must be >= 1, got {num_items}")
        if num_attributes < 1:
            raise ValueError(f"attribute_context: num_attributes must be >= 1, got {num_attributes}")
        num_known_items = known_item_count(num_known_items, num_items)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attribute_context: dropout must be in [0, 1), got {dropout}")
        if len(year_range) != 2 or year_range[1] <= year_range[0]:
            raise ValueError(f"attribute_context: year_range must be (first, last) with last > first, got {year_range}")
        self.num_items, self.num_attributes = num_items, num_attributes
        self.num_known_items = num_known_items
        self.intervals, self.first_interval = intervals, first_interval
        self.year_range = (int(year_range[0]), int(year_range[1]))
        self.register_buffer("attributes", torch.zeros(num_items + 1, num_attributes))
        self.register_buffer("id_rows", self._rows_by_rank(torch.arange(num_items + 1)))
        width = 4 * d_model
        self.features_encoder = nn.Linear(num_attributes, width)
        self.context_encoder = nn.Linear(NUM_CONTEXT, d_model)
        self.combine_encoder = nn.Linear(width + d_model, width)
        rows = num_items + 1 if num_known_items is None else num_known_items + 2
        self.id_embedding = nn.Embedding(rows, d_model, padding_idx=0)
        self.item_encoder = nn.Linear(d_model + width, d_model)
        extra = NUM_INTERVALS if intervals else 0
        self.norm = create_norm(norm, d_model + extra)
        self.in_linear = nn.Linear(d_model + extra, d_model)
        self.dropout = HashDropout(dropout)

    def _rows_by_rank(self, rank: Tensor) -> Tensor:
        """Embedding row of each item from its frequency rank (1 = most frequent; 0 = padding)."""
        if self.num_known_items is None:
            return rank
        return torch.where(rank > self.num_known_items, torch.full_like(rank, self.num_known_items + 1), rank)

    def set_item_features(
        self, *, text: Tensor | None = None, attributes: Tensor | None = None, item_counts: Tensor | None = None
    ) -> None:
        """Load ``attributes (num_items + 1, num_attributes)`` and/or ``item_counts (num_items + 1,)``.

        ``item_counts`` (interactions per item; entry 0 ignored) ranks items by decreasing count, ties by
        smaller id, for the frequent-item ID trick; it needs ``num_known_items``.
        """
        who = "attribute_context"
        reject_unused_features(who, self.item_features, text=text, attributes=attributes, item_counts=item_counts)
        if attributes is None and item_counts is None:
            raise ValueError(f"{who}: pass attributes=(num_items + 1, {self.num_attributes}) and/or item_counts=(num_items + 1,)")
        if attributes is not None:
            self.attributes.copy_(item_feature_table(who, "attributes", attributes, self.num_items, self.num_attributes))
        if item_counts is not None:
            if self.num_known_items is None:
                raise ValueError(f"{who}: item_counts only matter with num_known_items set (the frequent-item ID trick)")
            counts = item_feature_table(who, "item_counts", item_counts, self.num_items, None)
            order = torch.sort(-counts[1:], stable=True).indices + 1
            rank = torch.zeros(self.num_items + 1, dtype=torch.long)
            rank[order] = torch.arange(1, self.num_items + 1)
            self.id_rows.copy_(self._rows_by_rank(rank))

    def _context(self, timestamps: Tensor | None, shape: torch.Size, device: torch.device) -> Tensor:
        if timestamps is None:
            return torch.zeros(*shape, NUM_CONTEXT, device=device)
        if timestamps.shape != shape:
            raise ValueError(f"attribute_context: timestamps {tuple(timestamps.shape)} must match item_ids {tuple(shape)}")
        if not tracing():  # reads the values; an exported model's caller guarantees them (zoo.export)
            check_calendar_seconds(timestamps)
        return calendar_context(timestamps, self.year_range)

    def _first_interval(self, like: Tensor) -> Tensor:
        return torch.full_like(like, 1.0 if self.first_interval == "one" else 0.0)

    def _side_map(self) -> tuple[Tensor, Tensor]:
        """Weight ``(4D, A + 6)`` and bias of ``a = W_ac [W_f f + b_f ; W_c c + b_c] + b_ac`` (Eqs. 2-4) as one map
        of ``[f ; c]``: the three products are linear with nothing between them, so they compose exactly, and a
        position then costs ``4D (A + 6)`` multiplications instead of ``4D (5D + A + 6)``."""
        width = self.features_encoder.out_features
        to_features, to_context = self.combine_encoder.weight.split([width, self.context_encoder.out_features], 1)
        weight = torch.cat([to_features @ self.features_encoder.weight, to_context @ self.context_encoder.weight], 1)
        bias = to_features @ self.features_encoder.bias + to_context @ self.context_encoder.bias + self.combine_encoder.bias
        return weight, bias

    def _embed(self, item_ids: Tensor, context: Tensor) -> Tensor:
        """Eqs. 1-4: ``v = W_v [E[id] ; Dropout(a)]`` with ``a`` from :meth:`_side_map`.

        Without dropout (evaluation) ``W_v``'s side half composes with the side map as well. ``W_v``'s ID half
        maps whichever is fewer, the positions' embeddings or the embedding table (then each position reads its
        row): the same products either way."""
        weight, bias = self._side_map()
        to_id, to_side = self.item_encoder.weight.split([self.id_embedding.embedding_dim, weight.shape[0]], 1)
        rows = self.id_rows[item_ids]
        if not tracing() and rows.numel() < self.id_embedding.num_embeddings:  # a streaming step, a short batch
            id_part = F.linear(self.id_embedding(rows), to_id, self.item_encoder.bias)
        else:
            id_part = F.embedding(rows, F.linear(self.id_embedding.weight, to_id, self.item_encoder.bias))
        inputs = torch.cat([self.attributes[item_ids], context.to(self.attributes.dtype)], -1)
        if self.training and self.dropout.p > 0:
            return id_part + F.linear(self.dropout(F.linear(inputs, weight, bias)), to_side)
        return id_part + F.linear(inputs, to_side @ weight, to_side @ bias)

    def _finish(self, v: Tensor, intervals: Tensor, dropout: bool) -> Tensor:
        """Eqs. 5-7: ``GELU(W_in Norm(Dropout(GELU([v ; Δ]))))``."""
        if self.intervals:
            v = torch.cat([v, intervals], -1)
        v = F.gelu(v)
        if dropout:
            v = self.dropout(v)
        return F.gelu(self.in_linear(self.norm(v)))

    def forward(self, item_ids: Tensor, mask: Tensor, timestamps: Tensor | None = None) -> Tensor:
        if item_ids.dim() != 2 or item_ids.shape != mask.shape:
            raise ValueError(f"attribute_context: expected item_ids and mask (B, L), got {tuple(item_ids.shape)} and {tuple(mask.shape)}")
        weights = mask.unsqueeze(-1).to(torch.float32)
        if timestamps is not None and timestamps.shape == mask.shape:
            timestamps = torch.where(mask, timestamps, torch.zeros_like(timestamps))
        context = self._context(timestamps, item_ids.shape, item_ids.device) * weights
        dates = context[..., :NUM_INTERVALS]
        previous = F.pad(dates, (0, 0, 1, 0))[:, :-1]
        has_previous = (mask & F.pad(mask, (1, 0), value=False)[:, :-1]).unsqueeze(-1)
        intervals = torch.where(has_previous, dates - previous, self._first_interval(dates))
        item_ids = item_ids * mask
        if tracing() or bool(mask.all()):
            return self._encode(item_ids, context, intervals) * weights
        chosen, real = packed_rows(mask)
        rows = self._encode(item_ids.flatten()[chosen], context.flatten(0, 1)[chosen], intervals.flatten(0, 1)[chosen])
        out = rows.new_zeros(mask.numel(), rows.shape[-1]).index_copy(0, chosen[:real], rows[:real])
        return out.view(*mask.shape, -1)

    def _encode(self, item_ids: Tensor, context: Tensor, intervals: Tensor) -> Tensor:
        """Eqs. 1-7 for each position of any leading shape, history dropout on."""
        return self._finish(self._embed(item_ids, context), intervals, dropout=True)

    def item_table(self) -> Tensor:
        ids = torch.arange(self.num_items + 1, device=self.attributes.device)
        v = self._embed(ids, torch.zeros(len(ids), NUM_CONTEXT, device=ids.device))
        table = self._finish(v, torch.zeros(len(ids), NUM_INTERVALS, device=ids.device), dropout=False)
        return torch.cat([torch.zeros_like(table[:1]), table[1:]], 0)

    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """The previous item's normalised (year, month, day) and whether there was one."""
        return torch.zeros(batch_size, NUM_INTERVALS, device=device), torch.zeros(batch_size, dtype=torch.bool, device=device)

    def step(self, item_ids_t: Tensor, state: State, timestamps_t: Tensor | None = None) -> tuple[Tensor, State]:
        previous, has_previous = state
        context = self._context(timestamps_t, item_ids_t.shape, item_ids_t.device)
        dates = context[..., :NUM_INTERVALS]
        intervals = torch.where(has_previous.unsqueeze(-1), dates - previous, self._first_interval(dates))
        y = self._encode(item_ids_t, context, intervals)
        return y, (dates, torch.ones_like(has_previous))
