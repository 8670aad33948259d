"""Train / validation / test splits of an :class:`InteractionDataset`.

- :func:`leave_one_out` (default, RecBole's ``LS valid_and_test`` with time order): per user,
  the last item is the test target, the second-to-last the validation target, the rest is
  training data. Validation history = the training items; test history = all but the last.
  Users with fewer than 3 interactions cannot give all three parts and are dropped entirely
  (logged as a warning naming them; the list is kept in ``DataSplit.dropped_users``).
- :func:`ratio_by_time`: a global time cut. With ratios (0.8, 0.1, 0.1) the cut timestamps
  are those at 80% and 90% of all interactions in time order; an interaction before the
  first cut is training data, one between the cuts a validation target, one after the second
  a test target. The history of an evaluation target is everything the user did before it
  (earlier validation/test interactions included). Targets without any earlier interaction
  of their user cannot be scored and are left out (counted in ``facts``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from zoo.data.batching import NextItemSamples, ShiftedSequenceSamples
from zoo.data.sequences import Sequences

if TYPE_CHECKING:
    from zoo.data.dataset import InteractionDataset

log = logging.getLogger("zoo.data")

LOO_MIN_INTERACTIONS = 3


@dataclass
class EvalTargets:
    """Evaluation targets: flat positions ``ends`` in ``dataset.sequences`` of users ``rows``;
    each target's history is everything of that user before it."""

    rows: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class DataSplit:
    """A dataset split into training sequences and validation / test targets."""

    dataset: InteractionDataset
    method: str
    train: Sequences
    valid: EvalTargets
    test: EvalTargets
    dropped_users: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def train_samples(self, objective: Literal["last", "all"], max_len: int) -> NextItemSamples | ShiftedSequenceSamples:
        """Training samples: ``last`` = every prefix of every training sequence -> its next item;
        ``all`` = per user, ``seq[:-1]`` -> ``seq[1:]``."""
        if objective == "last":
            return NextItemSamples.every_prefix(self.train, max_len)
        if objective == "all":
            return ShiftedSequenceSamples(self.train, max_len)
        raise ValueError(f"objective must be 'last' or 'all' here, got {objective!r}")

    def eval_samples(self, which: Literal["valid", "test"], max_len: int) -> NextItemSamples:
        """History -> target samples of the validation or test part."""
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        targets = self.valid if which == "valid" else self.test
        return NextItemSamples(self.dataset.sequences, targets.rows, targets.ends, max_len)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable facts about the split."""
        return {
            "method": self.method,
            "train_interactions": self.train.num_interactions,
            "valid_targets": len(self.valid),
            "test_targets": len(self.test),
            "dropped_users": len(self.dropped_users),
            **self.facts,
        }


def leave_one_out(dataset: InteractionDataset) -> DataSplit:
    """Leave-one-out by time (see the module docstring)."""
    seqs = dataset.sequences
    lengths = seqs.lengths
    short = np.flatnonzero(lengths < LOO_MIN_INTERACTIONS)
    dropped = dataset.user_vocab.decode(short)
    if len(short):
        shown = ", ".join(f"{u} ({n})" for u, n in zip(dropped[:20], lengths[short[:20]].tolist()))
        log.warning(
            "leave-one-out: dropped %d user(s) with fewer than %d interactions (one each is needed for "
            "training, validation and test); user (interactions): %s%s",
            len(short), LOO_MIN_INTERACTIONS, shown, " ..." if len(short) > 20 else "",
        )
    kept = np.flatnonzero(lengths >= LOO_MIN_INTERACTIONS)
    train_lengths = np.where(lengths >= LOO_MIN_INTERACTIONS, lengths - 2, 0)
    ends = seqs.offsets[kept + 1]
    return DataSplit(
        dataset=dataset,
        method="loo",
        train=seqs.prefixes(train_lengths),
        valid=EvalTargets(kept, ends - 2),
        test=EvalTargets(kept, ends - 1),
        dropped_users=dropped,
        facts={"min_interactions": LOO_MIN_INTERACTIONS},
    )


def ratio_by_time(dataset: InteractionDataset, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> DataSplit:
    """Global time cut into train / validation / test (see the module docstring)."""
    ratios_arr = np.asarray(ratios, dtype=np.float64)
    if ratios_arr.shape != (3,) or np.any(ratios_arr < 0) or not np.isclose(ratios_arr.sum(), 1.0) or ratios_arr[0] <= 0:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1 with a positive train part, got {ratios}")
    seqs = dataset.sequences
    n = seqs.num_interactions
    times_sorted = np.sort(seqs.timestamps, kind="stable")
    cut_positions = np.floor(np.cumsum(ratios_arr)[:2] * n).astype(np.int64)
    valid_from, test_from = (float(times_sorted[p]) if p < n else np.inf for p in cut_positions)

    rows = seqs.row_of_position()
    positions = np.arange(n, dtype=np.int64)
    has_history = positions > seqs.offsets[rows]
    train_lengths = np.bincount(rows[seqs.timestamps < valid_from], minlength=len(seqs))
    is_valid = (seqs.timestamps >= valid_from) & (seqs.timestamps < test_from)
    is_test = seqs.timestamps >= test_from
    without_history = int(((is_valid | is_test) & ~has_history).sum())
    if without_history:
        log.info("ratio split: %d evaluation target(s) are their user's first interaction and are left out", without_history)
    valid, test = is_valid & has_history, is_test & has_history
    return DataSplit(
        dataset=dataset,
        method="ratio",
        train=seqs.prefixes(train_lengths),
        valid=EvalTargets(rows[valid], positions[valid]),
        test=EvalTargets(rows[test], positions[test]),
        facts={"ratios": [float(r) for r in ratios_arr],
               "valid_from_timestamp": None if np.isinf(valid_from) else valid_from,
               "test_from_timestamp": None if np.isinf(test_from) else test_from,
               "targets_without_history": without_history},
    )
