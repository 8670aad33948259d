"""Training objectives: how training samples are cut from the training sequences, and the losses.

Sample sets (one per objective; each builds whole batches with vectorised numpy gathers, and
draws every random choice of a batch from the ``numpy.random.Generator`` it is handed, so a
batch is a pure function of its sample indices and that generator):

- ``last`` -- :class:`LastItemSamples`: every prefix of every training sequence is a sample
  predicting its next item (RecBole's data augmentation). Works for every model, and is the
  only objective for bidirectional models and readouts that pool the whole sequence.
- ``all`` -- :class:`AllPositionSamples`: windows of ``max_len`` targets that together cover
  every training target once; a window's input is ``seq[i-1]`` for its targets ``seq[i]``, so
  position ``t`` predicts the item after it (SASRec / GRU4Rec training; causal models with a
  position-wise readout only). The newest window ends at the user's last item; older windows
  follow back in steps of ``max_len`` (``windows="recent"`` keeps only the newest, like the
  original SASRec). ``window_step`` < ``max_len`` makes windows overlap so that targets keep
  a long history: each window trains only its newest ``window_step`` targets. ``window_shift``
  moves each user's grid of windows by a random amount every epoch, so a target's history
  length changes from epoch to epoch.
- ``masked`` -- :class:`MaskedItemSamples`: BERT4Rec's cloze task (Sun et al., CIKM 2019, §3.6):
  windows of up to ``max_len`` items covering every training sequence; each real item is
  replaced by the ``[MASK]`` token with probability ``mask_prob`` and predicted from both
  sides; with probability ``mask_last_prob`` a window instead masks only its last item (the
  paper's extra samples that match prediction, where ``[MASK]`` follows the history). A
  window with nothing masked masks its last item.
- ``random_cut`` -- :class:`RandomCutSamples`: one sample per user (>= 2 training items) per
  epoch: the sequence is cut at a uniform random end ``c`` in ``2..n``, item ``c`` is the
  target and up to ``max_len`` items before it the history (ConvRec / ProxyRCA; docs/models/convrec.md, "Training").
  The cuts are drawn from ``(seed, epoch)``.

Batches hold ``item_ids`` / ``timestamps`` ``(B, L)`` and either ``target`` ``(B,)`` (one
user vector per row, the model's readout) or ``targets`` ``(B, L)`` (objective ``all``) or
``masked_targets`` ``(B, L)`` (objective ``masked``), with 0 where a position has no target.
Losses with negatives also get ``negatives`` ``(B, K)`` or ``(B, L, K)``.

Losses (:func:`loss_terms` returns the *sum* over targets and the number of targets, so data-
parallel workers can divide by the global count and get exactly the single-process gradient):

- ``ce`` -- full-softmax cross-entropy over all items (padding excluded);
- ``sampled_softmax`` -- cross-entropy over the positive and ``K`` sampled negatives;
- ``bce`` -- binary cross-entropy, the positive labelled 1 and each negative 0, summed over
  the ``1 + K`` candidates of a target (SASRec's loss with ``K = 1``; ConvRec Eq. 15 with 100).

Negatives (``train.negatives``):

- ``uniform`` -- drawn uniformly from ``1..num_items`` excluding the positive (with replacement
  across the ``K`` draws), by drawing from ``num_items - 1`` values and shifting those at or
  above the positive up by one;
- ``unseen`` -- ``K`` distinct items drawn uniformly from the items outside the user's training
  sequence (ConvRec §4.3: negatives exclude the items in the user's sequence), which contains the
  positive (:class:`ItemSets`). The trainer knows each sample's user; a batch handed to
  :func:`loss_terms` without negatives excludes the items its own row shows (history and targets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.data.batching import NextItemSamples, gather_windows
from zoo.data.sequences import Sequences
from zoo.recipe import TrainConfig

if TYPE_CHECKING:
    from zoo.model import SeqRecModel

TARGET_KEYS = ("target", "targets", "masked_targets")
# Sampled losses score the whole item table and pick the candidates when it has at most this many rows per
# candidate (see candidate_scores).
WHOLE_TABLE_PER_CANDIDATE = 64


# ---------------------------------------------------------------------------- sample sets


def covering_windows(row_starts: np.ndarray, row_ends: np.ndarray, width: int, newest_only: bool = False,
                     newest_width: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows ``[start, end)`` of at most ``width`` positions covering each range ``[row_starts[u], row_ends[u])``.

    The first window of a range ends at its end and spans ``newest_width[u]`` positions (``width``
    when not given); the next ones step back by ``width``. Empty ranges give no window. Returns
    ``(rows, starts, ends)``, each range's windows newest first.
    """
    row_starts, row_ends = np.asarray(row_starts, np.int64), np.asarray(row_ends, np.int64)
    first_width = np.full(len(row_ends), width, np.int64) if newest_width is None else np.asarray(newest_width, np.int64)
    lengths = np.maximum(row_ends - row_starts, 0)
    older = 0 if newest_only else -(-np.maximum(lengths - first_width, 0) // width)
    counts = np.minimum(lengths, 1) * (1 + older)
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)
    newest = k == 0
    ends = row_ends[rows] - np.where(newest, 0, first_width[rows] + (k - 1) * width)
    starts = np.maximum(row_starts[rows], ends - np.where(newest, first_width[rows], width))
    return rows, starts, ends


class TrainingSamples:
    """Base class: a set of training samples for one epoch, batched by sample indices."""

    max_len: int

    def epoch_size(self, epoch: int) -> int:
        """Number of samples in ``epoch``."""
        raise NotImplementedError

    def batch(self, indices: np.ndarray, epoch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        """The batch of samples ``indices`` of ``epoch`` (random choices drawn from ``rng``)."""
        raise NotImplementedError

    def users(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        """The user (row of the training sequences) of each of the samples ``indices`` of ``epoch``."""
        raise NotImplementedError


class LastItemSamples(TrainingSamples):
    """Objective ``last``: every prefix of every training sequence -> its next item."""

    def __init__(self, train: Sequences, max_len: int) -> None:
        self.samples = NextItemSamples.every_prefix(train, max_len)
        self.max_len = max_len

    def epoch_size(self, epoch: int) -> int:
        return len(self.samples)

    def batch(self, indices: np.ndarray, epoch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        out = self.samples.batch(indices)
        return {"item_ids": out["item_ids"], "timestamps": out["timestamps"], "target": out["target"]}

    def users(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        return self.samples.rows[indices]


class AllPositionSamples(TrainingSamples):
    """Objective ``all``: windows of inputs ``seq[i-1]`` -> targets ``seq[i]`` covering every training target.

    With ``step < max_len`` the windows overlap: each still holds ``max_len`` inputs but trains
    only its newest ``step`` targets, so every target sees at least ``max_len - step`` items of
    history when the user has them (``step=1`` is every prefix, as objective ``last``). A user's
    oldest ``max_len`` targets need no overlap and share one window.

    With ``shift=True`` each user's newest window trains a number of targets drawn uniformly
    from ``1..step`` every epoch (from ``(seed, epoch)``), and the older windows follow back from
    it in steps of ``step``: the grid moves between epochs, so a target is trained with a
    different amount of history each epoch instead of always the same one, and the number of
    windows (the epoch's size) varies a little.
    """

    def __init__(self, train: Sequences, max_len: int, windows: Literal["cover", "recent"] = "cover",
                 step: int | None = None, shift: bool = False, seed: int = 0) -> None:
        step = max_len if step is None else step
        if not 1 <= step <= max_len:
            raise ValueError(f"window step must be in 1..max_len={max_len}, got {step}")
        if shift and windows == "recent":
            raise ValueError("window_shift moves the grid of windows covering each sequence; "
                             "it needs windows='cover', not 'recent' (one window per user); "
                             "set train.window_shift=false to train on the newest window only")
        self.sequences, self.max_len, self.windows, self.step = train, max_len, windows, step
        self.shift, self.seed = shift, seed
        # Targets are every item but each user's first.
        self.target_starts = np.minimum(train.offsets[:-1] + 1, train.offsets[1:])
        self._cached: tuple[int, tuple[np.ndarray, ...]] | None = None  # (grid's epoch, its windows)

    def _cut(self, newest_width: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """``(starts, ends, first_target)`` of every window, given each user's newest window width."""
        rows, starts, ends = covering_windows(self.target_starts, self.sequences.offsets[1:], self.step,
                                              self.windows == "recent", newest_width)
        # Windows ending within max_len of the first target: keep the newest one, training from the first target.
        first_target = self.target_starts[rows]
        oldest = ends <= first_target + self.max_len
        newer_also_oldest = np.concatenate([[False], oldest[:-1] & (rows[:-1] == rows[1:])])
        keep = ~(oldest & newer_also_oldest)
        starts = np.where(oldest & (self.windows == "cover"), first_target, starts)
        return starts[keep], ends[keep], first_target[keep]

    def windows_of(self, epoch: int) -> tuple[np.ndarray, ...]:
        """``(starts, ends, first_target)`` of the windows of ``epoch``."""
        grid = epoch if self.shift else 0  # without shift every epoch has epoch 0's windows
        if self._cached is None or self._cached[0] != grid:
            users = len(self.target_starts)
            newest = (np.random.default_rng([self.seed, epoch, 0xA11]).integers(1, self.step + 1, size=users)
                      if self.shift else None)
            self._cached = (grid, self._cut(newest))
        return self._cached[1]

    def epoch_size(self, epoch: int) -> int:
        return len(self.windows_of(epoch)[0])

    def batch(self, indices: np.ndarray, epoch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        starts, ends, first_target = (column[indices] for column in self.windows_of(epoch))
        seqs = self.sequences
        items = gather_windows(seqs.items, first_target - 1, ends - 1, self.max_len).astype(np.int64)
        times = gather_windows(seqs.timestamps, first_target - 1, ends - 1, self.max_len, fill=0.0).astype(np.float64)
        targets = gather_windows(seqs.items, starts, ends, self.max_len).astype(np.int64)
        return {"item_ids": torch.from_numpy(items), "timestamps": torch.from_numpy(times), "targets": torch.from_numpy(targets)}

    def users(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        first_target = self.windows_of(epoch)[2][indices]
        return np.searchsorted(self.sequences.offsets, first_target, side="right") - 1


class MaskedItemSamples(TrainingSamples):
    """Objective ``masked``: BERT4Rec cloze windows (see the module docstring)."""

    def __init__(self, train: Sequences, max_len: int, mask_token: int, mask_prob: float, mask_last_prob: float,
                 windows: Literal["cover", "recent"] = "cover") -> None:
        self.sequences = train
        self.max_len = max_len
        self.mask_token = mask_token
        self.mask_prob = mask_prob
        self.mask_last_prob = mask_last_prob
        starts = np.where(train.lengths >= 2, train.offsets[:-1], train.offsets[1:])  # users with one item: nothing to learn
        self.rows, self.starts, self.ends = covering_windows(starts, train.offsets[1:], max_len, windows == "recent")

    def epoch_size(self, epoch: int) -> int:
        return len(self.rows)

    def batch(self, indices: np.ndarray, epoch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        starts, ends = self.starts[indices], self.ends[indices]
        seqs = self.sequences
        items = gather_windows(seqs.items, starts, ends, self.max_len).astype(np.int64)
        times = gather_windows(seqs.timestamps, starts, ends, self.max_len, fill=0.0).astype(np.float64)
        real = items > 0
        masked = (rng.random(items.shape) < self.mask_prob) & real
        last_only = rng.random(len(items)) < self.mask_last_prob
        masked[last_only] = False
        masked[:, -1] |= last_only | ~masked.any(1)  # the last column is always a real item (left padding)
        return {
            "item_ids": torch.from_numpy(np.where(masked, self.mask_token, items)),
            "timestamps": torch.from_numpy(times),
            "masked_targets": torch.from_numpy(np.where(masked, items, 0)),
        }

    def users(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        return self.rows[indices]


class RandomCutSamples(TrainingSamples):
    """Objective ``random_cut``: one random prefix cut per user per epoch, drawn from ``(seed, epoch)``."""

    def __init__(self, train: Sequences, max_len: int, seed: int) -> None:
        self.sequences = train
        self.max_len = max_len
        self.seed = seed
        self.rows = np.flatnonzero(train.lengths >= 2).astype(np.int64)
        self._epoch: int | None = None
        self._samples: NextItemSamples | None = None

    def epoch_size(self, epoch: int) -> int:
        return len(self.rows)

    def samples_of(self, epoch: int) -> NextItemSamples:
        """The epoch's cuts: target = item ``c`` (1-based) with ``c`` uniform in ``2..n`` per user."""
        if self._epoch != epoch or self._samples is None:
            lengths = self.sequences.lengths[self.rows]
            cut = np.random.default_rng([self.seed, epoch, 0x0C07]).integers(2, lengths + 1)
            ends = self.sequences.offsets[self.rows] + cut - 1
            self._samples = NextItemSamples(self.sequences, self.rows, ends, self.max_len)
            self._epoch = epoch
        return self._samples

    def batch(self, indices: np.ndarray, epoch: int, rng: np.random.Generator) -> dict[str, Tensor]:
        out = self.samples_of(epoch).batch(indices)
        return {"item_ids": out["item_ids"], "timestamps": out["timestamps"], "target": out["target"]}

    def users(self, indices: np.ndarray, epoch: int) -> np.ndarray:
        return self.rows[indices]


def check_objective(model: "SeqRecModel", objective: str) -> None:
    """Raise a clear error when ``model`` cannot be trained with ``objective``."""
    if objective == "all" and not model.trains_every_prefix:
        if not model.readout.offers_prefixes():
            why = f"it is read out by {model.recipe.readout.block!r}, which has no exact every-prefix pass"
        elif not model.readout.positionwise:
            why = (f"its readout {model.recipe.readout.block!r} reads every position's state, and "
                   f"{_looks_ahead(model, even_exact=True)} makes those depend on later items")
        else:
            why = f"{_looks_ahead(model)} looks ahead and has no exact every-prefix pass"
        raise ValueError(f"objective 'all' trains every position of a window at once, from the history up to each; "
                         f"in {model.recipe.name!r} {why}: use objective 'last' (or 'random_cut')")
    if objective == "masked":
        if not model.readout.positionwise:
            raise ValueError(f"objective 'masked' predicts at every masked position and needs readout 'last'; "
                             f"{model.recipe.name!r} uses {model.recipe.readout.block!r}")
        if getattr(model.item_encoder, "mask_token_id", None) is None:
            raise ValueError(f"objective 'masked' needs an item encoder with a [MASK] token (item_id with mask_token: true); "
                             f"{model.recipe.name!r} has none")


def _looks_ahead(model: "SeqRecModel", even_exact: bool = False) -> str:
    """The first block of ``model`` that looks ahead without an exact ``forward_prefixes`` (with ``even_exact``:
    the first that looks ahead at all), described."""
    for module in (model.item_encoder, *model.encoder.modules()):
        offers = getattr(module, "offers_prefixes", None)  # item encoders have none: causal or not usable
        if hasattr(module, "block_name") and not module.causal and (even_exact or not (offers and offers())):
            args = ", ".join(f"{k}={v!r}" for k, v in getattr(module, "recipe_args", {}).items())
            return f"block {module.block_name!r}" + (f" ({args})" if args else "")
    return "a layer after a look-ahead block that mixes positions"


def training_samples(model: "SeqRecModel", train: Sequences, config: TrainConfig, seed: int = 0) -> TrainingSamples:
    """The sample set of ``config.objective`` over the training sequences ``train``."""
    check_objective(model, config.objective)
    windows = config.windows
    if config.objective == "last":
        return LastItemSamples(train, model.max_len)
    if config.objective == "all":
        return AllPositionSamples(train, model.max_len, windows, config.window_step, config.window_shift, seed)
    if config.objective == "masked":
        return MaskedItemSamples(train, model.max_len, model.item_encoder.mask_token_id, config.mask_prob,
                                 config.mask_last_prob, windows)
    if config.objective == "random_cut":
        return RandomCutSamples(train, model.max_len, seed)
    raise ValueError(f"unknown objective {config.objective!r}; expected last, all, masked or random_cut")


# ---------------------------------------------------------------------------- negatives and losses


def sample_negatives(positives: np.ndarray, num_items: int, num_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """``positives.shape + (num_negatives,)`` items drawn uniformly from ``1..num_items`` minus the positive."""
    if num_items < 2:
        raise ValueError(f"sampled negatives need at least 2 items, got num_items={num_items}")
    draws = rng.integers(1, num_items, size=(*positives.shape, num_negatives), dtype=np.int64)
    return draws + (draws >= positives[..., None])


def distinct_ranks(sizes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``(len(sizes), count)`` integers, row ``i`` ``count`` distinct values uniform over ``0..sizes[i]-1``, sorted.

    Every value is drawn uniformly and repeated values are drawn again until a row has none; the
    procedure treats all values alike, so each ``count``-subset is equally likely. Needs
    ``sizes >= count``.
    """
    high = np.broadcast_to(np.asarray(sizes, dtype=np.int64)[:, None], (len(sizes), count))
    ranks = np.sort(rng.integers(0, high), axis=1)
    while True:
        repeated = np.zeros(ranks.shape, dtype=bool)
        repeated[:, 1:] = ranks[:, 1:] == ranks[:, :-1]
        if not repeated.any():
            return ranks
        ranks[repeated] = rng.integers(0, high[repeated])
        ranks.sort(axis=1)


class ItemSets:
    """A set of items per row (sorted, distinct; CSR), and uniform draws of distinct items outside each set.

    The rows are users with their training sequences (:meth:`of_sequences`, ``train.negatives:
    unseen``; ConvRec §4.3) or the rows of a batch. Values outside ``1..num_items`` (padding, a
    ``[MASK]`` token) are ignored. A draw picks ranks among the items outside the set
    (:func:`distinct_ranks`) and maps rank ``r`` to its item by skipping the set's items, with one
    ``searchsorted`` over all rows at once.
    """

    def __init__(self, rows: np.ndarray, items: np.ndarray, num_rows: int, num_items: int) -> None:
        rows, items = np.asarray(rows, dtype=np.int64), np.asarray(items, dtype=np.int64)
        real = (items >= 1) & (items <= num_items)
        span = num_items + 1  # rows * span + value keeps every row's values apart and in row order
        keys = np.unique(rows[real] * span + items[real])
        self.num_items, self.span = num_items, span
        self.rows, self.items = keys // span, keys % span
        self.offsets = np.concatenate([[0], np.cumsum(np.bincount(self.rows, minlength=num_rows))]).astype(np.int64)
        rank_in_row = np.arange(len(keys), dtype=np.int64) - self.offsets[self.rows]
        # For each set item: how many items outside the set lie below it (non-decreasing within a row).
        self._outside_below = self.rows * span + self.items - 1 - rank_in_row

    @classmethod
    def of_sequences(cls, sequences: Sequences, num_items: int) -> "ItemSets":
        """The distinct items of every sequence (row ``u`` = user ``u``)."""
        return cls(sequences.row_of_position(), sequences.items, len(sequences), num_items)

    @property
    def sizes(self) -> np.ndarray:
        """Items in each row's set."""
        return np.diff(self.offsets)

    def check_room(self, count: int, rows: np.ndarray | None = None) -> None:
        """Raise when one of ``rows`` (default: all) has fewer than ``count`` items outside its set."""
        rows = np.arange(len(self.sizes)) if rows is None else np.asarray(rows, dtype=np.int64)
        room = self.num_items - self.sizes[rows]
        if len(rows) and room.min() < count:
            worst = int(np.argmin(room))
            raise ValueError(f"sequence {int(rows[worst])} has only {int(room[worst])} of the {self.num_items} items "
                             f"outside it, fewer than the {count} distinct negatives to draw; lower train.num_negatives "
                             "or use train.negatives: uniform")

    def sample_outside(self, rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``(len(rows), count)`` distinct items per entry, uniform over the items outside that row's set."""
        rows = np.asarray(rows, dtype=np.int64)
        self.check_room(count, rows)
        room = self.num_items - self.sizes[rows]
        ranks = distinct_ranks(room, count, rng)
        skipped = np.searchsorted(self._outside_below, rows[:, None] * self.span + ranks, side="right")
        return ranks + 1 + skipped - self.offsets[rows][:, None]


def add_negatives(batch: dict[str, Tensor], num_items: int, num_negatives: int, rng: np.random.Generator,
                  outside: ItemSets | None = None, users: np.ndarray | None = None) -> dict[str, Tensor]:
    """``batch`` with ``negatives`` ``target.shape + (num_negatives,)`` for its targets.

    Without ``outside``: :func:`sample_negatives` (``train.negatives: uniform``). With it: distinct
    items outside the set of each row's user ``users[b]`` (``unseen``), the same set for every
    target of a row.
    """
    key = next(k for k in TARGET_KEYS if k in batch)
    positives = batch[key].numpy()
    if outside is None:
        return {**batch, "negatives": torch.from_numpy(sample_negatives(positives, num_items, num_negatives, rng))}
    if users is None or len(users) != len(positives):
        raise ValueError(f"negatives outside the users' sequences need one user per batch row ({len(positives)}), "
                         f"got {None if users is None else len(users)}")
    per_row = int(np.prod(positives.shape[1:]))
    drawn = outside.sample_outside(np.repeat(users, per_row), num_negatives, rng)
    return {**batch, "negatives": torch.from_numpy(drawn.reshape(*positives.shape, num_negatives))}


def count_targets(batch: dict[str, Tensor]) -> int:
    """Number of prediction targets in ``batch`` (what :func:`loss_terms` sums over)."""
    if "target" in batch:
        return int(batch["target"].shape[0])
    key = "targets" if "targets" in batch else "masked_targets"
    return int((batch[key] > 0).sum())


class LossTerms(NamedTuple):
    """Sum of the per-target losses and the number of targets (the mean is ``total / count``)."""

    total: Tensor
    count: int


class _Targets(NamedTuple):
    """The prediction targets of a batch: user vectors ``(N, D)``, items ``(N,)``, the batch row of each
    ``(N,)`` and the batch's negatives ``(N, K)`` (None when the batch brings none)."""

    users: Tensor
    items: Tensor
    rows: Tensor
    negatives: Tensor | None


def _users_and_targets(model: "SeqRecModel", batch: dict[str, Tensor]) -> _Targets:
    """The targets of ``batch`` with the user vector that predicts each (see :class:`_Targets`)."""
    item_ids, timestamps = batch["item_ids"], batch.get("timestamps")
    negatives = batch.get("negatives")
    if "target" in batch:
        hidden, mask = model.encode(item_ids, timestamps)
        rows = torch.arange(len(item_ids), device=item_ids.device)
        return _Targets(model.readout(hidden, mask), batch["target"], rows, negatives)
    if "targets" in batch:
        check_objective(model, "all")
        hidden, _ = model.prefix_users(item_ids, timestamps)
        targets = batch["targets"]
    elif "masked_targets" in batch:
        check_objective(model, "masked")
        hidden, _ = model.encode(item_ids, timestamps)
        targets = batch["masked_targets"]
    else:
        raise ValueError(f"a training batch needs one of {TARGET_KEYS}; got keys {sorted(batch)}")
    keep = targets > 0
    return _Targets(hidden[keep], targets[keep], keep.nonzero()[:, 0], None if negatives is None else negatives[keep])


def _draw_negatives(batch: dict[str, Tensor], found: _Targets, num_items: int, num_negatives: int,
                    kind: Literal["uniform", "unseen"], generator: torch.Generator | None) -> Tensor:
    """Negatives ``(N, K)`` for a batch that brings none, drawn with ``generator`` (torch's global one when None).

    ``uniform``: any item but the positive. ``unseen``: distinct items outside what the target's batch
    row shows (its history and its targets), the closest a bare batch comes to the user's sequence.
    """
    if num_items < 2:
        raise ValueError(f"sampled negatives need at least 2 items, got num_items={num_items}")
    device = generator.device if generator is not None else torch.device("cpu")
    targets = found.items
    if kind == "uniform":
        draws = torch.randint(1, num_items, (len(targets), num_negatives), generator=generator, device=device)
        draws = draws.to(targets.device)
        return draws + (draws >= targets[:, None]).long()
    item_ids = batch["item_ids"]
    row_targets = batch[next(k for k in TARGET_KEYS if k in batch)].reshape(len(item_ids), -1)
    shown = torch.cat([item_ids, row_targets.to(item_ids.device)], 1).cpu().numpy()
    sets = ItemSets(np.repeat(np.arange(len(shown)), shown.shape[1]), shown.ravel(), len(shown), num_items)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (), generator=generator, device=device)))
    return torch.from_numpy(sets.sample_outside(found.rows.cpu().numpy(), num_negatives, rng)).to(targets.device)


def loss_terms(
    model: "SeqRecModel",
    batch: dict[str, Tensor],
    loss: Literal["ce", "sampled_softmax", "bce"] = "ce",
    num_negatives: int = 100,
    generator: torch.Generator | None = None,
    negatives_from: Literal["uniform", "unseen"] = "uniform",
) -> LossTerms:
    """The summed loss of ``batch`` and its number of targets (see the module docstring).

    Negatives come from ``batch["negatives"]`` when present, else are drawn here as
    ``negatives_from`` says (:func:`_draw_negatives`) with ``generator``.

    ``bce`` is ConvRec's Eq. 15 for each target: ``-log σ(s⁺) - Σ_j log(1 - σ(s⁻_j))`` over its
    positive score and its ``K`` negative scores, written with softplus for stability
    (``-log σ(x) = softplus(-x)``, ``-log(1 - σ(x)) = softplus(x)``).
    """
    found = _users_and_targets(model, batch)
    users, targets, negatives = found.users, found.items, found.negatives
    count = int(targets.shape[0])
    table = model.item_encoder.item_table()
    if loss == "ce":
        # Softmax over the real items only (the padding column would get probability 0 anyway).
        real = torch.arange(1, model.num_items + 1, device=table.device)
        logits = model.head(users, table[1:], real).float()
        return LossTerms(F.cross_entropy(logits, targets - 1, reduction="sum"), count)
    if loss not in ("sampled_softmax", "bce"):
        raise ValueError(f"unknown loss {loss!r}; expected ce, sampled_softmax or bce")
    if negatives is None:
        negatives = _draw_negatives(batch, found, model.num_items, num_negatives, negatives_from, generator)
    candidates = torch.cat([targets[:, None], negatives.to(targets.device)], 1)
    logits = candidate_scores(model, users, table, candidates).float()
    if loss == "sampled_softmax":
        return LossTerms(F.cross_entropy(logits, torch.zeros_like(targets), reduction="sum"), count)
    return LossTerms(F.softplus(-logits[:, 0]).sum() + F.softplus(logits[:, 1:]).sum(), count)


def candidate_scores(model: "SeqRecModel", users: Tensor, table: Tensor, candidates: Tensor) -> Tensor:
    """``model.head``'s score of each row's candidates, ``(N, C)`` for ``users (N, D)`` and ``candidates (N, C)``.

    A table of at most :data:`WHOLE_TABLE_PER_CANDIDATE` rows per candidate is scored whole, one matrix
    product, and the candidates' scores are picked from it: the same numbers as gathering each candidate's
    vector and scoring it, and on the CPU about six times faster with its backward pass at ml-100k's
    1,683 rows and 101 candidates (gathering, and scattering its gradient back into the table, are slow
    memory passes). A larger table gathers, which costs less than scoring every row."""
    if table.shape[0] <= WHOLE_TABLE_PER_CANDIDATE * candidates.shape[1]:
        every = torch.arange(table.shape[0], device=table.device)
        return model.head(users, table, every).gather(1, candidates)
    return model.head(users, table[candidates], candidates)


def mean_loss(model: "SeqRecModel", batch: dict[str, Tensor], config: TrainConfig | None = None) -> Tensor:
    """Mean loss per target of ``batch`` with the recipe's (or ``config``'s) loss."""
    config = config or model.recipe.train
    terms = loss_terms(model, batch, config.loss, config.num_negatives, negatives_from=config.negatives)
    if terms.count == 0:
        raise ValueError("the batch has no targets (all target entries are 0)")
    return terms.total / terms.count
