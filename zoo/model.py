"""``SeqRecModel``: item encoder -> encoder -> readout -> head, with the API everything else uses."""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from zoo.blocks.base import State
from zoo.builder import BuildContext
from zoo.objectives import check_objective, mean_loss
from zoo.recipe import Recipe


class Recommendations(NamedTuple):
    """Top-k item indices ``(B, k)`` and their scores ``(B, k)``, best first; ``ids``: the same items as raw
    ids (one list of ``k`` strings per history) when the model carries an item vocabulary, else None."""

    items: Tensor
    scores: Tensor
    ids: list[list[str]] | None = None


class SeqRecModel(nn.Module):
    """A next-item recommender assembled from a :class:`~zoo.recipe.Recipe`.

    Inputs are item indices ``(B, L)`` left-padded with 0 (index 0 is padding; real items are
    ``1..num_items``). Sequences longer than ``max_len`` keep their most recent items.
    """

    def __init__(self, recipe: Recipe, num_items: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.recipe = recipe
        self.num_items = num_items
        self.max_len = recipe.max_len
        context = BuildContext(recipe.d_model, num_items, recipe.max_len)
        self.item_encoder = context.block(recipe.item_encoder)
        self.encoder = context.layers(recipe.encoder)
        self.readout = context.block(recipe.readout)
        self.head = context.block(recipe.head)
        self.register_buffer("_all_items", torch.arange(num_items + 1), persistent=False)
        if recipe.init != "blocks":
            self.apply(INITIALISATIONS[recipe.init])
        # Raw item ids of indices 1..num_items (a zoo.data.vocab.Vocabulary), set by training or loading.
        self.item_vocab: Any = None
        try:
            check_objective(self, recipe.train.objective)
        except ValueError as error:
            raise ValueError(f"recipe {recipe.name!r}: train.objective {recipe.train.objective!r} cannot train this model: "
                             f"{error}") from None

    # ------------------------------------------------------------------ properties

    @property
    def causal(self) -> bool:
        """True when the state at every position depends only on the items up to it."""
        return bool(self.item_encoder.causal and self.encoder.causal)

    @property
    def trains_every_prefix(self) -> bool:
        """True when one pass gives, at every position, the user vector of the history up to it (objective
        ``all``, :meth:`prefix_users`): causal models read out at each position, models whose look-ahead blocks
        offer an exact ``forward_prefixes``, and causal encoders whose whole-sequence readout offers one."""
        if not (self.item_encoder.causal and self.readout.offers_prefixes()):
            return False
        return bool(self.encoder.offers_prefixes() if self.readout.positionwise else self.encoder.causal)

    @property
    def reads_pads(self) -> bool:
        """True when an encoder block reads padded slots (``pad_slots: read``, the released SIGMA code's
        way): every batch is then left-padded to ``max_len`` before encoding, as RecBole pads every batch to
        ``MAX_ITEM_LIST_LENGTH``, so the padded slots such a block reads are always there (for the every-prefix
        pass, ``max_len`` padded slots more, :meth:`encode`)."""
        return any(getattr(module, "reads_pads", False) for module in self.encoder.modules())

    @property
    def supports_streaming(self) -> bool:
        """True when ``init_state`` / ``step`` give O(1)-per-interaction updates equal to ``score``."""
        return bool(self.item_encoder.streaming and self.encoder.streaming and self.readout.positionwise)

    # ------------------------------------------------------------------ input checks

    def _check_ids(self, item_ids: Any, timestamps: Any) -> tuple[Tensor, Tensor | None]:
        """``item_ids`` (and ``timestamps``) checked, as int64, and cut to the newest ``max_len`` positions."""
        if not isinstance(item_ids, Tensor):
            raise ValueError(f"item_ids must be a torch.LongTensor of shape (B, L), got {type(item_ids).__name__}")
        if item_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"item_ids must hold integer item indices (torch.long), got dtype {item_ids.dtype}")
        if item_ids.dim() != 2:
            raise ValueError(f"item_ids must have shape (B, L), got {tuple(item_ids.shape)}")
        if item_ids.numel() == 0:
            raise ValueError(f"item_ids is empty: shape {tuple(item_ids.shape)}")
        outside = ((item_ids < 0) | (item_ids > self.num_items)).nonzero()
        if len(outside):
            row, column = outside[0].tolist()
            raise ValueError(f"item index {int(item_ids[row, column])} at item_ids[{row}, {column}] is out of range: "
                             f"expected 0 (padding) or 1..{self.num_items}")
        item_ids = item_ids.long()
        if timestamps is not None:
            check_timestamps(timestamps, item_ids, "timestamps")
        if item_ids.shape[1] > self.max_len:
            item_ids = item_ids[:, -self.max_len:]
            timestamps = None if timestamps is None else timestamps[:, -self.max_len:]
        mask = item_ids > 0
        empty = (~mask.any(1)).nonzero().flatten()
        if len(empty):
            raise ValueError(f"rows {empty.tolist()[:10]} have no items (an empty history cannot be scored)")
        misplaced = (mask[:, :-1] & ~mask[:, 1:]).any(1).nonzero().flatten()
        if len(misplaced):
            raise ValueError(f"rows {misplaced.tolist()[:10]} have padding (0) after a real item; pad on the left only")
        return item_ids, timestamps

    # ------------------------------------------------------------------ forward pieces

    def encode(self, item_ids: Tensor, timestamps: Tensor | None = None, newest_only: bool = False,
               every_prefix: bool = False) -> tuple[Tensor, Tensor]:
        """Per-position states ``(B, L, D)`` and the mask, for checked, truncated inputs.

        ``newest_only`` returns the newest position alone, ``(B, 1, D)`` and its mask: the encoder's
        last layers then run only there (``forward_last``). ``every_prefix`` gives at each position the
        state the history up to it would have at its newest item (``forward_prefixes``; the ordinary
        states for a causal encoder). A model that :attr:`reads_pads` encodes ``max_len`` slots, or for
        ``every_prefix`` ``max_len`` padded slots before the input, which its blocks read as the padded slots
        of each prefix; either way it returns the input's width."""
        width = item_ids.shape[1]
        if self.reads_pads and (every_prefix or width < self.max_len):
            padded = width + self.max_len if every_prefix else self.max_len
            item_ids = left_pad_to(item_ids, padded)
            timestamps = None if timestamps is None else left_pad_to(timestamps, padded)
        mask = item_ids > 0
        x = self.item_encoder(item_ids, mask, timestamps)
        if newest_only:
            return self.encoder.forward_last(x, mask), mask[:, -1:]
        if every_prefix and not self.encoder.causal:
            return self.encoder.forward_prefixes(x, mask)[:, -width:], mask[:, -width:]
        return self.encoder(x, mask)[:, -width:], mask[:, -width:]

    def prefix_users(self, item_ids: Tensor, timestamps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """User vectors ``(B, L, D)`` of every prefix of checked, truncated inputs and the mask: at position
        ``t`` the vector scoring the history up to ``t`` would read (:attr:`trains_every_prefix` models)."""
        hidden, mask = self.encode(item_ids, timestamps, every_prefix=True)
        return self.readout.forward_prefixes(hidden, mask), mask

    def item_logits(self, user: Tensor) -> Tensor:
        """Scores of every item for user vectors ``(N, D)``; column 0 (padding) is ``-inf``."""
        logits = self.head(user, self.item_encoder.item_table(), self._all_items)
        if torch.is_grad_enabled() or logits._base is not None:
            return logits.index_fill(-1, self._all_items[:1], float("-inf"))
        # Inference on a fresh tensor (not a view of anything): fill in place, no copy of (N, items) scores.
        return logits.index_fill_(-1, self._all_items[:1], float("-inf"))

    def score(self, item_ids: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """Scores ``(B, num_items + 1)`` of every item as the next one after each history.

        Under ``torch.autocast`` the encoder runs in the autocast dtype; the final item scores are
        always computed in fp32."""
        return self.score_unchecked(*self._check_ids(item_ids, timestamps))

    def score_unchecked(self, item_ids: Tensor, timestamps: Tensor | None = None) -> Tensor:
        """:meth:`score` without its input checks, for tracing and export (:mod:`zoo.export`): the checks
        read the values (data-dependent Python branches a tracer cannot follow). The caller guarantees
        what they would: ``item_ids`` int64 ``(B, L)`` with ``L <= max_len``, left-padded, each row with
        at least one item in ``1..num_items``, and finite ``timestamps`` of the same shape (or None)."""
        item_ids, timestamps = self._append_mask_token(item_ids, timestamps)
        hidden, mask = self.encode(item_ids, timestamps, newest_only=self.readout.newest_only)
        user = self.readout(hidden, mask)
        # Scores stay fp32 under autocast: bf16's 8-bit mantissa would tie many items' scores, and ranks
        # (ties are pessimistic) would then depend on rounding rather than on the model.
        with torch.autocast(user.device.type, enabled=False):
            return self.item_logits(user.float())

    def _append_mask_token(self, item_ids: Tensor, timestamps: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """A cloze model (item encoder with a ``[MASK]`` token) predicts the next item at a ``[MASK]``
        appended after the history (BERT4Rec, Sun et al. 2019 §3.6); at ``max_len`` the oldest item
        makes room, and with the item encoder's ``mask_displaces_oldest`` it always does (RecBole's
        BERT4Rec). Other models get their input unchanged."""
        token = getattr(self.item_encoder, "mask_token_id", None)
        if token is None:
            return item_ids, timestamps
        item_ids = torch.cat([item_ids, torch.full_like(item_ids[:, :1], token)], 1)
        if getattr(self.item_encoder, "mask_displaces_oldest", False):
            oldest = (item_ids > 0).long().argmax(1, keepdim=True)  # left padding: the first real slot
            item_ids = item_ids.scatter(1, oldest, 0)
        item_ids = item_ids[:, -self.max_len:]
        if timestamps is not None:
            timestamps = torch.cat([timestamps, timestamps[:, -1:]], 1)[:, -self.max_len:]
        return item_ids, timestamps

    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence[Sequence[int]] | Sequence[Sequence[str]],
        k: int = 10,
        timestamps: Sequence[Sequence[float]] | None = None,
        exclude_seen: bool = False,
    ) -> Recommendations:
        """Top-``k`` items for each history, best first: ``items`` and ``scores``, both ``(B, k)``, and
        ``ids``, the items' raw ids, when the model carries an item vocabulary (a trained folder does).

        ``histories`` are item indices, oldest first: lists of ints (numpy integers too) or 1-D
        integer tensors; or, for a model with a vocabulary, raw item ids as strings
        (``[["50", "172"]]``: strings are never indices, so the two cannot be confused; a history is
        all one or all the other, and an unknown raw id is an error naming it). Anything else is
        refused with a ``ValueError``: floats (also integer-valued ones such as ``2.0``), bools, float
        or bool tensors. Leading 0s are padding; a history longer than ``max_len`` is scored on its
        newest ``max_len`` items. ``timestamps`` (Unix seconds, one finite number per item) go to
        time-aware models.

        The padding index 0 is never returned. With ``exclude_seen=True`` no item of a history
        (all of it, also the part beyond ``max_len``) is returned for it; ``k`` must then not
        exceed any history's number of unseen items, else a ``ValueError`` says the largest ``k``
        the batch allows, so every row always holds ``k`` real, allowed items.
        """
        k = item_count(k, self.num_items)
        rows = history_rows(histories, self.num_items, self.item_vocab)
        times = None if timestamps is None else timestamp_rows(timestamps, rows)
        excluded = excluded_items(rows, self.num_items, exclude_seen)
        check_enough_candidates(excluded, k)
        device = self._all_items.device
        item_ids = left_pad([row[-self.max_len:] for row in rows], device=device, dtype=torch.long)
        ts = None if times is None else left_pad([t[-self.max_len:] for t in times], device=device, dtype=torch.float64)
        was_training = self.training
        self.eval()
        try:
            scores = self.score(item_ids, ts)
        finally:
            self.train(was_training)
        top = top_allowed(scores, excluded.to(scores.device), k)
        if self.item_vocab is None:
            return top
        return top._replace(ids=[self.item_vocab.decode(row) for row in top.items.cpu().numpy()])

    # ------------------------------------------------------------------ streaming

    def _require_streaming(self) -> None:
        if not self.supports_streaming:
            raise RuntimeError(
                f"model {self.recipe.name!r} does not support streaming: every block must be recurrent "
                "(causal with init_state/step) and the readout position-wise ('last')"
            )

    def init_state(self, batch_size: int) -> State:
        """Empty streaming state for ``batch_size`` users (an integer >= 1). A state too large for memory is a
        ``ValueError`` that says so, not an allocator error."""
        self._require_streaming()
        count = integer_id(batch_size)
        if count is None or count < 1:
            raise ValueError(f"init_state: batch_size must be an integer >= 1 (the number of users streamed), got {batch_size!r}")
        try:
            return self._empty_state(count, self._all_items.device)
        except (RuntimeError, MemoryError) as error:
            if not is_allocation_failure(error):
                raise
            raise ValueError(f"init_state({count:,}): the streaming state of {count:,} users does not fit in memory "
                             f"({str(error).splitlines()[0][:200]}); stream fewer users at a time") from None

    def _empty_state(self, batch_size: int, device: torch.device) -> State:
        """The state :meth:`init_state` returns, on ``device`` (``meta``: shapes only, nothing allocated)."""
        dtype = self.item_encoder.item_table().dtype
        return (
            self.item_encoder.init_state(batch_size, device, dtype),
            self.encoder.init_state(batch_size, device, dtype),
        )

    def _check_state(self, state: Any, batch_size: int) -> None:
        """Refuse a ``state`` that :meth:`init_state` (or :meth:`step`) did not make for this model and ``batch_size``
        users: its nesting and tensor shapes must be those of ``init_state(batch_size)`` (read on the meta
        device, once per batch size), so a state of another model or batch never reaches the blocks."""
        cached = getattr(self, "_state_layout", None)
        if cached is None or cached[0] != batch_size:
            try:
                empty = self._empty_state(batch_size, torch.device("meta"))
            except Exception:  # noqa: BLE001 -- a block whose init_state cannot run on meta: build it for real
                empty = self._empty_state(batch_size, self._all_items.device)
            cached = (batch_size, state_layout(empty))
            self._state_layout = cached
        problem = layout_difference(cached[1], state, "state")
        if problem is not None:
            raise ValueError(f"step: {problem}; pass the state that init_state({batch_size}) or the previous step returned "
                             f"for these {batch_size} users, with this model")

    def step(self, item_ids_t: Tensor, state: State, timestamps_t: Tensor | None = None) -> tuple[Tensor, State]:
        """Add one interaction per user ``(B,)``; returns the new scores ``(B, num_items + 1)`` and state."""
        self._require_streaming()
        if not isinstance(item_ids_t, Tensor):
            raise ValueError(f"item_ids_t must be a LongTensor of shape (B,), got {type(item_ids_t).__name__}")
        if item_ids_t.dim() != 1 or item_ids_t.dtype != torch.long or item_ids_t.numel() == 0:
            raise ValueError(f"item_ids_t must be a LongTensor of shape (B,) with B >= 1, got {item_ids_t.dtype} "
                             f"{tuple(item_ids_t.shape)}")
        if int(item_ids_t.min()) < 1 or int(item_ids_t.max()) > self.num_items:
            raise ValueError(f"streamed item indices must be in 1..{self.num_items}")
        self._check_state(state, len(item_ids_t))
        if timestamps_t is not None:
            check_timestamps(timestamps_t, item_ids_t, "timestamps_t")
        return self.step_unchecked(item_ids_t, state, timestamps_t)

    def step_unchecked(self, item_ids_t: Tensor, state: State, timestamps_t: Tensor | None = None) -> tuple[Tensor, State]:
        """:meth:`step` without its input checks, for tracing and export (:mod:`zoo.export`): the caller
        guarantees a streaming model, ``item_ids_t`` int64 ``(B,)`` in ``1..num_items`` and finite
        ``timestamps_t`` ``(B,)`` (or None)."""
        encoder_state, layers_state = state
        x_t, encoder_state = self.item_encoder.step(item_ids_t, encoder_state, timestamps_t)
        h_t, layers_state = self.encoder.step(x_t, layers_state)
        return self.item_logits(h_t), (encoder_state, layers_state)

    # ------------------------------------------------------------------ training

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean loss per target of a training batch, with the recipe's loss (``train.loss``).

        ``batch["item_ids"]`` (B, L) with ``batch["target"]`` (B,) scores the user vector of each
        history (objectives ``last`` / ``random_cut``); with ``batch["targets"]`` (B, L) (0 where
        there is no target) every position predicts its own next item (objective ``all``; models
        that :attr:`trains_every_prefix`); with ``batch["masked_targets"]`` (B, L) the
        masked positions predict their items (objective ``masked``). See :mod:`zoo.objectives`.
        """
        return mean_loss(self, batch)

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: SSM ``A_log`` / ``D`` / ``dt_bias``, norms, biases, 1-D tensors."""
        exempt = {"A_log", "D", "dt_bias"}
        names = set()
        for name, param in self.named_parameters():
            if param.dim() <= 1 or name.rsplit(".", 1)[-1] in exempt or getattr(param, "_no_weight_decay", False):
                names.add(name)
        return names

    def set_item_features(self, **features: Tensor) -> None:
        """Load item side information (``attributes=``, ``text=``, ...) into an item encoder that uses it."""
        setter = getattr(self.item_encoder, "set_item_features", None)
        if setter is None:
            raise ValueError(f"item encoder {self.recipe.item_encoder.block!r} uses no item features (got {sorted(features)})")
        setter(**features)

    # ------------------------------------------------------------------ raw item ids and saving

    def _vocabulary(self) -> Any:
        if self.item_vocab is None:
            raise RuntimeError(
                f"model {self.recipe.name!r} has no item vocabulary: set model.item_vocab (a zoo.data.vocab.Vocabulary) "
                "or load a trained folder with zoo.create('local-dir:DIR')"
            )
        return self.item_vocab

    def encode_items(self, raw_ids: Sequence[Any], unknown: Literal["error", "skip"] = "error") -> Tensor:
        """Item indices ``(N,)`` of raw item ids; unknown ids raise (``"error"``) or are dropped (``"skip"``)."""
        indices = self._vocabulary().encode(raw_ids, unknown=unknown)
        return torch.as_tensor(indices, dtype=torch.long, device=self._all_items.device)

    def decode_items(self, indices: Tensor | Sequence[int]) -> list[str]:
        """Raw item ids of item indices (a 1-D tensor or sequence)."""
        if isinstance(indices, Tensor):
            if indices.dim() > 1:
                raise ValueError(f"decode_items takes a 1-D tensor of indices, got shape {tuple(indices.shape)}; decode row by row")
            indices = indices.reshape(-1).tolist()
        return self._vocabulary().decode(indices)

    def save_pretrained(self, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
        """Write this model as a Hub folder; see :func:`zoo.hub.save_pretrained` for the arguments."""
        from zoo.hub import save_pretrained

        return save_pretrained(self, out_dir, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        dataset_facts: Any = None,
        metrics: dict[str, dict[str, float]] | None = None,
        card: dict[str, Any] | None = None,
        **push_options: Any,
    ) -> str:
        """Publish this model to the Hub as a trained folder; returns the commit URL (or, with ``dry_run=True``, the plan).

        The folder is written to a temporary directory by :meth:`save_pretrained` (``dataset_facts``,
        ``metrics`` and ``card`` as there; the item vocabulary comes from ``item_vocab``), then
        uploaded by :func:`zoo.upload.upload`, which takes ``push_options`` (``revision``,
        ``private``, ``token``, ``endpoint``, ``commit_message``, ``dry_run``). To publish a folder
        on disk, checking first that it loads, use :func:`zoo.publish.push_to_hub` or ``zoo push``.
        """
        import tempfile

        from zoo.upload import upload

        with tempfile.TemporaryDirectory(prefix="seqrec-zoo-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", dataset_facts=dataset_facts, metrics=metrics, card=card)
            return upload(folder, repo_id, **push_options)


def recbole_init(module: nn.Module) -> None:
    """RecBole's ``_init_weights``: Linear weights and Embeddings ~ N(0, 0.02), Linear biases 0.

    It also overwrites the special initialisation of layers inside blocks (Mamba's ``dt_proj``
    bias becomes 0), which the official Mamba4Rec and SIGMA code inherit (docs/models/mamba4rec.md, "RecBole initialisation").
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def recbole_gru4rec_init(module: nn.Module) -> None:
    """RecBole's GRU4Rec ``_init_weights``: Embeddings Xavier-normal, the first GRU layer's weights Xavier-uniform.

    Everything else keeps its own initialisation (RecBole leaves its ``dense`` layer and any deeper GRU
    layers at PyTorch's defaults, as the zoo's blocks do); ``recbole/model/sequential_recommender/gru4rec.py``.
    """
    if isinstance(module, nn.Embedding):
        nn.init.xavier_normal_(module.weight)
    elif isinstance(module, nn.GRU):
        nn.init.xavier_uniform_(module.weight_ih_l0)
        nn.init.xavier_uniform_(module.weight_hh_l0)


# The recipe's ``init`` rules applied after every block initialised itself (``blocks`` applies none).
INITIALISATIONS = {"recbole": recbole_init, "recbole_gru4rec": recbole_gru4rec_init}


def left_pad_to(values: Tensor, width: int) -> Tensor:
    """``values (B, L)`` left-padded with 0 to ``(B, width)`` (``width >= L``)."""
    return torch.nn.functional.pad(values, (width - values.shape[1], 0))


def left_pad(rows: Sequence[Sequence[float]], device: torch.device | None = None, dtype: torch.dtype = torch.long) -> Tensor:
    """Stack variable-length rows into ``(B, max length)``, padding with 0 on the left."""
    width = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), width, dtype=dtype, device=device)
    for i, row in enumerate(rows):
        if len(row):
            out[i, width - len(row):] = torch.as_tensor(row, dtype=dtype, device=device)
    return out


def check_timestamps(timestamps: Any, item_ids: Tensor, name: str) -> None:
    """Refuse ``timestamps`` that are not a real-valued tensor shaped like ``item_ids`` or that are NaN or
    infinite at a real item (padded positions are never read)."""
    if not isinstance(timestamps, Tensor) or timestamps.shape != item_ids.shape:
        shape = tuple(timestamps.shape) if isinstance(timestamps, Tensor) else type(timestamps).__name__
        raise ValueError(f"{name} must be a tensor shaped like the item ids {tuple(item_ids.shape)}, got {shape}")
    if timestamps.dtype == torch.bool or timestamps.is_complex():
        raise ValueError(f"{name} must hold Unix seconds (a float or integer tensor), got dtype {timestamps.dtype}")
    broken = (~torch.isfinite(timestamps) & (item_ids > 0)).nonzero()
    if len(broken):
        where = tuple(broken[0].tolist())
        raise ValueError(f"{name}{list(where)} is {float(timestamps[where])}: timestamps must be finite Unix seconds")


def is_allocation_failure(error: BaseException) -> bool:
    """True for a request for more memory than there is (``MemoryError``; torch's ``OutOfMemoryError``, or its
    ``RuntimeError`` from an allocator that could not serve a request or from a size past what it can count)."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or any(words in text for words in (
        "can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory", "size calculation overflowed"))


def state_layout(state: Any) -> Any:
    """What :meth:`SeqRecModel.step` checks of a streaming state: its nesting (tuples and lists) and each tensor's
    shape; other leaves (``None`` for position-wise blocks) are not compared."""
    if isinstance(state, Tensor):
        return tuple(state.shape)
    if isinstance(state, (tuple, list)):
        return [state_layout(part) for part in state]
    return None


def layout_difference(layout: Any, state: Any, where: str) -> str | None:
    """Where ``state`` departs from ``layout`` (:func:`state_layout`), as a message naming the place; None if it fits."""
    if isinstance(layout, tuple):
        if not isinstance(state, Tensor):
            return f"{where} should be a tensor of shape {layout}, got {type(state).__name__}"
        if tuple(state.shape) != layout:
            return f"{where} should have shape {layout}, got {tuple(state.shape)}"
        return None
    if isinstance(layout, list):
        if not isinstance(state, (tuple, list)) or len(state) != len(layout):
            shown = f"{len(state)} parts" if isinstance(state, (tuple, list)) else type(state).__name__
            return f"{where} should hold {len(layout)} parts, got {shown}"
        for index, (part_layout, part) in enumerate(zip(layout, state)):
            problem = layout_difference(part_layout, part, f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


def integer_id(value: Any) -> int | None:
    """``value`` as an int when it is an integer (Python, numpy or a one-element integer tensor), else None;
    bools and floats are not integers here, not even ``2.0``."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def item_count(k: Any, num_items: int) -> int:
    """``k`` of :meth:`SeqRecModel.recommend`, checked: an integer in ``1..num_items``."""
    count = integer_id(k)
    if count is None or not 1 <= count <= num_items:
        raise ValueError(f"k must be an integer in 1..{num_items}, got {k!r}")
    return count


def history_row(history: Any, index: int, vocab: Any = None) -> Tensor:
    """History ``index`` of :meth:`SeqRecModel.recommend` as a 1-D int64 CPU tensor: integer item indices, or
    raw ids (strings) looked up in ``vocab``; anything else raises (the range is checked by :func:`history_rows`)."""
    if isinstance(history, Tensor):
        if history.dim() != 1:
            raise ValueError(f"history {index} must be 1-D (item indices, oldest first), got shape {tuple(history.shape)}")
        if history.dtype == torch.bool or history.is_floating_point() or history.is_complex():
            raise ValueError(f"history {index} holds {history.dtype} values; item indices must be integers")
        return history.detach().long().cpu()
    if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
        raise ValueError(f"history {index} must be a sequence of item indices, got {type(history).__name__}")
    values = list(history)
    if any(isinstance(value, str) for value in values):
        return raw_id_row(values, index, vocab)
    ids = [integer_id(value) for value in values]
    if None in ids:
        position = ids.index(None)
        raise ValueError(f"history {index}, position {position}: {values[position]!r} is not an item index; item "
                         "indices are integers (floats, even whole ones such as 2.0, and bools are refused)")
    return torch.tensor(ids, dtype=torch.long)


def raw_id_row(values: list[Any], index: int, vocab: Any) -> Tensor:
    """A history of raw item ids (strings) as item indices through the model's vocabulary."""
    if vocab is None:
        raise ValueError(f"history {index} holds raw item ids (strings), but this model has no item vocabulary: pass "
                         "item indices (ints), or load a trained folder, which carries one")
    mixed = next((position for position, value in enumerate(values) if not isinstance(value, str)), None)
    if mixed is not None:
        raise ValueError(f"history {index}, position {mixed}: {values[mixed]!r} among raw item ids (strings); a history "
                         "is all raw ids or all item indices")
    try:
        return torch.as_tensor(vocab.encode(values), dtype=torch.long)
    except KeyError as error:
        raise ValueError(f"history {index}: {error.args[0]}; drop unknown items first, e.g. "
                         "model.encode_items(history, unknown='skip')") from None


def history_rows(histories: Any, num_items: int, vocab: Any = None) -> list[Tensor]:
    """The histories of :meth:`SeqRecModel.recommend`, checked whole (also beyond ``max_len``): at least one,
    none empty, integer ids in ``0..num_items`` (or raw ids known to ``vocab``), 0 (padding) only before the
    first real item."""
    zero_dimensional = isinstance(histories, Tensor) and histories.dim() == 0
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Iterable) or zero_dimensional:
        shown = "a 0-d tensor" if zero_dimensional else type(histories).__name__
        raise ValueError(f"histories must be a sequence of histories (lists of item ids), got {shown}")
    rows = [history_row(history, i, vocab) for i, history in enumerate(histories)]
    if not rows:
        raise ValueError("histories is empty: pass at least one history")
    for i, row in enumerate(rows):
        if not len(row):
            raise ValueError(f"history {i} is empty: a recommendation needs at least one item")
        outside = ((row < 0) | (row > num_items)).nonzero().flatten()
        if len(outside):
            position = int(outside[0])
            raise ValueError(f"history {i}, position {position}: item index {int(row[position])} is out of range: "
                             f"expected 0 (padding) or 1..{num_items}")
        real = row > 0
        misplaced = (~real & (real.cumsum(0) > 0)).nonzero().flatten()
        if len(misplaced):
            raise ValueError(f"history {i}, position {int(misplaced[0])}: padding (0) after a real item; 0 may only "
                             "lead a history (left padding)")
    return rows


def timestamp_rows(timestamps: Any, rows: list[Tensor]) -> list[Tensor]:
    """The timestamps of :meth:`SeqRecModel.recommend`: one finite number per item of each history."""
    if isinstance(timestamps, (str, bytes)) or not isinstance(timestamps, Iterable):
        raise ValueError(f"timestamps must be a sequence of rows of Unix seconds, got {type(timestamps).__name__}")
    times = []
    for i, row in enumerate(timestamps):
        try:
            times.append(torch.as_tensor(row, dtype=torch.float64).cpu().reshape(-1))
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"timestamps {i} must be a sequence of numbers (Unix seconds), got {row!r}") from None
    if len(times) != len(rows):
        raise ValueError(f"timestamps has {len(times)} rows for {len(rows)} histories; give one row per history")
    for i, (row, ids) in enumerate(zip(times, rows)):
        if len(row) != len(ids):
            raise ValueError(f"timestamps {i} has {len(row)} values for the {len(ids)} items of history {i}")
        broken = (~torch.isfinite(row)).nonzero().flatten()
        if len(broken):
            position = int(broken[0])
            raise ValueError(f"timestamps {i}, position {position}: {float(row[position])} is not a finite "
                             "Unix time in seconds")
    return times


def excluded_items(rows: list[Tensor], num_items: int, exclude_seen: bool) -> Tensor:
    """``(B, num_items + 1)`` bool: True at what :meth:`SeqRecModel.recommend` must never return, the padding
    column and, with ``exclude_seen``, every item of each (untruncated) history."""
    excluded = torch.zeros(len(rows), num_items + 1, dtype=torch.bool)
    excluded[:, 0] = True
    if exclude_seen:
        owners = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(row) for row in rows]))
        excluded[owners, torch.cat(rows)] = True
    return excluded


def check_enough_candidates(excluded: Tensor, k: int) -> None:
    """Refuse a ``k`` larger than some row's number of allowed items (see :func:`excluded_items`)."""
    allowed = (~excluded).sum(1)
    short = (allowed < k).nonzero().flatten()
    if len(short):
        row = int(short[0])
        raise ValueError(f"k={k} but history {row} leaves only {int(allowed[row])} unseen items of "
                         f"{excluded.shape[1] - 1} to recommend (exclude_seen=True); use k <= {int(allowed.min())} "
                         "for these histories, or recommend for them one by one")


def top_allowed(scores: Tensor, excluded: Tensor, k: int) -> Recommendations:
    """The ``k`` best-scoring items of each row that are not ``excluded``, as :class:`Recommendations`.

    An allowed item always ranks above an excluded one, even at a score of ``-inf``; NaN scores raise."""
    broken = torch.isnan(scores).any(1).nonzero().flatten()
    if len(broken):
        raise RuntimeError(f"the model gave NaN scores for histories {broken.tolist()[:10]}; its weights or "
                           "inputs are broken")
    key = scores.clamp(min=torch.finfo(scores.dtype).min).masked_fill_(excluded, float("-inf"))
    items = key.topk(k, dim=-1).indices
    return Recommendations(items, scores.gather(1, items))
