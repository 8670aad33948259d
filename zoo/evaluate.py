"""Ranking evaluation of next-item models: full ranking (default) or sampled (1 positive + N negatives).

Rank of the target: ``rank = 1 + #{candidates c != target : score[c] >= score[target]}``.
Candidates are all real items (padding, column 0, is never one) in full ranking, or the
target plus its ``N`` sampled negatives. **Ties are pessimistic**: an item with exactly the
target's score counts as ranked above it. The rank is therefore deterministic (it never
depends on a sort's order among equal scores, unlike RecBole's ``topk`` position) and a model
cannot gain from ties: a constant scorer gets the worst rank. With distinct scores it equals
RecBole's rank. NaN scores are an error.

Metrics from the rank of the single target of every example (averaged over examples):
``HR@K = [rank <= K]``, ``Recall@K = HR@K`` (one relevant item), ``NDCG@K = [rank <= K] /
log2(rank + 1)`` (the ideal DCG is 1), ``MRR@K = [rank <= K] / rank`` -- RecBole's
definitions (``recbole/evaluator/metrics.py``) specialised to one target. Results are also
broken down by history length (default groups ``[0,5)``, ``[5,20)``, ``[20,inf)`` as in SIGMA).

History masking (``mask_history=True``) sets the scores of the items in an example's history
(other than the target itself) to ``-inf``; it is off by default, as in RecBole's sequential
evaluation. Sampled negatives are drawn uniformly without replacement from the items that are
neither in the example's history nor its target, from a seeded generator, once for the whole
example set: the same seed gives the same negatives whatever the batch size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from zoo.data.batching import NextItemSamples, flat_ranges, trim_padding
from zoo.data.split import DataSplit
from zoo.memory import keep_freed_memory

METRICS = ("hr", "ndcg", "mrr", "recall")
METRIC_LABELS = {"hr": "HR", "ndcg": "NDCG", "mrr": "MRR", "recall": "Recall"}
SCORES_BUDGET_BYTES = 64 * 2**20  # one default batch's (examples, items) fp32 scores
BATCH_BOUNDS = (16, 256)  # the default batch size's range


class Scorer(Protocol):
    """What the evaluator needs from a model."""

    max_len: int

    def score(self, item_ids: Tensor, timestamps: Tensor | None = None) -> Tensor: ...


# ---------------------------------------------------------------------------- metrics from ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (10,), metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Mean ``HR@K``, ``NDCG@K``, ``MRR@K``, ``Recall@K`` over examples from 1-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    bad_k = [k for k in ks if int(k) < 1]
    if bad_k:
        raise ValueError(f"K must be >= 1, got {bad_k}")
    if len(ranks) and ranks.min() < 1:
        raise ValueError("ranks are 1-based; got a rank below 1")
    out: dict[str, float] = {}
    for name in metrics:
        for k in ks:
            hit = ranks <= k
            if name in ("hr", "recall"):
                values = hit.astype(np.float64)
            elif name == "ndcg":
                values = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
            else:
                values = np.where(hit, 1.0 / ranks, 0.0)
            out[f"{METRIC_LABELS[name]}@{int(k)}"] = float(values.mean()) if len(values) else math.nan
    return out


def group_labels(bounds: Sequence[int]) -> list[str]:
    """``(5, 20)`` -> ``["[0,5)", "[5,20)", "[20,inf)"]``."""
    edges = [0, *bounds]
    return [f"[{lo},{hi})" for lo, hi in zip(edges, edges[1:])] + [f"[{edges[-1]},inf)"]


def grouped_metrics(
    ranks: np.ndarray, history_lengths: np.ndarray, bounds: Sequence[int], ks: Sequence[int], metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Metrics per history-length group (``count`` = examples in the group; empty groups have only ``count``)."""
    if list(bounds) != sorted(set(bounds)) or any(b < 1 for b in bounds):
        raise ValueError(f"group bounds must be strictly increasing positive integers, got {list(bounds)}")
    which = np.searchsorted(np.asarray(bounds), history_lengths, side="right")
    out = {}
    for g, label in enumerate(group_labels(bounds)):
        chosen = ranks[which == g]
        out[label] = {"count": int(len(chosen)), **(metrics_from_ranks(chosen, ks, metrics) if len(chosen) else {})}
    return out


# ---------------------------------------------------------------------------- ranks from scores


def _check_scores(scores: Tensor) -> None:
    # A NaN anywhere makes the sum NaN: one reduction instead of a full isnan pass (the precise check runs
    # only then; +inf and -inf together also give a NaN sum, and are no error).
    if torch.isnan(scores[:, 1:].sum()) and torch.isnan(scores[:, 1:]).any():
        rows = torch.isnan(scores[:, 1:]).any(1).nonzero().flatten()[:10].tolist()
        raise ValueError(f"the model returned NaN scores (batch rows {rows}); ranks would be meaningless")


def full_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """Pessimistic 1-based rank of ``targets`` (B,) among all real items of ``scores`` (B, num_items + 1)."""
    _check_scores(scores)
    target_scores = scores.gather(1, targets[:, None])
    return (scores[:, 1:] >= target_scores).sum(1, dtype=torch.int32)  # counts the target itself, hence no "+ 1"


def sampled_ranks(scores: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """Pessimistic 1-based rank of ``targets`` (B,) among themselves and ``negatives`` (B, N)."""
    _check_scores(scores)
    target_scores = scores.gather(1, targets[:, None])
    return 1 + (scores.gather(1, negatives) >= target_scores).sum(1)


def history_mask(samples: NextItemSamples, indices: np.ndarray, num_items: int, device: torch.device) -> Tensor:
    """(B, num_items + 1) bool: True at items in each example's full history, except its target."""
    rows, positions = flat_ranges(samples.starts[indices], samples.ends[indices])
    items = samples.sequences.items[positions].astype(np.int64)
    mask = torch.zeros(len(indices), num_items + 1, dtype=torch.bool, device=device)
    mask[torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device)] = True
    targets = torch.from_numpy(samples.targets[indices]).to(device)
    mask[torch.arange(len(indices), device=device), targets] = False
    return mask


def sample_negatives(samples: NextItemSamples, num_items: int, num_negatives: int, seed: int = 0) -> np.ndarray:
    """``(len(samples), num_negatives)`` distinct items per example, none in its history nor its target.

    Uniform without replacement over the allowed items: draw ranks among the allowed items with
    the seeded generator and map each rank to its item by skipping the forbidden ones.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    rng = np.random.default_rng(seed)
    out = np.empty((len(samples), num_negatives), dtype=np.int64)
    items = samples.sequences.items
    for s in range(len(samples)):
        forbidden = np.unique(items[samples.starts[s]:samples.ends[s] + 1])
        allowed = num_items - len(forbidden)
        if allowed < num_negatives:
            raise ValueError(
                f"example {s} (user {int(samples.rows[s])}) has only {allowed} items outside its history and "
                f"target, fewer than num_negatives={num_negatives}"
            )
        picks = rng.choice(allowed, size=num_negatives, replace=False)
        allowed_below = forbidden - 1 - np.arange(len(forbidden))  # allowed items smaller than each forbidden one
        out[s] = picks + 1 + np.searchsorted(allowed_below, picks, side="right")
    return out


# ---------------------------------------------------------------------------- the evaluator


@dataclass
class EvalResult:
    """Metrics of one evaluation; ``ranks`` and ``history_lengths`` are per example (not in ``to_dict``)."""

    metrics: dict[str, float]
    groups: dict[str, dict[str, float]]
    num_examples: int
    protocol: dict[str, Any]
    seconds: float
    ranks: np.ndarray = field(repr=False)
    history_lengths: np.ndarray = field(repr=False)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    @property
    def examples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary: metrics, groups, example count, protocol, timing."""
        return {
            "metrics": dict(self.metrics),
            "groups": {k: dict(v) for k, v in self.groups.items()},
            "num_examples": self.num_examples,
            "protocol": dict(self.protocol),
            "seconds": self.seconds,
        }

    def table(self) -> str:
        """A readable text table: one row per metric, one column per K, then one row per group."""
        return format_table(self)


def format_table(result: EvalResult) -> str:
    """Readable text table of an :class:`EvalResult`."""
    ks = result.protocol["ks"]
    names = [METRIC_LABELS[m] for m in result.protocol["metrics"]]
    p = result.protocol
    title = f"{p['mode']} ranking" + (f" (1 + {p['num_negatives']} negatives, seed {p['seed']})" if p["mode"] == "sampled" else "")
    lines = [f"{title}, {result.num_examples} examples" + (", history masked" if p["mask_history"] else "")]
    lines.append(f"{'metric':<8}" + "".join(f"{'@' + str(k):>9}" for k in ks))
    for name in names:
        lines.append(f"{name:<8}" + "".join(f"{result.metrics[f'{name}@{k}']:>9.4f}" for k in ks))
    headline = [f"{n}@{ks[len(ks) // 2]}" for n in names]
    lines.append("")
    lines.append(f"{'history':<12}{'count':>7}" + "".join(f"{h:>11}" for h in headline))
    for label, values in result.groups.items():
        cells = "".join(f"{values[h]:>11.4f}" if h in values else f"{'-':>11}" for h in headline)
        lines.append(f"{label:<12}{values['count']:>7}{cells}")
    return "\n".join(lines)


def default_batch_size(num_items: int | None) -> int:
    """Examples a batch when none is given: as many as keep a batch's fp32 scores within
    SCORES_BUDGET_BYTES, within BATCH_BOUNDS (256 up to about 65,000 items, 16 from about a million items;
    256 when the item count is unknown). Large batches amortise the per-batch work (gathering the batch,
    dispatch, scoring); the lower bound keeps the score matrix of a large catalogue in memory. The upper
    bound keeps a batch's activations small: at 943 histories of 50 items a Mamba layer's (B, L, 2·d_inner)
    projection is 48 MB, above glibc's largest mmap threshold (32 MB), so every such tensor was mapped and
    faulted in afresh on every call. Scoring ml-100k's 943 test users in batches of 256 instead of one took
    21% less time for mamba4rec, 16% for sigma and 32% for m2rec on the 2-core CPU; sasrec went from 42 to
    47 ms (benchmarks/README.md, "Per-sequence cost side by side")."""
    if num_items is None:
        return 256
    low, high = BATCH_BOUNDS
    return max(low, min(high, SCORES_BUDGET_BYTES // (4 * (num_items + 1))))


def _device_of(model: Any) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for param in parameters():
            return param.device
    return torch.device("cpu")


def _rank_batch(model: Scorer, samples: NextItemSamples, indices: np.ndarray, device: torch.device, mask_history: bool,
                negatives: Callable[[int], np.ndarray] | None) -> Tensor:
    """Ranks of the targets of examples ``indices``: full ranking, or among ``negatives(num_items)[indices]``."""
    batch = trim_padding(samples.batch(indices))
    scores = model.score(batch["item_ids"].to(device), timestamps=batch["timestamps"].to(device))
    if scores.dim() != 2 or scores.shape[0] != len(indices) or scores.shape[1] < 2:
        raise ValueError(f"model.score returned shape {tuple(scores.shape)}; expected ({len(indices)}, num_items + 1)")
    num_items = scores.shape[1] - 1
    targets = batch["target"].to(scores.device)
    if int(targets.max()) > num_items:
        raise ValueError(f"target item {int(targets.max())} is beyond the model's {num_items} items")
    if mask_history:
        scores = scores.masked_fill(history_mask(samples, indices, num_items, scores.device), -math.inf)
    if negatives is None:
        return full_ranks(scores, targets).cpu()
    chosen = torch.from_numpy(negatives(num_items)[indices]).to(scores.device)
    return sampled_ranks(scores, targets, chosen).cpu()


@torch.no_grad()
def evaluate(
    model: Scorer,
    samples: NextItemSamples | DataSplit,
    *,
    which: Literal["valid", "test"] = "test",
    mode: Literal["full", "sampled"] = "full",
    ks: Iterable[int] = (5, 10, 20),
    metrics: Sequence[str] = METRICS,
    num_negatives: int = 100,
    seed: int = 0,
    mask_history: bool = False,
    group_bounds: Sequence[int] = (5, 20),
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> EvalResult:
    """Rank each example's target with ``model.score`` and average the metrics.

    ``samples`` is a :class:`NextItemSamples` or a :class:`DataSplit` (then its ``which`` part,
    truncated to ``model.max_len``). ``model.score(item_ids (B, L) left-padded, timestamps)``
    must return ``(B, num_items + 1)`` scores with column 0 the padding. Runs under
    ``torch.no_grad()`` with the model in eval mode (restored afterwards), on ``device``
    (default: the model's parameters' device, else CPU). Examples are batched shortest history
    first, so each batch is only as wide as its longest history; ranks come back in example order.
    ``batch_size=None`` takes :func:`default_batch_size` of ``model.num_items``.

    ``precision="bf16"`` runs ``model.score`` under bf16 autocast (one context for all batches, so
    each weight is cast once); the zoo's models still compute the final item scores in fp32, so
    ranks differ from fp32 evaluation only by the encoder's rounding.

    Sets glibc's malloc to keep freed memory for the next batch (:func:`zoo.memory.keep_freed_memory`).
    """
    if mode not in ("full", "sampled"):
        raise ValueError(f"mode must be 'full' or 'sampled', got {mode!r}")
    if batch_size is None:
        batch_size = default_batch_size(getattr(model, "num_items", None))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    keep_freed_memory()
    ks = sorted({int(k) for k in ks})
    if isinstance(samples, DataSplit):
        samples = samples.eval_samples(which, model.max_len)
    if len(samples) == 0:
        raise ValueError("no examples to evaluate")
    device = torch.device(device) if device is not None else _device_of(model)
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    start = time.perf_counter()
    # Batches of similar history lengths, so that trim_padding drops the columns no row of a batch uses
    # (exact: a real item's state never depends on padding); ranks go back to example order below.
    lengths = samples.history_lengths
    order = np.argsort(lengths, kind="stable")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    negatives = None if mode == "full" else cache(lambda num_items: sample_negatives(samples, num_items, num_negatives, seed))
    try:
        with autocast:
            ranks = [_rank_batch(model, samples, order[begin:begin + batch_size], device, mask_history, negatives)
                     for begin in range(0, len(samples), batch_size)]
    finally:
        if was_training:
            model.train()
    seconds = time.perf_counter() - start
    all_ranks = np.empty(len(samples), dtype=np.int64)
    all_ranks[order] = torch.cat(ranks).numpy()
    return EvalResult(
        metrics=metrics_from_ranks(all_ranks, ks, metrics),
        groups=grouped_metrics(all_ranks, lengths, group_bounds, ks, metrics),
        num_examples=len(all_ranks),
        protocol={"mode": mode, "ks": ks, "metrics": list(metrics), "num_negatives": num_negatives if mode == "sampled" else None,
                  "seed": seed if mode == "sampled" else None, "mask_history": mask_history,
                  "group_bounds": list(group_bounds), "ties": "pessimistic", "max_len": samples.max_len,
                  "precision": precision},
        seconds=seconds,
        ranks=all_ranks,
        history_lengths=lengths,
    )
